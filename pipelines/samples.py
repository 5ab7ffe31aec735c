"""Sample photos that ship inside scikit-image (no download), for the demo and the benchmark."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# Bundled with the scikit-image wheel (checked offline): colour photos first, then grey and graphic ones.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "colorwheel", "camera", "coins", "moon", "clock", "brick", "grass", "gravel", "page", "text")
GRAPHICS = ("logo",)  # RGBA, kept as PNG
ANIMATED_GIF = "no_time_for_that_tiny.gif"


def _array(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def sample_photos() -> dict[str, bytes]:
    """{file name: bytes}: scikit-image's photos as JPEG, its RGBA logo as PNG, its animated GIF as is."""
    out = {}
    for name in PHOTOS:
        try:
            out[f"{name}.jpg"] = _jpeg(Image.fromarray(_array(name)))
        except Exception:  # a sample missing from this scikit-image version: skip it
            continue
    for name in GRAPHICS:
        buf = io.BytesIO()
        Image.fromarray(_array(name)).save(buf, "PNG")
        out[f"{name}.png"] = buf.getvalue()
    import skimage.data

    gif = Path(skimage.data.__file__).parent / ANIMATED_GIF
    if gif.exists():
        out[ANIMATED_GIF] = gif.read_bytes()
    return out


def augmented_photos(n: int, seed: int = 0, colour_only: bool = True) -> Iterator[tuple[str, bytes]]:
    """``n`` distinct JPEGs made from the samples: random crop, flip, resize (long side 400-1024), quality."""
    rng = np.random.default_rng(seed)
    names = PHOTOS[:8] if colour_only else PHOTOS
    bases = [Image.fromarray(_array(nm)).convert("RGB") for nm in names]
    for i in range(n):
        base = bases[i % len(bases)]
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = base.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        long_side = int(rng.integers(400, 1025))
        s = long_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BILINEAR)
        yield f"aug/{i:05d}_{names[i % len(names)]}.jpg", _jpeg(img, int(rng.integers(70, 96)))
