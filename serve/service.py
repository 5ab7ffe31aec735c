"""The crop/thumbnail service as a plain class: everything but HTTP and Ray, testable in-process.

Every client mistake becomes a ServiceError with a status and a readable reason here, so the
HTTP layer only translates; nothing a caller sends should reach a 500.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from PIL import Image

from s2cnet.candidates import canonical_ratio, parse_ratio, split_fitting
from s2cnet.choice import caller_regions
from s2cnet.cropper import Crop, Cropper
from s2cnet.imageio import ImageLoadError, LoadedImage, open_image
from serve.errors import ServiceError, load_error
from serve.objects import ObjectReader, check_key
from serve.settings import Settings

THUMBNAIL_FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}


def load_cropper(settings: Settings) -> Cropper:
    """The committed weights by default; ``weights="random"`` is a seeded untrained model for dev/tests.

    With ``weights="random"`` the crops are meaningless but the compute (and so latency) is the real one.
    """
    import torch

    torch.set_num_threads(max(1, settings.torch_threads))
    try:  # the face detector's OpenCV pool too: a replica owns num_cpus cores, not the machine
        import cv2

        cv2.setNumThreads(max(1, settings.torch_threads))
    except ImportError:
        pass
    if settings.weights == "random":
        proposer = None
        if settings.proposals:  # the real proposer when its weights exist, else the same net untrained
            from s2cnet.faces import HaarCascade
            from s2cnet.proposals import SALIENCY_WEIGHTS, SaliencyProposer, default_proposer
            from s2cnet.saliency import SaliencyNet

            proposer = (default_proposer() if SALIENCY_WEIGHTS.exists()
                        else SaliencyProposer(SaliencyNet().eval(), faces=HaarCascade()))
        return Cropper.untrained(proposer=proposer)
    return Cropper.from_pretrained(settings.weights or None, proposer="default" if settings.proposals else None,
                                   device=settings.device or None)


class CropService:
    def __init__(self, settings: Settings, cropper: Cropper | None = None, reader: ObjectReader | None = None) -> None:
        self.settings = settings
        self.cropper = cropper if cropper is not None else load_cropper(settings)
        self.reader = reader if reader is not None else ObjectReader(
            settings.bucket, settings.prefix, settings.endpoint_url, settings.region,
            settings.access_key, settings.secret_key, settings.max_body_bytes)
        self._boxes: OrderedDict[tuple, tuple[int, int, int, int]] = OrderedDict()

    @property
    def model_version(self) -> str:
        return self.cropper.model_version

    # -- request parsing ---------------------------------------------------------------------------
    def parse_ratios(self, text: str | None) -> list[str | None]:
        """'1:1,16:9,free' -> ['1:1', '16:9', None] (canonical, order kept, duplicates dropped; None
        is the free-ratio crop); 422 on bad syntax."""
        text = self.settings.default_ratios if text is None else text
        if len(text) > 64 * max(1, self.settings.max_ratios):
            raise ServiceError(422, f"ratios is {len(text)} characters long; "
                                    f"give at most {self.settings.max_ratios} 'W:H' ratios")
        items = [t.strip() for t in text.split(",")]
        if not any(items):
            raise ServiceError(422, "ratios is empty; give e.g. ratios=1:1,16:9 (or free)")
        out: list[str | None] = []
        for item in items:
            r = None if item.lower() == "free" else self.parse_ratio(item)
            if r not in out:
                out.append(r)
        if len(out) > self.settings.max_ratios:
            raise ServiceError(422, f"at most {self.settings.max_ratios} ratios per request, got {len(out)}")
        return out

    @staticmethod
    def parse_ratio(text: str) -> str:
        if len(text) > 64:  # before any int(): a 60,000-digit term must not reach Python's int limit
            raise ServiceError(422, f"aspect ratio must look like 'W:H' with terms 1..100, got {len(text)} characters")
        try:
            return canonical_ratio(text)
        except ValueError as e:
            raise ServiceError(422, str(e)) from None

    def check_key(self, key: str) -> str:
        key = check_key(key, self.settings.prefix)  # a bad key is the caller's fault whatever the setup (400)
        if not self.settings.bucket:
            raise ServiceError(503, "no bucket configured for thumbnails (set UGC_SERVE_BUCKET)")
        return key

    def check_store(self) -> None:
        """At start-up: a configured thumbnail store that cannot serve is a deployment error, not a 500
        (or a cacheable 404) on every thumbnail later."""
        if self.settings.bucket:
            self.reader.check()

    def check_body_size(self, n: int) -> None:
        if n > self.settings.max_body_bytes:
            raise ServiceError(413, f"body is over the {self.settings.max_body_bytes} byte limit")

    def decode(self, data: bytes, full_size: bool = False, stored: bool = False,
               at_least: tuple[int, int] | None = None) -> LoadedImage:
        """Bytes -> upright RGB via the shared loader; 413 too big, 415 not an image, 422 corrupt.

        full_size=False runs the Cropper's image-only stage (``s2cnet.image_stage``): a decode only as
        large as the face detector and the model need (JPEG draft mode), the faces, and model-size
        pixels, which the Cropper then takes as they are; ``original_size`` is still the full upright size.
        full_size=True with ``at_least`` (short, long side): no larger than that needs.
        """
        self.check_body_size(len(data))
        if not data:
            raise ServiceError(422, "the stored object is empty (0 bytes)" if stored
                               else "empty body: send the image bytes (raw body or multipart form field)")
        try:
            if full_size:
                short, long = at_least or (None, None)
                return open_image(data, target_short_side=short, target_long_side=long, max_pixels=self.settings.max_pixels)
            return self.cropper.image_stage(data, max_pixels=self.settings.max_pixels)
        except ImageLoadError as e:
            raise load_error(e) from None

    @staticmethod
    def fitting(size: tuple[int, int], ratios: Sequence[str]) -> tuple[list[str], list[dict]]:
        """The ratios the photo can hold an exact crop of, and an error per ratio it cannot (one rule for
        every entry point, ``candidates.split_fitting``); 422 when it holds none of them."""
        fits, errors = split_fitting(*size, ratios)
        if not fits:
            raise ServiceError(422, "; ".join(e["detail"] for e in errors))
        return fits, errors

    # -- model ---------------------------------------------------------------------------------------
    def crop_many(self, items: Sequence[tuple]) -> list[list[Crop] | Exception]:
        """One result per (image, ratios) or (image, ratios, regions) item, in order; an item's failure
        never fails the others. ``regions`` is a dict with the caller's ``keep`` boxes and ``focus``.

        An image is anything ``Cropper`` takes: upload bytes, a PIL image, or the LoadedImage ``decode``
        made (its faces included). Items sharing a ratio list go through one ``Cropper.crop_batch`` call
        (the serve batch path).
        """
        results: list[list[Crop] | Exception | None] = [None] * len(items)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(tuple(item[1]), []).append(i)
        regions = [(item[2] if len(item) > 2 and item[2] else {}) for item in items]
        for ratios, idx in groups.items():
            try:
                out = self.cropper.crop_batch([items[i][0] for i in idx], list(ratios),
                                              keep=[regions[i].get("keep") for i in idx],
                                              focus=[regions[i].get("focus") for i in idx])
                for i, crops in zip(idx, out):
                    results[i] = crops
            except Exception:  # isolate the bad item: redo this group one by one
                for i in idx:
                    results[i] = self._crop_one(items[i][0], ratios, regions[i])
        return results  # type: ignore[return-value]

    def _crop_one(self, image: Any, ratios: tuple[str, ...], regions: dict | None = None) -> list[Crop] | Exception:
        regions = regions or {}
        try:
            return self.cropper.crop(image, list(ratios), keep=regions.get("keep"), focus=regions.get("focus"))
        except ImageLoadError as e:  # the header was fine (decode() passed), the pixels are not
            return load_error(e)
        except ValueError as e:  # candidate errors and the caller's regions are the input's fault too
            return ServiceError(422, str(e))
        except Exception as e:
            return e

    @staticmethod
    def parse_regions(keep: Sequence[str], focus: str | None, size: tuple[int, int]) -> dict:
        """``keep=x1,y1,x2,y2`` (repeatable) and ``focus=x,y`` query values -> the Cropper's arguments,
        checked against the photo (422 with the reason: not numbers, outside the photo, too many)."""
        def numbers(text: str, n: int, name: str) -> list[float]:
            parts = text.split(",")
            if len(text) > 200 or len(parts) != n:
                raise ServiceError(422, f"{name} takes {n} comma-separated numbers, got {text[:60]!r}")
            if any(not p or p.strip() != p for p in parts):
                raise ServiceError(422, "keep and focus take plain numbers, without spaces")
            try:
                return [float(p) for p in parts]
            except ValueError:
                raise ServiceError(422, f"{name} takes {n} comma-separated numbers, got {text[:60]!r}") from None

        boxes = [numbers(k, 4, "keep") for k in keep]
        point = numbers(focus, 2, "focus") if focus is not None else None
        try:
            caller_regions(size, boxes or None, point)
        except ValueError as e:
            raise ServiceError(422, str(e)) from None
        return {"keep": boxes or None, "focus": point}

    @staticmethod
    def crops_body(size: tuple[int, int], crops: Sequence[Crop], model_version: str, timing_ms: dict,
                   errors: Sequence[dict] = ()) -> dict:
        w, h = size
        first = crops[0] if crops else None
        return {"width": w, "height": h,
                "focal_point": list(first.focal_point) if first and first.focal_point else None,
                "safe_box": list(first.safe_box) if first and first.safe_box else None,
                "crops": [{"ratio": c.ratio, "box": [int(v) for v in c.box], "score": round(float(c.score), 6),
                           "cut_objects": [[int(v) for v in b] for b in c.cut_objects],
                           "dropped_objects": [[int(v) for v in b] for b in c.dropped_objects],
                           "faces": c.faces, "kept_faces": c.kept_faces, "saliency_kept": c.saliency_kept} for c in crops],
                "errors": list(errors),
                "model_version": model_version,
                "timing_ms": {k: round(v, 2) for k, v in timing_ms.items()}}

    # -- thumbnails ------------------------------------------------------------------------------------
    def parse_width(self, text: str) -> int:
        """The thumbnail width as the query gives it: plain ASCII digits only (not '320.0', '+320',
        ' 320' or '3_20', which would make other cache keys for the same thumbnail)."""
        if not re.fullmatch(r"[0-9]+", text or ""):
            shown = text if len(text or "") <= 24 else text[:24] + "..."
            raise ServiceError(422, f"thumbnail width must be a whole number of pixels in digits, got {shown!r}")
        if len(text) > 12:  # refused by its length: no arithmetic on a 309-digit width
            raise ServiceError(422, f"thumbnail width must be 1..{self.settings.max_thumbnail_width} pixels, "
                                    f"got a {len(text)}-digit number")
        return int(text)

    def thumbnail_size(self, ratio: str, width: int) -> tuple[int, int]:
        a, b = parse_ratio(ratio)
        limit = self.settings.max_thumbnail_width
        if not 1 <= width <= limit:  # range first: no arithmetic on a 309-digit width
            shown = str(width) if len(str(width)) <= 12 else f"a {len(str(width))}-digit number"
            raise ServiceError(422, f"thumbnail width must be 1..{limit} pixels, got {shown}")
        allowed = self.settings.allowed_widths()
        if allowed and width not in allowed:
            raise ServiceError(422, f"thumbnail width {width} is not offered; use one of {', '.join(map(str, allowed))}")
        height = max(1, round(width * b / a))
        if height > limit:
            raise ServiceError(422, f"thumbnail must be 1..{limit} pixels on each side, asked {width}x{height}")
        return width, height

    @staticmethod
    def thumbnail_format(fmt: str) -> tuple[str, str]:
        try:
            return THUMBNAIL_FORMATS[fmt.lower()]
        except KeyError:
            raise ServiceError(422, f"format must be one of {sorted(THUMBNAIL_FORMATS)}, got {fmt!r}") from None

    def thumbnail_etag(self, key: str, source_etag: str, ratio: str, width: int, fmt: str) -> str:
        """Changes with the source object, the request and the model, and nothing else."""
        raw = "|".join([self.settings.bucket, key, source_etag, ratio, str(width), fmt.lower(), self.model_version])
        return '"' + hashlib.sha256(raw.encode()).hexdigest()[:32] + '"'

    def cached_box(self, key: str, source_etag: str, ratio: str) -> tuple[int, int, int, int] | None:
        box = self._boxes.get((key, source_etag, ratio))
        if box is not None:
            self._boxes.move_to_end((key, source_etag, ratio))
        return box

    def remember_box(self, key: str, source_etag: str, ratio: str, box: tuple[int, int, int, int]) -> None:
        self._boxes[(key, source_etag, ratio)] = tuple(box)
        while len(self._boxes) > self.settings.box_cache_size:
            self._boxes.popitem(last=False)

    @staticmethod
    def thumbnail_decode_size(data: bytes, box: Sequence[int], width: int) -> tuple[int, int] | None:
        """The (short, long) side a decode of the stored photo needs for a ``width``-px thumbnail of
        ``box`` (full-size pixels), from its header; None: the full size (or an unreadable header, which
        the decode then names). A 60000x1000 photo's 200-px thumbnail decodes at 1/8 scale."""
        scale = width / max(1, box[2] - box[0])
        if scale >= 1:
            return None
        try:
            w, h = Image.open(io.BytesIO(data)).size  # header only; the sides' order does not matter here
        except Exception:
            return None
        return max(1, math.ceil(min(w, h) * scale)), max(1, math.ceil(max(w, h) * scale))

    def render_thumbnail(self, source: LoadedImage, box: Sequence[int], ratio: str, width: int, fmt: str) -> bytes:
        """The thumbnail of ``box`` (full-size upright pixels) from ``source``, decoded at whatever size
        (``thumbnail_decode_size``): the box is scaled to the decode's pixels here."""
        image = source.image
        sx, sy = image.width / source.original_size[0], image.height / source.original_size[1]
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        size = self.thumbnail_size(ratio, width)
        pil_format, _ = self.thumbnail_format(fmt)
        thumb = image.resize(size, Image.LANCZOS, box=tuple(float(v) for v in box), reducing_gap=3.0)
        buf = io.BytesIO()
        thumb.save(buf, pil_format, quality=85 if pil_format == "JPEG" else 80)
        return buf.getvalue()
