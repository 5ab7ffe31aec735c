"""Per-photo work of the batch job, free of Ray: bytes -> upright image -> best crop per ratio -> rows.

Every failure becomes a row with a readable reason instead of an exception, so one corrupt upload
never sinks its batch: a photo that cannot be read or decoded gives ONE row with ``ratio`` null;
a photo that decodes gives one row per requested ratio, each with a box or its own error.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence

import pyarrow as pa
from PIL import Image

from s2cnet.candidates import ratio_name
from s2cnet.faces import FaceDetectorFn, default_face_detector
from s2cnet.image_stage import image_stage
from s2cnet.imageio import ErrorKind, ImageLoadError, LoadedImage, open_image

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("width", pa.int32()),  # upright (EXIF-applied) size; null when the photo could not be read
    ("height", pa.int32()),
    ("ratio", pa.string()),  # null only on a whole-photo error row
    ("x1", pa.int32()),
    ("y1", pa.int32()),
    ("x2", pa.int32()),
    ("y2", pa.int32()),
    ("score", pa.float32()),
    ("objects_cut", pa.int32()),  # protected objects (faces, people, main objects) the crop cuts through
    ("objects_dropped", pa.int32()),  # protected objects it leaves out
    ("faces", pa.int32()),  # faces found that some crop of this ratio keeps whole
    ("faces_kept", pa.int32()),  # of those, the ones this crop keeps whole
    ("saliency_kept", pa.float32()),  # share of the photo's saliency mass inside the crop
    # per photo (the same on each of its rows): where any crop should be centred, and the smallest box
    # that holds what must be kept (null when nothing must); a CDN can cut other ratios from these
    ("focal_x", pa.int32()),
    ("focal_y", pa.int32()),
    ("safe_x1", pa.int32()),
    ("safe_y1", pa.int32()),
    ("safe_x2", pa.int32()),
    ("safe_y2", pa.int32()),
    ("thumbnail", pa.string()),  # the thumbnail's URI, when one was written
    ("model_version", pa.string()),
    ("error_kind", pa.string()),  # null when fine; one of ERROR_KINDS
    ("error", pa.string()),  # null when fine: the reason in words (reworded freely, never parsed)
    ("source_size", pa.int64()),  # the photo as it was read: size and last-modified time; a resume
    ("source_mtime_ns", pa.int64()),  # recomputes keys whose photo changed since
    ("source_etag", pa.string()),  # the object's ETag (S3; null on a local disk): changes with the content
    ("run_id", pa.string()),
    ("processed_at", pa.timestamp("ms", tz="UTC")),
])

# error_kind values: the loader's ErrorKind values for photos that are not usable images, and the
# job's own stages. "read" and "thumbnail" are transient (the store, not the photo): worth a retry.
ERROR_KINDS = tuple(k.value for k in ErrorKind if k is not ErrorKind.BAD_ARGUMENT) + ("read", "crop", "thumbnail", "key")
TRANSIENT_KINDS = frozenset({"read", "thumbnail"})

DEFAULT_MAX_PIXELS = 64_000_000  # ~190 MB of RGB per photo inside an actor (the loader's own default)
DEFAULT_MAX_BYTES = 200 * 1024 * 1024


class PhotoError(Exception):
    """A photo-level failure: ``kind`` is the row's ``error_kind``, the message its ``error``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):
        return (type(self), (self.kind, str(self)))


def error_kind(err: BaseException) -> str:
    """The typed kind of a failure: the loader's own for ImageLoadError, ours for PhotoError."""
    if isinstance(err, PhotoError):
        return err.kind
    if isinstance(err, ImageLoadError):
        return err.kind.value
    return "crop"


def reason(err: BaseException) -> str:
    """A one-line reason: the loader's own words for ImageLoadError, else 'Type: message'."""
    msg = " ".join(str(err).split())
    if isinstance(err, (ImageLoadError, PhotoError)):
        return msg or type(err).__name__
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def thumbnail_path(root: str, key: str, ratio: str) -> str:
    """{thumbnails root}/{key}/{W}x{H}.jpg -- a CDN finds a thumbnail from the photo key and ratio alone.

    A key whose path segments are empty, "." or ".." (legal on S3: ``in/../../x.jpg``) would name a
    file outside the thumbnails root on a local disk, or a different one on S3: a PhotoError of kind
    "key" (the photo's crop rows stand; only its thumbnails are refused, and a resume does not retry)."""
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise PhotoError("key", f"key {key!r} has an empty, '.' or '..' path segment: it cannot name a thumbnail "
                                "inside the thumbnails root")
    return f"{root.rstrip('/')}/{key}/{ratio_name(ratio)}.jpg"


