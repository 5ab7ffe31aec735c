"""What the Serve tests share: the settings of the test deployment and synthetic test photos.
The deployment itself is the session fixture ``live`` in conftest.py."""

from __future__ import annotations

import io
import socket

import numpy as np
from PIL import Image

BUCKET, PREFIX = "photos", "ugc/"
BODY_LIMIT = 2_000_000
MAX_PIXELS = 20_000_000
APP_NAME = "ugc-crop-test"


def photo(width: int = 1200, height: int = 900, seed: int = 0) -> Image.Image:
    """A structured synthetic photo (gradients, a bright disc, a dark block) so crops differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width * 200, y / height * 200, (x + y) / (width + height) * 255], -1)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
    img[(x - cx) ** 2 + (y - cy) ** 2 < (0.12 * min(width, height)) ** 2] = (250, 240, 200)
    img[int(0.6 * height):int(0.8 * height), int(0.1 * width):int(0.3 * width)] = (20, 30, 40)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def exact_ratio(box, ratio: str) -> bool:
    a, b = (int(v) for v in ratio.split(":"))
    return (box[2] - box[0]) * b == (box[3] - box[1]) * a


def model_settings() -> dict:
    """Committed weights when they exist (the user default), else the seeded untrained model."""
    from s2cnet.cropper import DEFAULT_WEIGHTS
    from s2cnet.proposals import SALIENCY_WEIGHTS

    if DEFAULT_WEIGHTS.exists():
        return {"weights": "", "proposals": SALIENCY_WEIGHTS.exists()}
    return {"weights": "random", "proposals": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
