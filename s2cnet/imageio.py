"""Image loading shared by every entry point (library, CLI, Ray pipelines, the HTTP service).

User photos arrive rotated by EXIF, in odd modes (CMYK, 16-bit, palettes with transparency), as
animations, as multi-hundred-megapixel JPEGs, or not as images at all. Everything here turns them
into one thing, an upright RGB ``PIL.Image``, or raises one thing, ``ImageLoadError`` with a reason a
person can act on. Boxes are always meant in pixels of the upright full-size image, so
``open_image`` also reports that size when it decodes a JPEG at reduced size (draft mode).
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # refuse larger images before decoding (decompression bombs)
ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}

try:  # HEIC/HEIF (iPhone photos) when the optional pillow-heif package is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:
    HEIF_SUPPORTED = False

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray


class ErrorKind(str, Enum):
    """Why a load failed, as a value callers branch on (HTTP status, Parquet ``error_kind``, counts);
    the reason text is for people and may be reworded freely."""

    EMPTY = "empty"  # 0 bytes
    NOT_AN_IMAGE = "not_an_image"  # a PDF, text, a ZIP, unknown bytes...
    UNSUPPORTED = "unsupported"  # an image format this install cannot decode (HEIC without pillow-heif, SVG)
    TOO_LARGE = "too_large"  # over the pixel limit or Pillow's decompression-bomb guard, or out of memory
    CORRUPT = "corrupt"  # an image whose header or data is cut short or damaged
    UNREADABLE = "unreadable"  # the file itself: missing, a directory, no permission, an I/O error
    BAD_ARGUMENT = "bad_argument"  # an object the loader does not take (wrong type, array shape or dtype)


class ImageLoadError(ValueError):
    """The input is not a decodable image; ``str(err)`` says why in plain words.

    ``kind`` says which way it failed (an ``ErrorKind``); ``reason`` is the explanation alone;
    ``source`` names the input (a path) when there is one.
    """

    def __init__(self, reason: str, source: str | None = None, kind: ErrorKind = ErrorKind.CORRUPT) -> None:
        super().__init__(f"{source}: {reason}" if source else reason)
        self.reason = reason
        self.source = source
        self.kind = ErrorKind(kind)

    def __reduce__(self):  # keep the reason and kind when pickled across Ray workers
        return (type(self), (self.reason, self.source, self.kind))


@dataclass(frozen=True)
class LoadedImage:
    """An upright RGB image, possibly decoded at reduced size, and the size boxes must refer to."""

    image: Image.Image  # upright RGB; smaller than original_size after draft/reduce
    original_size: tuple[int, int]  # (width, height) of the upright full-size image
    format: str | None = None  # "JPEG", "PNG", ... (None for in-memory inputs)
    # The faces the image-only stage found (``s2cnet.image_stage``), boxes in upright full-size pixels
    # and scores, when it ran already (the pipeline's CPU tasks, the service's request path).
    faces: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per decoded pixel along x and y (1.0 when decoded at full size)."""
        return self.original_size[0] / self.image.width, self.original_size[1] / self.image.height

    def to_original(self, box) -> tuple[int, int, int, int]:
        """A box x1,y1,x2,y2 in ``image`` pixels -> the same box in upright full-size pixels."""
        sx, sy = self.scale
        w, h = self.original_size
        x1, y1, x2, y2 = (float(v) for v in box)
        return (int(np.clip(round(x1 * sx), 0, w)), int(np.clip(round(y1 * sy), 0, h)),
                int(np.clip(round(x2 * sx), 0, w)), int(np.clip(round(y2 * sy), 0, h)))