@functools.cache
def face_detector() -> FaceDetectorFn:
    """One shipped face detector per process (the Cropper's default: the same faces in every stage)."""
    return default_face_detector()


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Upright RGB image at full size; the header is checked first so a decompression bomb is refused."""
    return open_photo(data, max_pixels).image


def open_photo(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, target_short_side: int | None = None,
               faces: bool = False) -> LoadedImage:
    """Upright RGB image; ``original_size`` is the full size. With ``target_short_side``: the Cropper's
    image-only stage (``s2cnet.image_stage``): decoded no larger than the model and the face detector
    need (JPEG draft mode), faces found when ``faces``, model-size pixels. The loader refuses images
    over ``max_pixels`` from their header, before any pixel is decoded."""
    try:
        if target_short_side is None:
            return open_image(data, max_pixels=max_pixels)
        return image_stage(data, target_short_side, face_detector() if faces else None, max_pixels)
    except ImageLoadError as e:
        raise PhotoError(e.kind.value, f"{'too large' if e.kind is ErrorKind.TOO_LARGE else 'decode'}: {reason(e)}") from e


def crop_safely(crop_batch: Callable, images: Sequence[Image.Image], ratios: Sequence[str],
                regions: Sequence[dict | None] | None = None) -> list[list]:
    """``crop_batch`` over ``images``; per image and ratio a Crop, or the reason (str) it failed.
    ``regions``: per image the caller's ``keep`` boxes and ``focus`` (or None).

    The whole batch runs in one call when it can; only when that fails is it retried photo by
    photo, then ratio by ratio (e.g. a 1x300 strip has no exact 16:9 crop but does have a 1:1 one).
    """
    if not images:
        return []
    given = [r or {} for r in (regions or [None] * len(images))]

    def call(idx: list[int], rs: list[str]) -> list:
        return crop_batch([images[i] for i in idx], list(rs), keep=[given[i].get("keep") for i in idx],
                          focus=[given[i].get("focus") for i in idx])

    try:
        return [list(r) for r in call(list(range(len(images))), list(ratios))]
    except Exception:
        pass
    out: list[list] = []
    for i in range(len(images)):
        try:
            out.append(list(call([i], list(ratios))[0]))
            continue
        except Exception:
            pass
        per_ratio: list = []
        for r in ratios:
            try:
                per_ratio.append(call([i], [r])[0][0])
            except Exception as e:
                per_ratio.append(f"crop: {reason(e)}")
        out.append(per_ratio)
    return out


def error_row(key: str, kind: str, error: str, model_version: str, size: tuple[int, int] | None = None,
              ratio: str | None = None) -> dict:
    w, h = size or (None, None)
    return {"key": key, "width": w, "height": h, "ratio": ratio, "x1": None, "y1": None, "x2": None,
            "y2": None, "score": None, "objects_cut": None, "objects_dropped": None, "faces": None, "faces_kept": None,
            "saliency_kept": None,
            "thumbnail": None, "model_version": model_version,
            "error_kind": kind, "error": error}


def crop_row(key: str, size: tuple[int, int], ratio: str, crop, model_version: str, error: str | None = None) -> dict:
    x1, y1, x2, y2 = (int(v) for v in crop.box)
    return {"key": key, "width": size[0], "height": size[1], "ratio": ratio, "x1": x1, "y1": y1, "x2": x2,
            "y2": y2, "score": float(crop.score), "objects_cut": len(crop.cut_objects),
            "objects_dropped": len(crop.dropped_objects), "faces": crop.faces, "faces_kept": crop.kept_faces,
            "saliency_kept": crop.saliency_kept, "thumbnail": None,
            **dict(zip(("focal_x", "focal_y"), crop.focal_point or (None, None))),
            **dict(zip(("safe_x1", "safe_y1", "safe_x2", "safe_y2"), crop.safe_box or (None,) * 4)),
            "model_version": model_version, "error_kind": None if error is None else "thumbnail", "error": error}


def thumbnail_jpeg(image: Image.Image, box: tuple[int, int, int, int], width: int, quality: int = 85) -> bytes:
    """The crop, ``width`` px wide (never upscaled), as a baseline JPEG."""
    tile = image.crop(box)
    if tile.width > width:
        # Bicubic: indistinguishable from Lanczos at these <2x reductions, and a quarter cheaper.
        tile = tile.resize((width, max(1, round(tile.height * width / tile.width))), Image.BICUBIC)
    buf = io.BytesIO()
    tile.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def rows_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)
