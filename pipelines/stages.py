"""The batch job's three stages as plain Python over Arrow tables; Ray Data only schedules them.

    fetch_and_decode (CPU)  ->  CropWorker (GPU or CPU actor, one Cropper)  ->  finish (CPU)
    work rows                   DECODED: model-size pixels per photo            CROPPED: crops per photo
                                                                                -> output rows (SCHEMA)

On a GPU cluster the first and last stages run as CPU tasks (Ray's batch-inference shape), so the
GPU never waits on S3 reads, JPEG decoding or thumbnail encoding; on CPU-only clusters the actor runs
all three itself, which saves the object-store round trips. Either way the functions are the same,
so the rows are the same. Every per-photo failure becomes an error row, never a failed task.
"""

from __future__ import annotations

import collections
import datetime
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines.config import JobConfig
from pipelines.photos import (
    SCHEMA,
    PhotoError,
    crop_row,
    crop_safely,
    decode,
    error_kind,
    error_row,
    open_photo,
    reason,
    rows_table,
    thumbnail_jpeg,
    thumbnail_path,
)
from pipelines.storage import Location, read_bytes, write_bytes
from s2cnet.imageio import LoadedImage

WORK = pa.schema([("key", pa.string()), ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                  ("etag", pa.string()), ("ratios", pa.list_(pa.string())),
                  ("regions", pa.string())])  # the caller's {"keep": ..., "focus": ...} as JSON, or null
# One row per photo after fetch_and_decode: the pixels the model reads (already reduced to what its
# input size needs), the upright full size, and the file's bytes only when thumbnails are wanted.
DECODED = pa.schema([*WORK, ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()),
                     ("pixels", pa.binary()), ("pixel_width", pa.int32()), ("pixel_height", pa.int32()),
                     ("faces", pa.list_(pa.float32())),  # x1, y1, x2, y2, score per face (full-size px); null: not run
                     ("source", pa.large_binary()), ("error_kind", pa.string()), ("error", pa.string())])
