"""A tiny dataset in GAICD's on-disk format: for the loader and training tests, and for the sweep's
smoke run when GAICD itself is absent (``python tune/sweep.py --smoke`` on a fresh clone).

Each photo is noise with one bright square "subject"; a crop's MOS rises with the share of the subject
it keeps, so the ranking is learnable. Files follow GAICD exactly: ``y1 x1 y2 x2 MOS`` per line (y first),
MOS -2 marks an unannotated crop, and objects/<id>.txt holds ``y1 x1 y2 x2`` boxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def subject_box(width: int, height: int, index: int) -> tuple[int, int, int, int]:
    """x1, y1, x2, y2 of the bright square in photo ``index``: left or right third, alternating."""
    side = height // 3
    x1 = width // 8 if index % 2 == 0 else width - width // 8 - side
    y1 = height // 3
    return x1, y1, x1 + side, y1 + side


def write_gaicd(root: Path, n_images: int = 3, size: tuple[int, int] = (160, 120), seed: int = 0,
                unannotated: int = 2) -> dict[str, dict]:
    """Writes the dataset under ``root`` and returns, per id, the crops (x1y1x2y2), MOS and objects written."""
    rng = np.random.default_rng(seed)
    w, h = size
    truth = {}
    for root_dir in ("images", "annotations", "objects"):
        (root / root_dir).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        image_id = f"{9000 + i}"
        pixels = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = subject_box(w, h, i)
        pixels[sy1:sy2, sx1:sx2] = (240, 220, 60)
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=95)
        crops, mos = [], []
        for x1 in np.linspace(0, w // 3, 3).astype(int):
            for x2 in np.linspace(w // 2, w, 3).astype(int):
                for y1, y2 in ((0, h), (h // 8, h - h // 8)):
                    ix = max(0, min(x2, sx2) - max(x1, sx1)) * max(0, min(y2, sy2) - max(y1, sy1))
                    kept = ix / ((sx2 - sx1) * (sy2 - sy1))
                    crops.append((int(x1), y1, int(x2), y2))
                    mos.append(round(1.5 + 3.0 * kept - 0.5 * (x2 - x1) / w, 2))
        lines = [f"{y1:4d} {x1:4d} {y2:4d} {x2:4d} {m:.2f} " for (x1, y1, x2, y2), m in zip(crops, mos)]
        for j in range(unannotated):  # GAICD's "not annotated" rows, interleaved
            lines.insert(2 * j + 1, f"{j:4d} {j:4d} {h - j:4d} {w - j:4d} -2.00 ")
        (root / "annotations" / f"{image_id}.txt").write_text("\n".join(lines) + "\n\n")
        objects = [(sx1, sy1, sx2, sy2), (0, 0, w // 4, h // 4)]
        (root / "objects" / f"{image_id}.txt").write_text(
            "\n".join(f"{y1} {x1} {y2} {x2}" for x1, y1, x2, y2 in objects))  # no final newline, as in GAICD
        truth[image_id] = {"crops": np.array(crops, np.float32), "mos": np.array(mos, np.float32),
                           "objects": np.array(objects, np.float32)}
    ids = sorted(truth)
    (root / "split.json").write_text(json.dumps({"train": ids, "test": ids[:1]}))
    return truth
