"""The batch job's settings: ``JobConfig`` (each field is also its crop_bucket option) and ``ModelSpec``
(how each actor builds its Cropper). Plain data, imported by the driver (``pipelines.batch``) and the
stages (``pipelines.stages``) alike.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipelines.photos import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ModelSpec:
    """How each actor builds its Cropper; the default is ``Cropper.from_pretrained()``."""

    weights: str | None = None  # None: the weights shipped in the s2cnet package
    proposals: bool = True  # object proposals (saliency); False scores with no object nodes
    untrained_ok: bool = False  # dev/demo only: random (seeded) weights when no weights file exists

    def version(self) -> str:
        """The model version the actors' Croppers will record, known here without building a model."""
        from s2cnet.checkpoint import weights_version
        from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper

        path = Path(self.weights) if self.weights else DEFAULT_WEIGHTS
        return weights_version(path) if path.exists() else Cropper.UNTRAINED_VERSION

    def finds_faces(self) -> bool:
        """Whether the actors' Croppers will have the shipped face detector (so the job's image-only
        stage runs it, as the Cropper would)."""
        from s2cnet.cropper import DEFAULT_WEIGHTS

        return self.proposals and (Path(self.weights) if self.weights else DEFAULT_WEIGHTS).exists()

    def card(self) -> dict:
        """The weight card (JSON beside the weights file) without its training history: what a
        warehouse user needs to know which model made the rows."""
        from s2cnet.cropper import DEFAULT_WEIGHTS

        path = (Path(self.weights) if self.weights else DEFAULT_WEIGHTS).with_suffix(".json")
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        keep = ("config", "init", "training_command", "test_metrics")
        return {k: card[k] for k in keep if k in card} | {"subject_heads": bool(card.get("subject_heads"))}

    def problems(self) -> list[str]:
        """What is wrong with the weights, found on the driver before any actor tries to load them."""
        from s2cnet.checkpoint import load_checkpoint
        from s2cnet.cropper import DEFAULT_WEIGHTS

        path = Path(self.weights) if self.weights else DEFAULT_WEIGHTS
        if not path.exists():
            return [] if self.untrained_ok else [f"--weights: no S2CNet weights at {path} (pass --weights PATH)"]
        try:
            load_checkpoint(path)
        except ValueError as e:  # a directory, a FIFO, a JPEG, another model's file: the loader says which
            return [f"--weights: {e}"]
        return []

    def build(self):
        from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper

        path = Path(self.weights) if self.weights else DEFAULT_WEIGHTS
        if not path.exists():
            if not self.untrained_ok:
                raise FileNotFoundError(f"no S2CNet weights at {path} (pass --weights PATH)")
            warnings.warn(f"no S2CNet weights at {path}: using a seeded random-weight model (demo only)", stacklevel=2)
            return Cropper.untrained()  # seeded: every actor scores with the same random model
        if self.proposals:
            try:
                return Cropper.from_pretrained(path, proposer="default")
            except (ImportError, FileNotFoundError) as e:
                if not self.untrained_ok:
                    raise RuntimeError(f"object proposals unavailable ({e}); pass --no-proposals") from e
                warnings.warn(f"object proposals unavailable ({e}): scoring without object nodes", stacklevel=2)
        return Cropper.from_pretrained(path, proposer=None)


def _opt(default, help: str, flag: str | None = None, **kw):
    """A JobConfig field and its command-line option in one place (crop_bucket builds its parser from these)."""
    factory = kw.pop("default_factory", None)
    meta = {"help": help, "flag": flag, **kw}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


