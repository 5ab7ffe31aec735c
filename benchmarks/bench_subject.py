"""Do the thumbnails keep the subject? ugc-crop against smartcrop.py and a centre crop.

    python benchmarks/bench_subject.py --duts ../shared/data/duts --fcdb ../shared/data/fcdb --limit 300

DUTS (human salient-object masks; the photos no head trained on: the saliency head's 100
validation photos and the subject heads' held-out ones, sorted by name): per ratio, the share of
crops that cut the salient object (keep 25-95% of its mass), that drop it (keep under 25%), and
the mean share of its mass kept. FCDB (our held-out photos, the crop a person drew): IoU and BDE
of the free-ratio crop, and of the crop at the human crop's own ratio (nearest of the offered
ratios). Mirror consistency: how often the crop of the mirrored photo is the mirror of the crop
(within 2% of the side). Prints tables.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from s2cnet.training.fcdb import boundary_displacement, iou

RATIOS = ["1:1", "16:9", "9:16"]
FREE = "free"


def centre_crop(size: tuple[int, int], ratio: str | None) -> tuple[int, int, int, int]:
    """The largest centred crop of the ratio (free ratio: the central 80% of each side)."""
    w, h = size
    if ratio is None:
        return round(0.1 * w), round(0.1 * h), round(0.9 * w), round(0.9 * h)
    a, b = (int(v) for v in ratio.split(":"))
    k = min(w // a, h // b)
    cw, ch = a * k, b * k
    x, y = (w - cw) // 2, (h - ch) // 2
    return x, y, x + cw, y + ch


def smartcrop_box(image: Image.Image, ratio: str | None) -> tuple[int, int, int, int]:
    """smartcrop.py 0.5 asked for a 256-px-wide thumbnail of the ratio (free ratio: the photo's own)."""
    from smartcrop import SmartCrop

    a, b = (image.width, image.height) if ratio is None else (int(v) for v in ratio.split(":"))
    top = SmartCrop().crop(image, 256, max(1, round(256 * b / a)))["top_crop"]
    return top["x"], top["y"], top["x"] + top["width"], top["y"] + top["height"]


def mass_kept(mask: np.ndarray, box) -> float:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    total = mask.sum()
    return float(mask[y1:y2, x1:x2].sum() / total) if total else 1.0


def mirrored(box, width: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return width - x2, y1, width - x1, y2


def nearest_ratio(box, offered: list[str]) -> str:
    r = (box[2] - box[0]) / max(box[3] - box[1], 1)
    return min(offered, key=lambda s: abs(np.log(float(Fraction(*map(int, s.split(":")))) / r)))


def methods(cropper, only_ugc: bool = False):
    """ugc-crop, and unless ``only_ugc`` the baselines (they do not change between ugc-crop variants)."""
    def ugc(image: Image.Image, ratio: str | None):
        return cropper.crop(image, None if ratio is None else [ratio])[0].box

    if only_ugc:
        return {"ugc-crop": ugc}
    return {"ugc-crop": ugc, "smartcrop.py": smartcrop_box, "centre crop": lambda im, r: centre_crop(im.size, r)}


def duts_table(root: Path, limit: int, cropper, only_ugc: bool = False, which: str = "heldout") -> dict:
    """``which``: "heldout" (the first ``limit`` held-out photos by name: the benchmark), "calibration"
    (the held-out photos after those: where the choice's weights are tuned), or "first" (the first
    photos by name, as this benchmark read them before)."""
    first = which == "first"
    from s2cnet.training.teacher_labels import heldout_ids

    # photos no head was trained on: the saliency head's validation photos and the subject heads' held-out ones
    held = {pid.split("/", 1)[1] for pid in heldout_ids(root.parent) if pid.startswith("duts/")}
    names = sorted(p.stem for p in (root / "images").glob("*.jpg") if first or p.stem in held)
    names = names[limit:] if which == "calibration" else names[:limit]
    stats: dict = {}
    mirror: dict = {}
    for name in names:
        image = Image.open(root / "images" / f"{name}.jpg").convert("RGB")
        mask = np.asarray(Image.open(root / "masks" / f"{name}.png").convert("L")) > 127
        flipped = ImageOps.mirror(image)
        for method, fn in methods(cropper, only_ugc).items():
            for ratio in [*RATIOS, None]:
                box = fn(image, ratio)
                k = mass_kept(mask, box)
                s = stats.setdefault((method, ratio or FREE), {"cut": 0, "dropped": 0, "kept": [], "n": 0})
                s["n"] += 1
                s["kept"].append(k)
                s["dropped" if k < 0.25 else "cut"] += int(k < 0.95)
                if method != "centre crop":
                    other = mirrored(fn(flipped, ratio), image.width)
                    tol = 0.02 * np.array([image.width, image.height] * 2)
                    m = mirror.setdefault((method, ratio or FREE), [0, 0])
                    m[0] += int(np.all(np.abs(np.asarray(other) - np.asarray(box)) <= tol))
                    m[1] += 1
    return {"stats": stats, "mirror": mirror, "photos": len(names)}


def fcdb_table(root: Path, limit: int, cropper, only_ugc: bool = False) -> dict:
    from s2cnet.training.fcdb import split_fcdb

    crops = json.loads((root / "crops.json").read_text())
    names = split_fcdb(root, 138, seed=0)[1][:limit]  # the photos training holds out
    out: dict = {}
    for name in names:
        image = Image.open(root / "images" / name).convert("RGB")
        human = crops[name]
        at_ratio = nearest_ratio(human, ["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3"])
        for method, fn in methods(cropper, only_ugc).items():
            for key, ratio in ((FREE, None), ("human's ratio", at_ratio)):
                box = fn(image, ratio)
                r = out.setdefault((method, key), {"iou": [], "bde": []})
                r["iou"].append(iou(np.asarray(box, float), np.asarray(human, float)))
                r["bde"].append(boundary_displacement(box, human, *image.size))
    return {"rows": out, "photos": len(names)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duts", type=Path, default=Path("../shared/data/duts"))
    ap.add_argument("--fcdb", type=Path, default=Path("../shared/data/fcdb"))
    ap.add_argument("--limit", type=int, default=300, help="DUTS photos (FCDB: at most its 138 held-out ones)")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--duts-set", choices=["heldout", "calibration", "first"], default="heldout",
                    help="calibration: the held-out DUTS photos after the first --limit (75), for tuning the choice; "
                         "first: the first DUTS photos by name (most of them trained the saliency head), as before")
    ap.add_argument("--saliency-weight", type=float, default=None, help="Cropper.saliency_weight (default: the shipped one)")
    ap.add_argument("--no-fcdb", action="store_true", help="only the DUTS table")
    ap.add_argument("--mirror-consistent", action="store_true", help="Cropper(mirror_consistent=True): one canonical orientation")
    ap.add_argument("--only-ugc", action="store_true", help="only ugc-crop's rows (skip smartcrop.py and the centre crop)")
    ap.add_argument("--no-subject-heads", action="store_true",
                    help="the proposer as it was before the subject heads: Haar faces and saliency regions")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from s2cnet import Cropper
    from s2cnet.cropper import DEFAULT_WEIGHTS

    proposer = "default"
    if args.no_subject_heads:
        from s2cnet.checkpoint import load_checkpoint
        from s2cnet.proposals import default_proposer

        proposer = default_proposer(head_state=load_checkpoint(args.weights or DEFAULT_WEIGHTS)[1]["saliency_head"])
    extra = {} if args.saliency_weight is None else {"saliency_weight": args.saliency_weight}
    extra |= {"mirror_consistent": True} if args.mirror_consistent else {}
    cropper = Cropper.from_pretrained(args.weights, proposer=proposer, **extra)
    t0 = time.perf_counter()
    duts = duts_table(args.duts, args.limit, cropper, args.only_ugc, which=args.duts_set)
    print(f"\nDUTS: {duts['photos']} photos, human salient-object masks; model {cropper.model_version}\n")
    print("| method | ratio | cut (25-95% kept) | dropped (<25% kept) | cut or dropped | mass kept | mirror-consistent |")
    print("|---|---|---|---|---|---|---|")
    for (method, ratio), s in duts["stats"].items():
        m = duts["mirror"].get((method, ratio))
        mc = f"{100 * m[0] / m[1]:.0f}%" if m else "(always)"
        print(f"| {method} | {ratio} | {100 * s['cut'] / s['n']:.1f}% | {100 * s['dropped'] / s['n']:.1f}% | "
              f"{100 * (s['cut'] + s['dropped']) / s['n']:.1f}% | {np.mean(s['kept']):.3f} | {mc} |")
    if args.no_fcdb:
        return
    fcdb = fcdb_table(args.fcdb, args.limit, cropper, args.only_ugc)
    print(f"\nFCDB held-out: {fcdb['photos']} photos, the crop a person drew\n")
    print("| method | crop | IoU | BDE |\n|---|---|---|---|")
    for (method, key), r in fcdb["rows"].items():
        print(f"| {method} | {key} | {np.mean(r['iou']):.3f} | {np.mean(r['bde']):.3f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
