"""FCDB (Flickr Cropping Dataset): human votes between same-ratio crops, and one human best crop.

GAICD rates crops of at least half the photo at free ratios; FCDB's pairs are what the product
serves (fixed-ratio crops at several sizes), so they train a second, pairwise signal beside the MOS.
Photos are keyed by file name; boxes are ``x1 y1 x2 y2`` in pixels of ``images/<name>``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s2cnet.training.data import prepare_photo


@dataclass
class PairSample:
    name: str
    image: torch.Tensor  # [3, H, W] normalised
    crops: torch.Tensor  # [2P, 4] in input pixels: pair p is rows 2p (preferred) and 2p+1
    margin: torch.Tensor  # [P] vote margin of the preferred crop, (v_win - v_lose) / voters, in (0, 1]


def split_fcdb(root: str | Path, val_size: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val) photo names; a split of our own, since only FCDB's training split is here."""
    names = sorted(json.loads((Path(root) / "pairs.json").read_text()))
    random.Random(seed).shuffle(names)
    return names[val_size:], names[:val_size]


def winner_first(pairs: list[list]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs [[box_a, box_b, votes_a, votes_b], ...] -> (boxes [2P, 4] preferred first, margins [P]);
    tied pairs carry no preference and are left out."""
    boxes, margins = [], []
    for a, b, va, vb in pairs:
        if va == vb:
            continue
        win, lose = (a, b) if va > vb else (b, a)
        boxes += [win, lose]
        margins.append(abs(va - vb) / (va + vb))
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(margins, np.float32)


class FCDBPairs(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, names: list[str] | None = None, augment: bool = False,
                 short_side: int = 256, scale_jitter: tuple[int, ...] = (), seed: int = 0) -> None:
        self.root = Path(root)
        if not (self.root / "pairs.json").exists():
            raise FileNotFoundError(f"FCDB not found at {self.root} (expected pairs.json, crops.json, images/)")
        self.pairs = json.loads((self.root / "pairs.json").read_text())
        self.best = json.loads((self.root / "crops.json").read_text())
        self.names = names if names is not None else sorted(self.pairs)
        self.augment, self.short_side, self.scale_jitter = augment, short_side, tuple(scale_jitter)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, name: str) -> Path:
        return self.root / "images" / name

    def __getitem__(self, i: int) -> PairSample:
        name = self.names[i]
        boxes, margins = winner_first(self.pairs[name])
        short_side = self.rng.choice(self.scale_jitter) if self.augment and self.scale_jitter else self.short_side
        x, (crops,) = prepare_photo(self.image_path(name), [boxes], short_side, self.rng if self.augment else None)
        return PairSample(name, x, crops, torch.from_numpy(margins))


def pair_accuracy(scores: torch.Tensor | np.ndarray) -> float:
    """Share of pairs (rows 2p, 2p+1, preferred first) where the preferred crop scores higher."""
    s = np.asarray(scores, np.float64).reshape(-1, 2)
    return float((s[:, 0] > s[:, 1]).mean()) if len(s) else float("nan")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x1,y1,x2,y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def boundary_displacement(a: np.ndarray, b: np.ndarray, width: float, height: float) -> float:
    """FCDB's BDE: mean displacement of the four edges, in shares of the photo's width and height."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / np.array([width, height, width, height])
    return float(d.mean())