# -- public API -------------------------------------------------------------------------------------
def load_image(src: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any supported input -> upright RGB image at full size; raises ImageLoadError."""
    return open_image(src, max_pixels=max_pixels).image


def open_image(src: ImageSource, target_short_side: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, target_long_side: int | None = None) -> LoadedImage:
    """Decode ``src`` (path, bytes, binary file, PIL image or uint8 array) to an upright RGB image.

    target_short_side: decode no larger than needed for a short side of at least this many pixels
    (JPEG draft mode, then integer box reduction), which saves most of the decoding time and memory
    of large photos; ``original_size`` still reports the full upright size.
    target_long_side: also keep at least this many pixels on the long side (a face detector's input).
    max_pixels: images whose header claims more pixels are refused before any pixel is decoded
    (None: no limit of ours; Pillow's own ``Image.MAX_IMAGE_PIXELS`` guard still applies).
    """
    for name, side in (("target_short_side", target_short_side), ("target_long_side", target_long_side)):
        if side is not None and side < 1:
            raise ValueError(f"{name} must be positive, got {side}")
    target = None if target_short_side is None else (target_short_side, target_long_side or 1)
    if isinstance(src, Image.Image):
        # An image still backed by a file (lazy Image.open) is not decoded yet: guard it too, and
        # decode a fresh handle on its file, since draft mode would shrink the caller's own image.
        lazy = getattr(src, "fp", None) is not None
        if lazy and isinstance(getattr(src, "filename", None), str) and src.filename:
            try:
                fresh = _open_path(Path(src.filename), target, max_pixels)
                if fresh.original_size in (src.size, src.size[::-1]):
                    return fresh
            except ImageLoadError:
                pass
            # the file went away or changed since it was opened: decode the caller's handle, no draft
        limit = max_pixels if lazy else None
        return _decode(src, target, limit, getattr(src, "filename", None) or None, owned=False)
    if isinstance(src, np.ndarray):
        return _decode(_from_array(src), target, None, None, owned=True)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise ImageLoadError("empty input (0 bytes)", kind=ErrorKind.EMPTY)
        return _open_and_decode(io.BytesIO(data), data[:64], target, max_pixels, source=None)
    if isinstance(src, (str, os.PathLike)):
        return _open_path(Path(src), target, max_pixels)
    if isinstance(src, io.TextIOBase):
        raise ImageLoadError(f"{getattr(src, 'name', 'the file')} is open in text mode: open images with 'rb'",
                             getattr(src, "name", None), ErrorKind.BAD_ARGUMENT)
    if hasattr(src, "read"):
        fp = src if _seekable(src) else io.BytesIO(src.read())
        start = fp.tell()
        head = fp.read(64)
        fp.seek(start)
        if not head:
            raise ImageLoadError("empty input (0 bytes)", getattr(src, "name", None), ErrorKind.EMPTY)
        return _open_and_decode(fp, head, target, max_pixels, source=_name(src))
    raise ImageLoadError(f"cannot read an image from a {type(src).__name__}; "
                         "pass a path, bytes, a binary file, a PIL image or a uint8 array", kind=ErrorKind.BAD_ARGUMENT)


# -- opening ----------------------------------------------------------------------------------------
def _name(fp) -> str | None:
    name = getattr(fp, "name", None)
    return name if isinstance(name, str) else None


def _seekable(fp) -> bool:
    try:
        return bool(fp.seekable())
    except (AttributeError, OSError, ValueError):
        return False


# target: (short side, long side) to keep at least when decoding at reduced size, or None for full size
Target = tuple[int, int] | None


def _open_path(path: Path, target: Target, max_pixels: int | None) -> LoadedImage:
    source = str(path)
    try:
        st = path.stat()
        size = st.st_size
        if path.is_dir():
            raise ImageLoadError("is a directory, not an image file", source, ErrorKind.UNREADABLE)
        if not stat.S_ISREG(st.st_mode):  # a FIFO, socket or device: opening it could block forever
            raise ImageLoadError("not a regular file (a pipe, socket or device)", source, ErrorKind.UNREADABLE)
        with path.open("rb") as f:
            if size == 0:
                raise ImageLoadError("empty file (0 bytes)", source, ErrorKind.EMPTY)
            head = f.read(64)
            f.seek(0)
            return _open_and_decode(f, head, target, max_pixels, source)
    except FileNotFoundError:
        raise ImageLoadError("no such file", source, ErrorKind.UNREADABLE) from None
    except PermissionError:
        raise ImageLoadError("permission denied", source, ErrorKind.UNREADABLE) from None
    except IsADirectoryError:
        raise ImageLoadError("is a directory, not an image file", source, ErrorKind.UNREADABLE) from None
    except ImageLoadError:
        raise
    except OSError as e:
        raise ImageLoadError(f"cannot read the file ({e.strerror or e})", source, ErrorKind.UNREADABLE) from None


def _open_and_decode(fp: IO[bytes], head: bytes, target: Target, max_pixels: int | None,
                     source: str | None) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            img = Image.open(fp)
    except Image.DecompressionBombError as e:
        raise ImageLoadError(_bomb_reason(e), source, ErrorKind.TOO_LARGE) from None
    except UnidentifiedImageError:
        kind, reason = _sniff(head)
        raise ImageLoadError(reason, source, kind) from None
    except Exception as e:  # Pillow signals bad headers with SyntaxError, struct.error, ValueError, ...
        kind, reason = _sniff(head)
        if kind is not ErrorKind.CORRUPT:
            kind, reason = ErrorKind.CORRUPT, f"corrupt image header ({type(e).__name__}: {e})"
        raise ImageLoadError(reason, source, kind) from None
    with img:  # closes the file only; the decoded pixels stay usable
        return _decode(img, target, max_pixels, source, owned=True)


def _bomb_reason(e: Exception) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    found = re.search(r"\((\d+) pixels\)", str(e))
    claimed = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
    return (f"the header claims {claimed}, over Pillow's decompression-bomb limit of "
            f"{2 * (limit or 0) / 1e6:.1f}; raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels if it is genuine")


def _sniff(head: bytes) -> tuple[ErrorKind, str]:
    """Why Pillow could not identify the bytes, as precisely as their first bytes tell: an image format
    we know by its signature is a damaged image (corrupt), anything else is not an image at all."""
    signatures = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
                  b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
    for magic, fmt in signatures.items():
        if head.startswith(magic):
            return ErrorKind.CORRUPT, f"starts like a {fmt} image but its header is cut short or corrupt"
    if head[8:12] == b"WEBP" and head.startswith(b"RIFF"):
        return ErrorKind.CORRUPT, "starts like a WebP image but its header is cut short or corrupt"
    if head.startswith(b"%PDF"):
        return ErrorKind.NOT_AN_IMAGE, "a PDF document, not an image"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            if HEIF_SUPPORTED:
                return ErrorKind.CORRUPT, "a HEIC/HEIF file whose header could not be read"
            return ErrorKind.UNSUPPORTED, "a HEIC/HEIF image, which needs the optional pillow-heif package"
        if brand in (b"avif", b"avis"):
            return ErrorKind.CORRUPT, "an AVIF image whose header could not be read"
        return ErrorKind.NOT_AN_IMAGE, "a video or other ISO media file, not an image"
    if head.startswith(b"PK\x03\x04"):
        return ErrorKind.NOT_AN_IMAGE, "a ZIP archive, not an image"
    if head.startswith(b"\x1f\x8b"):
        return ErrorKind.NOT_AN_IMAGE, "a gzip archive, not an image"
    if head.startswith(b"\x1aE\xdf\xa3") or (head.startswith(b"RIFF") and head[8:11] == b"AVI"):
        return ErrorKind.NOT_AN_IMAGE, "a video file, not an image"
    stripped = head.lstrip().lower()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in stripped):
        return ErrorKind.UNSUPPORTED, "an SVG vector drawing; rasterise it to PNG or JPEG first"
    if _looks_like_text(head):
        return ErrorKind.NOT_AN_IMAGE, f"looks like text, not an image (starts with {head[:24].decode('utf-8', 'replace')!r})"
    return ErrorKind.NOT_AN_IMAGE, f"not a recognised image format (first bytes: {head[:8].hex(' ')})"


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # a multi-byte character may be cut at the end of the sample
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * max(len(text), 1)


# -- decoding ---------------------------------------------------------------------------------------
def _decode(img: Image.Image, target: Target, max_pixels: int | None,
            source: str | None, owned: bool) -> LoadedImage:
    """owned: ``img`` was opened here (its metadata may be rewritten; closing it keeps the pixels)."""
    fmt = img.format
    try:
        if img.tell() != 0:
            img.seek(0)  # animations and multi-page files: the first frame (Image.open starts there)
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageLoadError(f"the header gives an empty size {width}x{height}", source)
        if max_pixels is not None and width * height > max_pixels:
            raise ImageLoadError(f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the "
                                 f"limit of {max_pixels / 1e6:.1f} (max_pixels)", source, ErrorKind.TOO_LARGE)
        if target is not None and owned:  # draft mode rewrites the image it is applied to
            k = max(target[0] / min(width, height), target[1] / max(width, height))
            if k < 0.5:  # JPEG draft scales by 1/2, 1/4 or 1/8, never below the request; others ignore it
                img.draft(None, (max(1, int(np.ceil(width * k))), max(1, int(np.ceil(height * k)))))
        img.load()
    except ImageLoadError:
        raise
    except MemoryError:
        raise ImageLoadError(f"not enough memory to decode a {img.width}x{img.height} image", source,
                             ErrorKind.TOO_LARGE) from None
    except Exception as e:
        raise ImageLoadError(_decode_reason(e, fmt), source) from None

    upright = _upright(img)
    swapped = upright.size != img.size
    original_size = (height, width) if swapped else (width, height)
    icc = img.info.get("icc_profile")
    try:
        rgb = _to_rgb(upright)
    except Exception as e:
        raise ImageLoadError(f"cannot convert a {img.mode} image to RGB ({e})", source) from None
    if target is not None:
        rgb = reduced(rgb, *target)
    if rgb is img and not owned:  # the caller's image is upright RGB already: hand it back untouched
        return LoadedImage(rgb, original_size, fmt)
    # Orientation is applied and other metadata is stale; keep only an RGB colour profile.
    rgb.info = {"icc_profile": icc} if isinstance(icc, bytes) and icc[16:20] == b"RGB " else {}
    return LoadedImage(rgb, original_size, fmt)


def reduced(image: Image.Image, short_side: int, long_side: int = 1) -> Image.Image:
    """``image`` shrunk by the largest integer box factor that keeps both sides at least as given; the
    same call on its result changes nothing, so every entry point reaches the same pixels."""
    factor = min(min(image.size) // short_side, max(image.size) // max(long_side, 1))
    return image.reduce(factor) if factor >= 2 else image


def _decode_reason(e: Exception, fmt: str | None) -> str:
    text = str(e)
    kind = f"{fmt} " if fmt else ""
    if "truncated" in text.lower() or isinstance(e, EOFError):
        return f"truncated {kind}image: the data ends before the picture is complete"
    return f"corrupt {kind}image data ({type(e).__name__}: {text})"


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored."""
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:
        return img
    if orientation in (None, 1) or not isinstance(orientation, int) or not 1 <= orientation <= 8:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise ImageLoadError(f"arrays must be uint8 HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), "
                             f"got {arr.dtype} {arr.shape}", kind=ErrorKind.BAD_ARGUMENT)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageLoadError(f"empty array of shape {arr.shape}", kind=ErrorKind.EMPTY)
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparency is composited on white, as a viewer shows it."""
    if img.mode in _WIDE_MODES:
        img = _wide_to_l(img)
    if img.mode == "CMYK":
        return _cmyk_to_rgb(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img if img.mode == "RGB" else img.convert("RGB")


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey -> 8-bit: 16-bit is scaled by 1/257, other ranges are stretched."""
    a = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        out = a / 257.0
    else:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo >= 0 and hi <= 255:
            out = a
        elif lo >= 0 and hi <= 65535:
            out = a / 257.0
        else:
            out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.nan_to_num(np.rint(out)), 0, 255).astype(np.uint8), mode="L")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """Through the embedded ICC profile when there is one (print CMYK is far from naive inversion)."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:
            pass  # a broken profile: fall back to Pillow's plain conversion
    return img.convert("RGB")
