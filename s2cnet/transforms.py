"""Image normalisation and augmentation shared by training, pretraining and inference."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])


def resize_shape(width: int, height: int, short_side: int = 256, multiple: int = 32,
                 max_long_side: int = 1024) -> tuple[int, int]:
    """GAIC's input size: short side ~short_side, both sides rounded to a multiple of 32.

    The long side is capped so a panorama (or a 1x10000 strip) cannot blow up the model input.
    """
    scale = min(short_side / min(width, height), max_long_side / max(width, height))
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    return w, h


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor [3, H, W]."""
    x = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
    return (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def hflip_boxes(boxes, width: float):
    """Mirrored x1,y1,x2,y2 boxes ([N, 4] NumPy array or tensor, a copy): new x1 = W - old x2 and new
    x2 = W - old x1, so x1 < x2 still holds."""
    out = boxes[:, [2, 1, 0, 3]]
    out[:, [0, 2]] = width - out[:, [0, 2]]
    return out


def mirror_first(image: Image.Image) -> bool:
    """Whether to process ``image`` mirrored, from a statistic that changes sign under mirroring (the
    luminance's horizontal moment, exact in integers): a photo and its mirror are then both processed
    in the same orientation, so their crops are mirrors of each other by construction. The scorer's
    own left-right asymmetries (learned position priors, TensorFlow padding) stay, but cannot make
    the two disagree."""
    lum = np.asarray(image.convert("L"), np.int64)
    weights = 2 * np.arange(lum.shape[1], dtype=np.int64) - (lum.shape[1] - 1)
    for values in (lum, lum * lum):  # the second moment breaks the rare exact tie of the first
        moment = int(weights @ values.sum(0))
        if moment:
            return moment < 0
    return False  # symmetric in both: either orientation gives the same crop


def model_input(image: Image.Image, original_size: tuple[int, int], short_side: int = 256) -> tuple[torch.Tensor, np.ndarray]:
    """The network's [1, 3, H, W] input and the x1,y1,x2,y2 scale from full-size to input pixels.

    ``image`` may be a reduced decode (JPEG draft) of a photo whose full upright size is ``original_size``.
    """
    w0, h0 = original_size
    w, h = resize_shape(w0, h0, short_side)
    x = to_tensor(image.resize((w, h), Image.BILINEAR))[None]
    return x, np.array([w / w0, h / h0, w / w0, h / h0], np.float32)


def photometric_jitter(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Brightness, contrast and saturation jitter on an unnormalised [3, H, W] tensor in 0..1."""
    x = x * rng.uniform(0.75, 1.25)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.25) + mean
    gray = x.mean(0, keepdim=True)
    x = (x - gray) * rng.uniform(0.7, 1.3) + gray
    return x.clamp(0, 1)
