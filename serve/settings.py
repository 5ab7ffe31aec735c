"""Service configuration: serve-config ``args`` first, then ``UGC_SERVE_*`` env vars, then defaults.

One place, so ``serve run``, ``serve deploy``, the tests and the benchmark configure it alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from s2cnet.imageio import DEFAULT_MAX_PIXELS

ENV_PREFIX = "UGC_SERVE_"


@dataclass(frozen=True)
class Settings:
    bucket: str = ""  # thumbnails are read from this bucket only; empty disables /v1/thumbnail
    prefix: str = ""  # ... and only under this key prefix ("photos/" -> keys must start "photos/")
    endpoint_url: str | None = None  # S3 endpoint (SeaweedFS, MinIO); None: AWS
    region: str = "us-east-1"
    access_key: str | None = None  # None: boto3's default credential chain (AWS_* env vars, roles)
    secret_key: str | None = None
    max_body_bytes: int = 20 * 1024 * 1024  # POST body / stored object limit -> 413
    body_deadline_s: float = 10.0  # an upload must arrive whole within this -> else 408
    max_pixels: int = DEFAULT_MAX_PIXELS  # header-claimed pixel limit -> 413 (decompression bombs)
    max_ratios: int = 8
    default_ratios: str = "1:1,16:9"
    max_thumbnail_width: int = 4096
    # Widths a thumbnail may have, comma-separated ("" allows any 1..max_thumbnail_width): each distinct
    # width is a render and a cache entry, so an open range lets a client make unbounded work.
    thumbnail_widths: str = "64,96,128,160,200,240,256,320,360,400,480,512,640,720,768,800,960,1024,1080,1280,1440,1600,1920,2048"
    cache_max_age: int = 86400  # Cache-Control max-age for thumbnails, seconds
    weights: str = ""  # "" -> Cropper.from_pretrained(); a path; "random" -> untrained model (dev/tests only)
    proposals: bool = True  # object proposals (needs saliency weights); False -> no object nodes
    torch_threads: int = 1  # per replica; replicas, not threads, use the other cores
    device: str = ""  # "" -> CPU; "cuda" on GPU workers (give the model deployment num_gpus in config.yaml)
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.005
    box_cache_size: int = 2048  # thumbnail crop boxes remembered per replica (per object ETag + ratio)
    store_threads: int = 8  # object-store calls in flight per replica (their own pool, apart from decoding)
    store_deadline_s: float = 8.0  # a thumbnail's store call fails with 504 past this
    max_decodes: int = 2  # image decodes in flight per replica (each may hold a 64 MP photo, ~200 MB); the rest wait

    def allowed_widths(self) -> tuple[int, ...]:
        """The thumbnail width allow-list, empty when any width is allowed."""
        return tuple(sorted({int(w) for w in self.thumbnail_widths.split(",") if w.strip()}))

    @classmethod
    def load(cls, args: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
        """``args`` (serve config / ``bind`` kwargs) win over ``UGC_SERVE_<NAME>`` env vars."""
        args = dict(args or {})
        env = os.environ if env is None else env
        unknown = set(args) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown serve settings: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = args.get(f.name, env.get(ENV_PREFIX + f.name.upper()))
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, raw, type(getattr(cls, f.name)) if getattr(cls, f.name) is not None else str)
        return cls(**values)


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if kind is bool and isinstance(raw, str):
        if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
            raise ValueError(f"setting {name} must be a boolean, got {raw!r}")
        return raw.lower() in {"1", "true", "yes"}
    try:
        return kind(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"setting {name} must be {kind.__name__}, got {raw!r}") from e
