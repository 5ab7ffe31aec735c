"""GAICD v1: photos, human-rated candidate crops (MOS) and the paper's precomputed object boxes.

Files store boxes as ``y1 x1 y2 x2`` (y first); everything here returns ``x1 y1 x2 y2``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s2cnet.imageio import open_image
from s2cnet.transforms import IMAGENET_MEAN, IMAGENET_STD, hflip_boxes, photometric_jitter, resize_shape


@dataclass
class Sample:
    image_id: str
    image: torch.Tensor  # [3, H, W] normalised, sides multiples of 32
    crops: torch.Tensor  # [N, 4] x1,y1,x2,y2 in the resized image's pixels
    mos: torch.Tensor  # [N]
    objects: torch.Tensor  # [M, 4] x1,y1,x2,y2 in the resized image's pixels


def read_yxyx(path: Path, with_score: bool) -> tuple[np.ndarray, np.ndarray]:
    """Parse a GAICD box file -> (boxes [N, 4] x1y1x2y2, scores [N]); MOS -2 rows are skipped."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    arr = np.array(rows, dtype=np.float64).reshape(-1, 5 if with_score else 4)
    if with_score:
        arr = arr[arr[:, 4] != -2]
    boxes = arr[:, [1, 0, 3, 2]].astype(np.float32)
    scores = arr[:, 4].astype(np.float32) if with_score else np.zeros(len(arr), np.float32)
    return boxes, scores


class GAICD(torch.utils.data.Dataset):
    def __init__(self, root: str | Path, split: str, augment: bool = False, short_side: int = 256,
                 use_objects: bool = True, seed: int = 0, ids: list[str] | None = None,
                 scale_jitter: tuple[int, ...] = ()) -> None:
        self.root = Path(root)
        if not (self.root / "split.json").exists():
            raise FileNotFoundError(f"GAICD not found at {self.root} (expected split.json, images/, annotations/)")
        self.ids = ids if ids is not None else json.loads((self.root / "split.json").read_text())[split]
        self.augment, self.short_side, self.use_objects = augment, short_side, use_objects
        self.rng = random.Random(seed)
        self.scale_jitter = tuple(scale_jitter)  # short sides to draw from when augmenting (multi-scale training)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / f"{image_id}.jpg"

    def load_boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crops, MOS and objects in original pixels, as stored."""
        crops, mos = read_yxyx(self.root / "annotations" / f"{image_id}.txt", with_score=True)
        obj_path = self.root / "objects" / f"{image_id}.txt"
        objects = (read_yxyx(obj_path, with_score=False)[0] if self.use_objects and obj_path.exists()
                   else np.zeros((0, 4), np.float32))
        return crops, mos, objects

    def load_raw(self, image_id: str) -> tuple[Image.Image, np.ndarray, np.ndarray, np.ndarray]:
        """Original-resolution image, crops, MOS and objects, as stored."""
        image = Image.open(self.image_path(image_id)).convert("RGB")
        return (image, *self.load_boxes(image_id))

    def __getitem__(self, i: int) -> Sample:
        image_id = self.ids[i]
        crops, mos, objects = self.load_boxes(image_id)
        short_side = self.rng.choice(self.scale_jitter) if self.augment and self.scale_jitter else self.short_side
        x, (crops_t, objects_t) = prepare_photo(self.image_path(image_id), [crops, objects], short_side,
                                                self.rng if self.augment else None)
        return Sample(image_id, x, crops_t, torch.from_numpy(mos), objects_t)


def prepare_photo(path: Path, boxes: list[np.ndarray], short_side: int,
                  rng: random.Random | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A photo as the network's normalised [3, H, W] input and its box sets ([N, 4] x1,y1,x2,y2 in
    file pixels) in input pixels; with ``rng``, photometric jitter and a random mirror (boxes follow).
    Decoded exactly as Cropper decodes uploads (JPEG draft + box reduction): no train/serve skew."""
    loaded = open_image(path, target_short_side=short_side)
    w0, h0 = loaded.original_size
    w, h = resize_shape(w0, h0, short_side)
    image = loaded.image.resize((w, h), Image.BILINEAR)
    scale = np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
    out = [torch.from_numpy(np.asarray(b, np.float32).reshape(-1, 4) * scale) for b in boxes]
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0
    if rng is not None:
        x = photometric_jitter(x, rng)
        if rng.random() < 0.5:
            x = x.flip(-1)
            out = [hflip_boxes(b, w) for b in out]
    x = (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return x, out