@dataclass
class JobConfig:
    """The batch job's settings; each field's metadata is its crop_bucket option (flag and help)."""

    input: str = _opt(None, "s3://bucket/prefix or a local folder of photos")
    output: str = _opt(None, "s3://bucket/prefix or a local folder: the Parquet dataset")
    ratios: list[str] = _opt(None, "comma-separated W:H aspect ratios",
                             default_factory=lambda: ["1:1", "4:3", "16:9", "9:16"])
    thumbnails: str | None = _opt(None, "write JPEG thumbnails to {THUMBNAILS}/{key}/{W}x{H}.jpg")
    thumb_width: int = _opt(512, "thumbnail width in px (never upscaled)")
    endpoint_url: str | None = _opt(None, "S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    actors: int | None = _opt(None, "the actor pool's largest size (default: one per GPU, else one per CPU, of the "
                                    "cluster as it is now)")
    min_actors: int = _opt(1, "the pool's smallest size; it grows towards --actors as the autoscaler adds nodes")
    gpus_per_actor: float | None = _opt(None, "default: 1 when the cluster has GPUs, else 0")
    cpus_per_actor: float = _opt(1.0, "CPUs each actor holds (its torch threads)")
    cpus_per_io_task: float = _opt(1.0, "CPUs each fetch/decode or thumbnail task holds (with the I/O stages as tasks)")
    io_stages: str = _opt("auto", "where photos are fetched and decoded and thumbnails written: 'tasks' (CPU tasks "
                                  "ahead of and after the model actors, so a GPU never waits on JPEG work), 'actors' "
                                  "(inside them: no object-store round trips), or 'auto' (tasks when the actors hold "
                                  "GPUs)", choices=("auto", "tasks", "actors"))
    regions: str | None = _opt(None, "a JSON Lines file (local path or s3://) of what must stay per photo, one "
                                     "object a line: {\"key\": KEY, \"keep\": [[x1, y1, x2, y2], ...], \"focus\": [x, y]} "
                                     "(full-size pixels; docs/faces.md)")
    batch_size: int = _opt(8, "photos per crop_batch call")
    limit: int | None = _opt(None, "process at most N photos (of those not done yet)")
    resume: bool = _opt(False, "skip (photo, ratio) pairs already in --output; photos changed since, rows of "
                               "other weights and transient errors (read, thumbnail) are done again")
    retry_errors: bool = _opt(False, "with --resume, also redo photos whose rows hold any error")
    max_error_rate: float = _opt(0.05, "exit 1 when more than this share of the photos processed fails")
    overwrite: bool = _opt(False, "remove this job's earlier output first: the Parquet files under --output and the "
                                  "thumbnails their rows name (nothing else there is touched)")
    keep_deleted: bool = _opt(False, "with --resume, keep the rows and thumbnails of photos no longer in --input "
                                     "(by default a resume removes them: takedowns are honoured)")
    take_over_lease: bool = _opt(False, "take over the output's lease from a driver that is gone, before the lease "
                                        "expires by itself")
    model: ModelSpec = _opt(None, "", default_factory=ModelSpec)  # its options: --weights, --no-proposals, --untrained-ok
    max_pixels: int = _opt(DEFAULT_MAX_PIXELS, "larger photos become error rows, refused from their header")
    max_bytes: int = _opt(DEFAULT_MAX_BYTES, "larger objects become error rows without being read")
    block_photos: int = _opt(64, "photos per Ray Data block (per map task), at most")
    rows_per_file: int = _opt(5000, "rows per Parquet file, at least (the last file of a run may hold fewer)")
    partition_by_date: bool = _opt(False, "write each run's files under processed_date=YYYY-MM-DD/ (Hive style: "
                                          "pyarrow, DuckDB and Spark read the date as a column and can prune by it)")
    progress: bool = _opt(True, "no progress bars", flag="--no-progress")
    ray_address: str | None = _opt(None, "Ray cluster to run on: 'auto' (the one on this machine, e.g. a cluster's head) "
                                         "or HOST:PORT (default: $RAY_ADDRESS, else a new local Ray of the job's own)",
                                   flag="--address")
    forward_aws_env: bool = _opt(True, "do not pass this shell's AWS_* variables to the Ray workers",
                                 flag="--no-forward-aws-env")
    wait_for_actors_s: float | None = _opt(None, "start cropping only once all actors are up (default: as soon as one is)",
                                           flag="--wait-for-actors")


def flag(name: str) -> str:
    """The crop_bucket option of a JobConfig field (or of any other option name): its own flag, else --name-with-dashes."""
    own = next((f.metadata.get("flag") for f in fields(JobConfig) if f.name == name), None)
    return own or "--" + name.replace("_", "-")


POSITIVE = ("batch_size", "rows_per_file", "thumb_width", "block_photos", "max_pixels", "max_bytes", "min_actors")


def option_problems(cfg: JobConfig, local: bool) -> list[str]:
    """Every bad option, in words, found before Ray starts (an empty list: the job can start).
    ``local``: the job will run on a Ray it starts on this machine, so resources must fit here."""
    import math
    import os

    out = []
    for name in POSITIVE:
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            out.append(f"{flag(name)} must be a whole number of at least 1, got {v!r}")
    for name in ("actors", "limit"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            out.append(f"{flag(name)} must be a whole number of at least 1, got {v!r}")
    for name in ("cpus_per_actor", "cpus_per_io_task"):
        v = getattr(cfg, name)
        if not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            out.append(f"{flag(name)} must be a number above 0, got {v!r}")
        elif local and v > (os.cpu_count() or 1):
            out.append(f"{flag(name)} {v:g} is more than this machine's {os.cpu_count()} CPUs: no worker could start")
    gpus = cfg.gpus_per_actor
    if gpus is not None and (not math.isfinite(gpus) or gpus < 0):
        out.append(f"--gpus-per-actor must be 0 or more, got {gpus!r}")
    elif gpus and local:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() < math.ceil(gpus):
            out.append(f"--gpus-per-actor {gpus:g} asks for GPUs this machine does not have (torch sees "
                       f"{torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    rate = cfg.max_error_rate
    if not isinstance(rate, int | float) or not math.isfinite(rate) or not 0 <= rate <= 1:
        out.append(f"--max-error-rate must be a share between 0 and 1, got {rate!r}")
    if cfg.wait_for_actors_s is not None and not (math.isfinite(cfg.wait_for_actors_s) and cfg.wait_for_actors_s > 0):
        out.append(f"--wait-for-actors must be a number of seconds above 0, got {cfg.wait_for_actors_s!r}")
    if cfg.resume and cfg.overwrite:
        out.append("--resume and --overwrite contradict each other: give one")
    out += cfg.model.problems()
    return out
