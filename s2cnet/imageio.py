"""Image loading shared by every entry point (placeholder until issue 3's loader lands)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps


class ImageLoadError(ValueError):
    """The input is not a decodable image; ``str(err)`` says why in plain words."""


def load_image(src) -> Image.Image:
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (bytes, bytearray)):
        img = Image.open(io.BytesIO(src))
    else:
        img = Image.open(Path(src))
    return ImageOps.exif_transpose(img).convert("RGB")
