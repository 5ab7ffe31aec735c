"""The awkward bucket the pipeline tests run on: real photos plus every kind of upload that goes wrong.

``mixed_bucket()`` -> {key: (bytes, expectation)}; expectation is "ok", ("error", error_kind) for one
whole-photo error row whose reason starts with prefix, or ("partial", {ratios that must fail}).
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from pipelines.samples import augmented_photos

if TYPE_CHECKING:
    from pipelines.config import ModelSpec


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def blank_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of any size, streamed row by row: a few KB even at 20000x12000 px."""
    comp, row, parts = zlib.compressobj(9), b"\x00" * (width + 1), []
    for _ in range(height):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def mixed_bucket(n_photos: int = 18) -> dict[str, tuple[bytes, object]]:
    files: dict[str, tuple[bytes, object]] = {}
    for name, data in augmented_photos(n_photos, seed=1):
        files[f"mixed/{name.split('/')[-1]}"] = (data, "ok")
    base = Image.open(io.BytesIO(next(iter(augmented_photos(1, seed=2)))[1])).convert("RGB").resize((320, 240))
    good_jpeg = _save(base, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape 320x240, shown portrait 240x320
    rgb16 = (np.asarray(base, np.uint16) * 257)[:, :, ::-1]  # BGR for OpenCV
    frames = [Image.new("RGB", (120, 90), c) for c in ("red", "green", "blue")]
    odd = {
        "odd/cmyk.jpg": (_save(base.convert("CMYK"), "JPEG"), "ok"),
        "odd/grey16.png": (_save(Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257), "PNG"), "ok"),
        "odd/rgb16.png": (cv2.imencode(".png", rgb16)[1].tobytes(), "ok"),
        "odd/rgba.png": (_save(base.convert("RGBA"), "PNG"), "ok"),
        "odd/exif_rotated.jpg": (_save(base, "JPEG", exif=exif), "ok"),
        "odd/animated.gif": (_save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0), "ok"),
        "odd/palette.png": (_save(base.convert("P"), "PNG"), "ok"),
        "odd/nested/ünïcode name.jpg": (good_jpeg, "ok"),
        "odd/strip.png": (_save(base.resize((400, 12)), "PNG"), ("partial", {"9:16"})),
        "odd/empty.jpg": (b"", ("error", "empty")),
        "odd/notes.jpg": (b"shopping list: milk, eggs, bread\n" * 4, ("error", "not_an_image")),
        "odd/corrupt.jpg": (good_jpeg[:20] + bytes(range(256)) * 8, ("error", "corrupt")),
        "odd/huge.png": (blank_png(20000, 12000), ("error", "too_large")),  # past Pillow's bomb guard
        "odd/big.png": (blank_png(9000, 8000), ("error", "too_large")),  # past our 64 MP limit only
    }
    files.update(odd)
    return files


def expected_rows(files: dict, ratios: list[str]) -> int:
    return sum(1 if isinstance(exp, tuple) and exp[0] == "error" else len(ratios) for _, exp in files.values())


def model_for_tests(tmp_dir) -> tuple[ModelSpec, list[str]]:
    """The committed weights when they exist (Cropper.from_pretrained), else a saved random-weight
    checkpoint loaded the same way; returns the ModelSpec and the matching crop_bucket arguments."""
    from pathlib import Path

    import torch

    from pipelines.config import ModelSpec
    from s2cnet.cropper import DEFAULT_WEIGHTS, WEIGHTS_DIR
    from s2cnet.model import S2CNet

    proposals = (WEIGHTS_DIR / "saliency.pt").exists()
    flags = [] if proposals else ["--no-proposals"]
    if DEFAULT_WEIGHTS.exists():
        return ModelSpec(proposals=proposals), flags
    torch.manual_seed(0)
    model = S2CNet()
    path = Path(tmp_dir) / "random_s2cnet.pt"
    torch.save({"model": model.state_dict(), "config": model.cfg.to_dict()}, path)
    return ModelSpec(weights=str(path), proposals=False), ["--weights", str(path), "--no-proposals"]


def crash_once_model(spec, marker: str):
    """``spec`` (a ModelSpec) whose actors' Croppers kill their process on their 2nd batch, once per
    ``marker`` file: a crash as an OOM kill or a lost node looks, for the retry path. Test-only, so
    it lives here and travels to the Ray workers by value (this module is not importable there)."""
    import dataclasses

    import ray.cloudpickle

    from pipelines.config import ModelSpec

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    @dataclasses.dataclass(frozen=True)
    class CrashOnce(ModelSpec):
        marker: str = ""

        def build(self):
            cropper = ModelSpec(self.weights, self.proposals, self.untrained_ok).build()
            inner, calls = cropper.crop_batch, [0]

            def crop_batch(*args, **kwargs):
                calls[0] += 1
                if calls[0] == 2:
                    try:
                        os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                        os._exit(1)
                    except FileExistsError:
                        pass
                return inner(*args, **kwargs)

            cropper.crop_batch = crop_batch
            return cropper

    return CrashOnce(spec.weights, spec.proposals, spec.untrained_ok, marker)