# One row per photo after the model: its output rows (nested), and the bytes the thumbnails need.
RUN_COLUMNS = ("source_size", "source_mtime_ns", "source_etag", "run_id", "processed_at")
CROPPED = pa.schema([("key", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("etag", pa.string()),
                     ("source", pa.large_binary()),
                     ("rows", pa.list_(pa.struct([f for f in SCHEMA if f.name not in RUN_COLUMNS])))])


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a stage needs, small and picklable (no filesystems, no credentials): the job's own
    settings plus what the driver decided for this run."""

    job: JobConfig
    run_id: str = ""
    progress: object = None  # a pipelines.progress.Counter actor handle, or None
    torch_threads: int = 1
    io_threads: int = 8
    use_gpu: bool = False
    short_side: int = 256  # the model's input short side: photos are decoded no larger than it needs
    faces: bool = True  # the image-only stage runs the shipped face detector (the Cropper then takes its faces)
    in_actor: bool = True  # the actor also fetches, decodes and finishes (CPU-only clusters)


@functools.lru_cache(maxsize=8)
def _filesystem(uri: str, endpoint_url: str | None):
    """One filesystem per process and location (on AWS, building one can resolve the bucket's region)."""
    return Location(uri, endpoint_url).filesystem()


def _fetch_one(item: dict, spec: WorkerSpec) -> dict:
    job = spec.job
    out = {**item, "width": None, "height": None, "format": None, "pixels": None, "pixel_width": None,
           "pixel_height": None, "faces": None, "source": None, "error_kind": None, "error": None}
    try:
        if item["size"] > job.max_bytes:  # the listing's size: nothing is read
            raise PhotoError("too_large", f"too large: {item['size']} bytes exceeds the limit of {job.max_bytes}")
        try:
            data = read_bytes(_filesystem(job.input, job.endpoint_url), item["path"])
        except Exception as e:
            raise PhotoError("read", f"read: {reason(e)}") from e
        # decoded as the Cropper decodes any upload (JPEG draft mode), so a crop never depends on
        # whether thumbnails were asked for; their bytes travel on beside the pixels
        photo = open_photo(data, job.max_pixels, spec.short_side, faces=spec.faces)
        image = photo.image if photo.image.mode == "RGB" else photo.image.convert("RGB")
        faces = None if photo.faces is None else np.c_[photo.faces[0], photo.faces[1]].astype(np.float32).ravel().tolist()
        out.update(width=photo.original_size[0], height=photo.original_size[1], format=photo.format,
                   pixels=image.tobytes(), pixel_width=image.width, pixel_height=image.height, faces=faces,
                   source=data if job.thumbnails else None)
    except Exception as e:
        out.update(error_kind=error_kind(e), error=reason(e))
    return out


def fetch_and_decode(batch: pa.Table, spec: WorkerSpec) -> pa.Table:
    """WORK rows -> DECODED rows; reads run on threads (pyarrow and PIL release the GIL)."""
    items = batch.to_pylist()
    with ThreadPoolExecutor(max(1, min(spec.io_threads, len(items)))) as pool:
        return pa.Table.from_pylist(list(pool.map(lambda item: _fetch_one(item, spec), items)), schema=DECODED)


def loaded_image(row: dict, with_faces: bool = True) -> LoadedImage:
    """A DECODED row's photo as the Cropper's image-only stage would have returned it (``with_faces=False``:
    without the faces, for a Cropper that has no face detector)."""
    image = Image.frombytes("RGB", (row["pixel_width"], row["pixel_height"]), row["pixels"])
    faces = None
    if with_faces and row.get("faces") is not None:
        f = np.asarray(row["faces"], np.float32).reshape(-1, 5)
        faces = (f[:, :4].copy(), f[:, 4].copy())
    return LoadedImage(image, (row["width"], row["height"]), row["format"], faces)


class CropWorker:
    """One Cropper per actor: DECODED (or, with ``spec.in_actor``, WORK) rows -> CROPPED (or output) rows."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        torch.set_num_threads(max(1, spec.torch_threads))
        self.spec = spec
        self.cropper = spec.job.model.build()
        if spec.use_gpu:  # Ray gave this actor a GPU (num_gpus): no GPU here is a setup error, not a CPU fallback
            self.cropper.to("cuda")
        if self.cropper.short_side != spec.short_side:
            raise ValueError(f"the model reads {self.cropper.short_side}-px photos; the job decodes them for {spec.short_side}")
        self.version = self.cropper.model_version
        self.finisher = Finisher(spec) if spec.in_actor else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.finisher is not None:
            batch = fetch_and_decode(batch, self.spec)
        cropped = self.crop(batch)
        return self.finisher(cropped) if self.finisher is not None else cropped

    def crop(self, batch: pa.Table) -> pa.Table:
        """DECODED -> CROPPED: photos that share a ratio list go through ``crop_batch`` together."""
        photos = batch.to_pylist()
        rows: list[list[dict]] = [[] for _ in photos]
        by_ratios: dict[tuple, list[int]] = collections.defaultdict(list)
        for i, p in enumerate(photos):
            if p["error_kind"] is not None:
                size = (p["width"], p["height"]) if p["width"] is not None else None
                rows[i].append(error_row(p["key"], p["error_kind"], p["error"], self.version, size))
            else:
                by_ratios[tuple(p["ratios"])].append(i)
        for ratios, idx in by_ratios.items():
            images = [loaded_image(photos[i], self.cropper.face_detector is not None) for i in idx]
            regions = [json.loads(photos[i]["regions"]) if photos[i].get("regions") else None for i in idx]
            for i, image, crops in zip(idx, images, crop_safely(self.cropper.crop_batch, images, ratios, regions)):
                key, size = photos[i]["key"], image.original_size
                for r, c in zip(ratios, crops):
                    rows[i].append(error_row(key, "crop", c, self.version, size, ratio=r) if isinstance(c, str)
                                   else crop_row(key, size, r, c, self.version))
        return pa.Table.from_pylist([{"key": p["key"], "size": p["size"], "mtime_ns": p["mtime_ns"], "etag": p.get("etag"),
                                      "source": p["source"], "rows": r} for p, r in zip(photos, rows)], schema=CROPPED)


class Finisher:
    """CROPPED -> output rows: thumbnails written (one full-size decode per photo serves all its
    ratios), run columns filled in, progress reported."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        job = spec.job
        self.thumbs = Location(job.thumbnails, job.endpoint_url) if job.thumbnails else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        photos = batch.to_pylist()
        if self.thumbs is not None:
            with ThreadPoolExecutor(max(1, min(self.spec.io_threads, len(photos)))) as pool:
                list(pool.map(self._thumbnails, photos))
        now = datetime.datetime.now(datetime.UTC)
        out = []
        for p in photos:
            for row in p["rows"]:
                row.update(source_size=p["size"], source_mtime_ns=p["mtime_ns"], source_etag=p.get("etag"),
                           run_id=self.spec.run_id, processed_at=now)
                out.append(row)
        if self.spec.progress is not None:  # fire and forget: progress never slows the batch
            failed = {r["key"] for r in out if r["error_kind"] is not None}
            self.spec.progress.add.remote(len(photos), len(failed))
        return rows_table(out)

    def _thumbnails(self, photo: dict) -> None:
        """Writes the photo's thumbnails and records each one's URI, or its error, in its row."""
        wanted = [r for r in photo["rows"] if r["error_kind"] is None and r["ratio"] is not None]
        if not wanted or photo["source"] is None:
            return
        try:
            image = decode(photo["source"], self.spec.job.max_pixels)
        except Exception as e:
            for r in wanted:
                r["error_kind"], r["error"] = "thumbnail", f"thumbnail: {reason(e)}"
            return
        fs = _filesystem(self.spec.job.thumbnails, self.spec.job.endpoint_url)
        for r in wanted:
            try:
                box = (r["x1"], r["y1"], r["x2"], r["y2"])
                write_bytes(fs, thumbnail_path(self.thumbs.root, r["key"], r["ratio"]),
                            thumbnail_jpeg(image, box, self.spec.job.thumb_width), "image/jpeg")
                r["thumbnail"] = self.thumbs.uri_of(r["key"], r["ratio"])
            except PhotoError as e:  # a key that cannot name a thumbnail: not the store's fault, not retried
                r["error_kind"], r["error"] = e.kind, f"thumbnail: {reason(e)}"
            except Exception as e:
                r["error_kind"], r["error"] = "thumbnail", f"thumbnail: {reason(e)}"


def finish(batch: pa.Table, spec: WorkerSpec) -> pa.Table:
    """The last stage as a Ray Data task (a function: no state worth an actor)."""
    return Finisher(spec)(batch)
