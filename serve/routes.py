"""The FastAPI routes, built around a CropService and an async ``crop`` function.

``crop`` is the Ray Serve ``@serve.batch`` method in production and a plain thread call in tests,
so the same routes run with or without Ray. Blocking work (S3, decoding, encoding) goes to threads
so the event loop keeps accepting requests while the model runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from s2cnet.cropper import Crop
from s2cnet.imageio import LoadedImage
from s2cnet.overlay import OTHER_RATIO_COLOURS, RATIO_COLOURS, hex_colour
from serve.errors import ServiceError
from serve.service import CropService

PAGE = Path(__file__).with_name("page.html")

# (image bytes or PIL image, ratios) -> (crops, size of the model batch this request rode in)
# regions: the caller's {"keep": boxes, "focus": point}, or None
CropFn = Callable[[bytes | Image.Image | LoadedImage, tuple[str, ...], dict | None], Awaitable[tuple[list[Crop], int]]]


def direct_crop(service: CropService) -> CropFn:
    """No batching: each request calls the model on its own (tests and single-process use)."""

    async def crop(image: bytes | Image.Image | LoadedImage, ratios: tuple[str, ...],
                   regions: dict | None = None) -> tuple[list[Crop], int]:
        result = (await asyncio.to_thread(service.crop_many, [(image, ratios, regions)]))[0]
        if isinstance(result, Exception):
            raise result
        return result, 1

    return crop


async def read_body(request: Request, limit: int, deadline_s: float) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (before it is all read, when
    possible), and with 408 when it has not all arrived within ``deadline_s``: a client that sends
    headers and a few bytes must not hold a request slot for ever."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ServiceError(413, f"body is {declared} bytes, over the {limit} byte limit")
    buf = bytearray()

    async def read_all() -> None:
        async for chunk in request.stream():
            buf.extend(chunk)
            if len(buf) > limit:
                raise ServiceError(413, f"body is over the {limit} byte limit")

    try:
        await asyncio.wait_for(read_all(), timeout=deadline_s)
    except TimeoutError:
        raise ServiceError(408, f"the body did not arrive within {deadline_s:g} s ({len(buf)} bytes came)") from None
    return bytes(buf)


async def upload_bytes(request: Request, body: bytes) -> bytes:
    """Raw body, or the first file field of a multipart form (field name 'image' or 'file' preferred)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        return body
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def once():
        yield body

    try:
        form = await MultiPartParser(request.headers, once(), max_files=4, max_fields=16).parse()
    except MultiPartException as e:
        raise ServiceError(422, f"bad multipart body: {e.message}") from None
    files = [(k, v) for k, v in form.multi_items() if hasattr(v, "read")]
    if not files:
        raise ServiceError(422, "multipart body has no file field; send the image as field 'image'")
    files.sort(key=lambda kv: kv[0] not in ("image", "file"))
    return await files[0][1].read()


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match as RFC 9110 compares for GET/HEAD: weakly (W/ ignored), '*' matches anything."""
    tags = [t.strip() for t in header.split(",") if t.strip()]
    bare = etag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == bare for t in tags)


class CropOut(BaseModel):
    ratio: str | None = Field(description="canonical 'W:H' (reduced), null for the free-ratio crop")
    box: list[int] = Field(description="x1, y1, x2, y2 in pixels of the upright (EXIF-applied) photo")
    score: float
    cut_objects: list[list[int]] = Field(description="protected object boxes (faces, people, main objects) the crop cuts through")
    dropped_objects: list[list[int]] = Field(description="protected object boxes the crop leaves out (under 10% inside)")
    faces: int = Field(description="faces found that some candidate of this ratio keeps whole")
    kept_faces: int = Field(description="of those, the faces this crop keeps whole (all of them whenever they fit together)")
    saliency_kept: float | None = Field(default=None, description="share of the photo's saliency mass inside the crop "
                                                                  "(null when the model has no saliency head)")


class RatioError(BaseModel):
    ratio: str | None
    detail: str


class CropsResponse(BaseModel):
    width: int
    height: int
    focal_point: list[int] | None = Field(default=None, description="x, y: where any crop of the photo should be centred "
                                                                      "(the caller's focus, else the most prominent face, ...)")
    safe_box: list[int] | None = Field(default=None, description="x1, y1, x2, y2: the smallest box holding what must be kept "
                                                                 "(keep boxes, focus, protected faces); null when nothing must")
    crops: list[CropOut]
    errors: list[RatioError] = Field(default=[], description="one per asked ratio the photo is too small to hold "
                                                            "(the other ratios are still cropped; 422 when none fits)")
    model_version: str
    timing_ms: dict[str, float]


class Health(BaseModel):
    status: str
    model_version: str


class ErrorBody(BaseModel):
    detail: str = Field(description="the reason in words")


ERROR_RESPONSES = {code: {"model": ErrorBody, "description": what} for code, what in {
    400: "bad key", 404: "no such object", 408: "upload too slow", 413: "body or image too large",
    415: "not an image", 422: "bad parameter or corrupt image", 502: "object store failed",
    503: "not configured or overloaded", 504: "object store timed out"}.items()}
IMAGE_BODY = {"requestBody": {"required": True, "description": "the photo: raw bytes, or a multipart form field 'image'",
                              "content": {"image/*": {"schema": {"type": "string", "format": "binary"}},
                                          "multipart/form-data": {"schema": {"type": "object", "properties": {
                                              "image": {"type": "string", "format": "binary"}}}}}}}
THUMBNAIL_BODY = {"description": "the thumbnail", "content": {"image/jpeg": {}, "image/webp": {}}}


def build_app(service: CropService, crop: CropFn | None = None) -> FastAPI:
    crop = crop or direct_crop(service)
    s = service.settings
    # Object-store calls get their own bounded pool and an overall deadline: a store that never
    # answers costs a thumbnail request seconds (504) and never the threads decoding uploads.
    store_pool = ThreadPoolExecutor(s.store_threads, thread_name_prefix="store")
    # Decodes in flight per replica: a photo within max_pixels may still take ~200 MB decoded, so
    # sixteen clients asking for one large photo wait their turn instead of holding sixteen copies.
    decodes = asyncio.Semaphore(max(1, s.max_decodes))

    async def decoded(*args) -> LoadedImage:
        async with decodes:
            return await asyncio.to_thread(service.decode, *args)

    async def store_call(fn, *args):
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(store_pool, fn, *args),
                                          timeout=s.store_deadline_s)
        except TimeoutError:
            raise ServiceError(504, f"the object store did not answer within {s.store_deadline_s:g} s") from None
    app = FastAPI(title="ugc-crop", description="S2CNet crops and thumbnails", version="1")
    page_html = PAGE.read_text().replace('/*RATIO_COLOURS*/{"named": {}, "other": ["#ff0000"]}', json.dumps(
        {"named": {r: hex_colour(c) for r, c in RATIO_COLOURS.items()}, "other": [hex_colour(c) for c in OTHER_RATIO_COLOURS]}))

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own checks (a missing or non-integer parameter) answer in the documented shape too."""
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
            problems.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    async def best_crops(src, size: tuple[int, int], ratios: Sequence[str],
                         regions: dict | None = None) -> tuple[list[Crop], int, list[dict]]:
        """The crops of the ratios the photo can hold, the batch size, an error per ratio it cannot."""
        fits, errors = service.fitting(size, ratios)
        found, batch = await crop(src, tuple(fits), regions)
        return found, batch, errors

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict:
        return {"status": "ok", "model_version": service.model_version}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.post("/v1/crops", response_model=CropsResponse, responses=ERROR_RESPONSES, openapi_extra=IMAGE_BODY,
              summary="The best crop per aspect ratio of an uploaded photo")
    async def crops(request: Request, ratios: str | None = Query(
            None, description="comma-separated 'W:H' ratios, 'free' for a free-ratio crop (default: the service's)",
            examples=["1:1,16:9,free"]),
            keep: list[str] = Query([], max_length=200, description="x1,y1,x2,y2 in the photo's pixels: kept whole whenever "
                                    "a crop can, ranked above faces; repeatable (at most 16)"),
            focus: str | None = Query(None, max_length=200, description="x,y in the photo's pixels: inside every crop"),
    ) -> JSONResponse:
        t0 = time.perf_counter()
        wanted = service.parse_ratios(ratios)  # cheap checks before reading the body
        if len(keep) > 16:
            raise ServiceError(422, f"keep is given {len(keep)} times; at most 16 boxes are taken")
        body = await upload_bytes(request, await read_body(request, s.max_body_bytes, s.body_deadline_s))
        t1 = time.perf_counter()
        # Validates (status + reason) and runs the image-only stage (draft-mode decode, faces, model-size
        # pixels); the cropper takes this image and its faces as they are.
        loaded = await decoded(body)
        size = loaded.original_size
        regions = service.parse_regions(keep, focus, size) if keep or focus is not None else None
        t2 = time.perf_counter()
        found, batch, errors = await best_crops(loaded, size, wanted, regions)
        t3 = time.perf_counter()
        timing = {"read": (t1 - t0) * 1e3, "decode": (t2 - t1) * 1e3, "crop": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return JSONResponse(service.crops_body(size, found, service.model_version, timing, errors),
                            headers={"X-Batch-Size": str(batch)})

    @app.api_route("/v1/thumbnail", methods=["GET", "HEAD"], responses={**ERROR_RESPONSES, 200: THUMBNAIL_BODY},
                   summary="A stored photo's crop at one ratio, resized (HEAD: the headers GET would send)")
    async def thumbnail(request: Request, key: str, ratio: str, width: str, format: str = "jpeg") -> Response:
        ratio = service.parse_ratio(ratio)
        width = service.parse_width(width)
        _, media_type = service.thumbnail_format(format)
        service.thumbnail_size(ratio, width)
        service.check_key(key)
        source_etag = await store_call(service.reader.head, key)
        etag = service.thumbnail_etag(key, source_etag, ratio, width, format)
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={s.cache_max_age}"}
        # A 304 vouches that the thumbnail exists: only once a GET has made one from this very object
        # (its box is cached under the object's ETag); a broken object never gets one, so a CDN never
        # caches a thumbnail that does not exist.
        made = service.cached_box(key, source_etag, ratio) is not None
        if made and etag_matches(request.headers.get("if-none-match", ""), etag):
            return Response(status_code=304, headers=headers)
        obj = await store_call(service.reader.get, key)
        if obj.etag != source_etag:  # replaced between HEAD and GET: describe what we serve
            headers["ETag"] = service.thumbnail_etag(key, obj.etag, ratio, width, format)
        box = service.cached_box(key, obj.etag, ratio)
        if box is None:
            # the image-only stage, exactly as for POST /v1/crops: same photo, same box
            loaded = await decoded(obj.data, False, True)
            box = (await best_crops(loaded, loaded.original_size, [ratio]))[0][0].box
            service.remember_box(key, obj.etag, ratio, box)
        # then a decode no larger than this thumbnail needs (JPEG draft mode), never the full 60 MP
        source = await decoded(obj.data, True, True, service.thumbnail_decode_size(obj.data, box, width))
        data = await asyncio.to_thread(service.render_thumbnail, source, box, ratio, width, format)
        if request.method == "HEAD":  # RFC 9110: the headers a GET would send, its length included
            return Response(status_code=200, media_type=media_type, headers={**headers, "Content-Length": str(len(data))})
        return Response(data, media_type=media_type, headers=headers)

    return app
