"""The batch job as Ray Data glue: list photos -> fetch and decode -> Cropper.crop_batch on an actor pool
-> thumbnails -> Parquet. The stages themselves are plain Python in ``pipelines.stages``.

    summary = run(JobConfig(input="s3://photos/2024/", output="s3://photos/crops/", ratios=["1:1", "16:9"]))

Nothing is lost: the driver lists every input key, plans the (key, ratio) pairs not yet in the
output (``resume``), and after the write reads the output back to check that every planned key
now has exactly one row per ratio (or one whole-photo error row) and that no pair is duplicated.
Photo bytes are fetched by the job's own stage (never by a Ray Data read task), so one unreadable
object becomes an error row rather than a failed read.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from pipelines.config import JobConfig, ModelSpec, option_problems
from pipelines.lease import Lease, LeaseHeld, owner_name
from pipelines.photos import SCHEMA, TRANSIENT_KINDS
from pipelines.progress import Counter, ProgressReporter
from pipelines.stages import WORK, CropWorker, WorkerSpec, fetch_and_decode, finish
from pipelines.storage import (
    InputFile,
    Location,
    delete_job_output,
    delete_thumbnails,
    drop_keys,
    list_inputs,
    read_bytes,
    read_output,
    write_bytes,
)
from s2cnet.candidates import canonical_ratio


class OutputExistsError(RuntimeError):
    pass


class StartupError(RuntimeError):
    """A job that cannot start (bad location, store unreachable, no permission): one line for the user."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def check_locations(cfg: JobConfig) -> list[InputFile]:
    """The input's listing (the job's only one), after refusing, before Ray starts, what would fail or
    loop later: outputs inside the input (a resume would ingest them as photos), an input that cannot
    be listed, outputs that cannot be written."""
    src = Location(cfg.input, cfg.endpoint_url)
    outs = [("--output", Location(cfg.output, cfg.endpoint_url))]
    if cfg.thumbnails:
        outs.append(("--thumbnails", Location(cfg.thumbnails, cfg.endpoint_url)))
    for flag, out in outs:
        a, b = src.root.rstrip("/") + "/", out.root.rstrip("/") + "/"
        if src.is_s3 == out.is_s3 and (a.startswith(b) or b.startswith(a)):
            raise StartupError(f"{flag} {out.uri} overlaps --input {src.uri}: keep outputs outside the photos' prefix")
    try:
        files = list_inputs(src)
    except Exception as e:
        raise StartupError(f"cannot list --input {src.uri} ({_one_line(e)})") from None
    for flag, out in outs:
        probe = out.join(f".ugc-crop-write-check-{os.getpid()}")
        try:
            fs = out.filesystem()
            existed = fs.get_file_info(out.root).type != pafs.FileType.NotFound
            write_bytes(fs, probe, b"")
            fs.delete_file(probe)
            if not existed:  # pyarrow leaves a folder marker behind on S3: leave the store as it was
                fs.delete_dir(out.root)
        except Exception as e:
            raise StartupError(f"cannot write to {flag} {out.uri} ({_one_line(e)})") from None
    return files


AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
           "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def aws_env() -> dict[str, str]:
    """The driver's AWS_* settings: with an S3-compatible store they are how workers reach it."""
    return {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}


def _env_to_forward(cfg: JobConfig, started_here: bool) -> dict[str, str]:
    """AWS_* variables the workers may lack: none when this driver started Ray (workers inherit its
    environment) or the job's runtime_env already carries them; a per-task runtime_env costs fresh
    worker processes, so it is used only when needed."""
    import ray

    env = aws_env() if cfg.forward_aws_env else {}
    if started_here or not env:
        return {}
    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
    return {} if all(job_env.get(k) == v for k, v in env.items()) else env


def normalize_ratios(ratios: list[str] | str) -> list[str]:
    """Validated ratios in their one canonical form ('8:6' -> '4:3'), duplicates dropped, order kept."""
    items = ratios.split(",") if isinstance(ratios, str) else list(ratios)
    out: list[str] = []
    for r in (canonical_ratio(s.strip()) for s in items if s.strip()):
        if r not in out:
            out.append(r)
    if not out:
        raise ValueError("at least one ratio is required")
    return out


# -- planning and checking ---------------------------------------------------------------------------
PLAN_COLUMNS = ["key", "ratio", "error_kind", "source_size", "source_mtime_ns", "source_etag", "model_version", "thumbnail"]


def existing_rows(output: Location, drop_unreadable: bool = False) -> dict[str, list[dict]]:
    """key -> its rows already in the output (planning columns only; older outputs lack some)."""
    table = read_output(output, PLAN_COLUMNS, drop_unreadable=drop_unreadable, missing_ok=True)
    done: dict[str, list[dict]] = collections.defaultdict(list)
    for row in table.to_pylist():
        done[row["key"]].append(row)
    return done


def stale(rows: list[dict], f: InputFile, model_version: str | None, retry_errors: bool) -> bool:
    """True when a key's rows must all be made again: its photo changed (its ETag where the store gives
    one, else its size or mtime), other weights made them, or one holds a transient error (any error
    with ``retry_errors``)."""
    for r in rows:
        if f.etag is not None and r.get("source_etag") is not None:
            if r["source_etag"] != f.etag:  # an in-place edit that keeps size and mtime still changes it
                return True
        elif r.get("source_size") is not None and (r["source_size"], r.get("source_mtime_ns")) != (f.size, f.mtime_ns):
            return True
        if model_version is not None and r.get("model_version") not in (None, model_version):
            return True
        kind = r.get("error_kind")
        if kind is not None and (retry_errors or kind in TRANSIENT_KINDS):
            return True
    return False


def plan(files: list[InputFile], done: dict[str, list[dict]], ratios: list[str], limit: int | None,
         model_version: str | None = None, retry_errors: bool = False) -> tuple[list, int, set[str]]:
    """(work items, photos skipped as current, keys whose old rows must go): per key only the ratios
    it still lacks, or all of them when its rows are stale."""
    work, skipped, redo = [], 0, set()
    for f in files:
        rows = done.get(f.key, [])
        if rows and stale(rows, f, model_version, retry_errors):
            redo.add(f.key)
            todo = list(ratios)
        else:
            have = {r["ratio"] for r in rows}
            todo = [] if None in have else [r for r in ratios if r not in have]
        if not todo:
            skipped += 1
            continue
        work.append((f, todo))
        if limit is not None and len(work) >= limit:
            break
    return work, skipped, redo & {f.key for f, _ in work}


@dataclass
class Summary:
    listed: int
    skipped: int  # already complete in the output (resume)
    planned: int
    ok: int  # planned photos with no error row
    failed: int  # planned photos with at least one error row
    rows: int  # rows this run wrote (its planned (photo, ratio) pairs and whole-photo error rows)
    missing: list[str]  # planned keys that still lack a ratio: must be empty
    duplicates: int  # (key, ratio) pairs present more than once: must be 0
    seconds: float
    errors: collections.Counter
    output: str
    max_error_rate: float = 1.0
    removed: int = 0  # photos no longer in the input whose rows and thumbnails this run removed (takedowns)

    @property
    def error_rate(self) -> float:
        return self.failed / self.planned if self.planned else 0.0

    @property
    def too_many_errors(self) -> bool:
        """More photos failed than the job allows (--max-error-rate): the run is not a success."""
        return self.error_rate > self.max_error_rate

    @property
    def photos_per_s(self) -> float:
        return self.planned / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return not self.missing and self.duplicates == 0

    def line(self) -> str:
        status = "complete" if self.complete else f"INCOMPLETE: {len(self.missing)} missing, {self.duplicates} duplicated"
        if self.complete and self.too_many_errors:
            status = (f"FAILED: {self.failed} of {self.planned} photos failed ({self.error_rate:.0%}), "
                      f"over --max-error-rate {self.max_error_rate:.0%}")
        return (f"crop_bucket: {self.planned} photos ({self.ok} ok, {self.failed} failed), {self.rows} rows -> "
                f"{self.output} in {self.seconds:.1f} s = {self.photos_per_s:.2f} photos/s; "
                f"{self.skipped} already done of {self.listed} listed"
                f"{f'; {self.removed} no longer in the input removed' if self.removed else ''}; {status}")


def check(output: Location, work: list, ratios: list[str]) -> tuple[int, int, int, list[str], int, collections.Counter]:
    """Read the output back: (ok, failed, rows, missing keys, duplicate pairs anywhere in it, error kinds)
    for ``work``.
    ``rows`` counts what this run wrote: rows of the (key, ratio) pairs it planned, and whole-photo error
    rows of its keys, not the rows a resumed key already had (its other ratios)."""
    planned = {f.key for f, _ in work}
    todo = {(f.key, r) for f, rs in work for r in rs}
    table = read_output(output, ["key", "ratio", "error_kind"])
    pairs: collections.Counter = collections.Counter()
    failed_keys, errors = set(), collections.Counter()
    rows = 0
    everywhere: collections.Counter = collections.Counter()
    for k, r, e in zip(*(table.column(c).to_pylist() for c in ("key", "ratio", "error_kind"))):
        everywhere[(k, r)] += 1  # duplicates are looked for in the whole output, not only this run's keys
        if k not in planned:
            continue
        if r is None or (k, r) in todo:  # a planned key's whole-photo error row can only be this run's
            rows += 1
        pairs[(k, r)] += 1
        if e is not None:
            failed_keys.add(k)
            errors[e] += 1
    missing = []
    for k in sorted(planned):
        if pairs.get((k, None)):
            continue
        if any(not pairs.get((k, r)) for r in ratios):
            missing.append(k)
    dups = sum(1 for n in everywhere.values() if n > 1)
    return len(planned) - len(failed_keys), len(failed_keys), rows, missing, dups, errors


# -- the driver ----------------------------------------------------------------------------------------
def _resources(cfg: JobConfig) -> tuple[int, int, float, bool]:
    """(smallest pool, largest pool, GPUs per actor, whether the actors do the I/O stages too). An
    explicit --gpus-per-actor asks for GPUs even when the cluster has none yet: that request is what
    makes the autoscaler add GPU nodes."""
    import ray

    res = ray.cluster_resources()
    gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if res.get("GPU", 0) > 0 else 0.0)
    in_actor = cfg.io_stages == "actors" or (cfg.io_stages == "auto" and gpus == 0)
    if cfg.actors:
        largest = cfg.actors
    elif gpus > 0:
        largest = max(1, int(res.get("GPU", 0) // gpus))
    else:  # CPU actors beside CPU I/O tasks leave those tasks a core
        largest = max(1, int((res.get("CPU", 1) - (0 if in_actor else cfg.cpus_per_io_task)) // cfg.cpus_per_actor))
    return max(1, min(cfg.min_actors, largest)), largest, gpus, in_actor


IO_TASK_MEMORY = 512 * 2**20  # bytes a fetch/decode or finish task reserves (Ray's logical memory resource)

# Ray's core worker logs, at ERROR level, one line per actor pool that Ray Data starts: its actors get
# their code as object references and restart by default (ray-project/ray#53727). Ray Data holds those
# references for the whole run, so restarts work (the tests kill actors mid-run); the line is said
# to be expected where the user sees it, so it is not taken for a failure of the job.
RAY_ACTOR_ARGS_NOTE = ("crop_bucket note: Ray will log one 'E ... core_worker.cc ... has constructor arguments in the object "
                       "store and max_restarts > 0' line for the crop actors: expected, not an error of this job "
                       "(ray-project/ray#53727; actor restarts still work)")


def connect_or_start(address: str | None) -> bool:
    """Connects to the cluster ``address`` (or $RAY_ADDRESS; "auto" is the one running on this machine,
    as on a cluster's head node), shipping the ``pipelines`` package to its workers; else starts a
    Ray of its own, never joining another application's local cluster (a Serve app's, say) by chance.
    True when it started one here (its workers then inherit this driver's environment)."""
    import ray

    import pipelines

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # a shared cluster's workers may lack this checkout: the job's own code travels with it
        ray.init(address=address, runtime_env={"py_modules": [os.path.dirname(pipelines.__file__)]})
        return False
    ray.init(address="local", include_dashboard=False)
    return True


def file_metadata(model: ModelSpec, version: str, ratios: list[str], run_id: str) -> dict[str, str]:
    """Key-value metadata every Parquet file of a run carries (pyarrow: ``ParquetFile(f).schema_arrow.metadata``)."""
    return {"ugc_crop.model_version": version, "ugc_crop.ratios": ",".join(ratios),
            "ugc_crop.run_id": run_id, "ugc_crop.model_card": json.dumps(model.card())}


def work_blocks(work: list, rows_per_block: int, regions: dict[str, str] | None = None) -> list[pa.Table]:
    regions = regions or {}
    table = pa.table({"key": [f.key for f, _ in work], "path": [f.path for f, _ in work],
                      "size": [f.size for f, _ in work], "mtime_ns": [f.mtime_ns for f, _ in work],
                      "etag": [f.etag for f, _ in work],
                      "ratios": [t for _, t in work], "regions": [regions.get(f.key) for f, _ in work]}, schema=WORK)
    return [table.slice(i, rows_per_block) for i in range(0, len(table), rows_per_block)]


def read_regions(cfg: JobConfig) -> dict[str, str]:
    """The ``--regions`` file: key -> {"keep": boxes, "focus": point} as compact JSON. Its syntax is
    checked here, before any Ray work (a StartupError names the line); whether the boxes fit their
    photo is checked per photo (an error row with the reason)."""
    if not cfg.regions:
        return {}
    loc = Location(cfg.regions, cfg.endpoint_url)
    try:
        text = read_bytes(loc.filesystem(), loc.root).decode("utf-8")
    except Exception as e:
        raise StartupError(f"--regions {cfg.regions}: cannot read it ({_one_line(e)})") from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, keep, focus = item["key"], item.get("keep"), item.get("focus")
            ok = isinstance(key, str) and set(item) <= {"key", "keep", "focus"}
            numbers = lambda v, n: isinstance(v, list) and len(v) == n and all(isinstance(x, int | float) for x in v)  # noqa: E731
            ok &= keep is None or (isinstance(keep, list) and all(numbers(b, 4) for b in keep))
            ok &= focus is None or numbers(focus, 2)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise StartupError(f"--regions {cfg.regions} line {n}: expected {{\"key\": str, \"keep\": [[x1, y1, x2, y2], ...], "
                               f"\"focus\": [x, y]}}, got {line[:120]!r}")
        out[key] = json.dumps({"keep": keep, "focus": focus})
    return out


def run(cfg: JobConfig) -> Summary:
    """Run the job on the current Ray cluster (``ray.init()`` is called if needed) and check its output,
    holding the output's lease (``pipelines.lease``) throughout."""
    ratios = normalize_ratios(cfg.ratios)
    problems = option_problems(cfg, runs_on_this_machine(cfg))
    if problems:  # before any listing or Ray: one line, exit 2
        raise StartupError("; ".join(problems))
    files = check_locations(cfg)
    regions = read_regions(cfg)
    out = Location(cfg.output, cfg.endpoint_url)
    now = datetime.datetime.now(datetime.UTC)
    run_id = f"{now:%Y%m%dT%H%M%SZ}-{os.getpid()}"
    lease = Lease(out, owner_name(), run_id)
    try:
        lease.acquire(take_over=cfg.take_over_lease)
    except LeaseHeld as e:
        raise StartupError(str(e)) from None
    with lease:
        return _run_leased(cfg, ratios, files, regions, out, now, run_id)


def runs_on_this_machine(cfg: JobConfig) -> bool:
    """Whether the job's Ray is this machine alone (a Ray it will start, or an in-process one with a
    single node here), so resources must fit this machine; a cluster's autoscaler may add nodes."""
    import ray

    if not ray.is_initialized():
        return not (cfg.ray_address or os.environ.get("RAY_ADDRESS"))
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()


def remove_taken_down(out: Location, thumbs: Location | None, done: dict[str, list[dict]], files: list[InputFile]) -> int:
    """Rows and thumbnails of photos no longer in the input: user content that must disappear. -> photos removed."""
    gone = set(done) - {f.key for f in files}
    if gone:
        uris = [r.get("thumbnail") for k in gone for r in done[k]]
        drop_keys(out, gone)
        if thumbs is not None:
            delete_thumbnails(thumbs, uris)
        for k in gone:
            del done[k]
    return len(gone)


def _run_leased(cfg: JobConfig, ratios: list[str], files: list[InputFile], regions: dict[str, str], out: Location,
                now: datetime.datetime, run_id: str) -> Summary:
    import ray
    import ray.data

    from s2cnet.cropper import DEFAULT_SHORT_SIDE

    thumbs = Location(cfg.thumbnails, cfg.endpoint_url) if cfg.thumbnails else None
    if cfg.overwrite:
        delete_job_output(out, thumbs)
    done = existing_rows(out, drop_unreadable=cfg.resume)
    if done and not cfg.resume:
        raise OutputExistsError(f"{cfg.output} already holds crops of {len(done)} photos: "
                                "pass --resume to add only what is missing, or --overwrite to start again")
    removed = 0 if cfg.keep_deleted else remove_taken_down(out, thumbs, done, files)
    doubled = {k for k, rows in done.items() if len(rows) != len({r["ratio"] for r in rows})}
    if doubled:  # a (key, ratio) written twice (e.g. by two drivers before leases): made again, once
        drop_keys(out, doubled)
        for k in doubled:
            del done[k]
    version = cfg.model.version()  # a hash of the weights file: read once
    work, skipped, redo = plan(files, done, ratios, cfg.limit, version, cfg.retry_errors)
    if redo:  # their old rows go first: a crash now leaves them missing (redone next time), never doubled
        drop_keys(out, redo)
    # every reader of the output (resume, check, drop_keys) lists it recursively, so a partition folder changes nothing else
    target = f"{out.root.rstrip('/')}/processed_date={now:%Y-%m-%d}" if cfg.partition_by_date else out.root
    started_here = False
    if work and not ray.is_initialized():
        started_here = connect_or_start(cfg.ray_address)
    start = time.perf_counter()  # photos/s counts actor start-up, cropping and writing, not Ray's own start
    if work:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours (pipelines.progress) counts photos, not blocks
        counter = ray.remote(num_cpus=0)(Counter).remote() if cfg.progress else None
        if cfg.wait_for_actors_s:
            ctx.wait_for_min_actors_s = int(cfg.wait_for_actors_s)
        smallest, actors, gpus, in_actor = _resources(cfg)
        spec = WorkerSpec(job=cfg, run_id=run_id, progress=counter, torch_threads=max(1, int(cfg.cpus_per_actor)),
                          use_gpu=gpus > 0, short_side=DEFAULT_SHORT_SIDE, in_actor=in_actor,
                          faces=cfg.model.finds_faces())
        # Enough blocks that every actor gets several; at most block_photos photos per output file.
        per_block = max(1, min(cfg.block_photos, math.ceil(len(work) / (actors * 8))))
        ds = ray.data.from_arrow(work_blocks(work, per_block, regions))
        env = _env_to_forward(cfg, started_here)
        runtime_env = {"env_vars": env} if env else None
        # The I/O tasks reserve memory for a block's photo bytes and full-size decodes; asking for a
        # resource the actors do not also keeps Ray Data from fusing them into the actors (it fuses
        # a task stage into the next actor stage whenever their remote arguments are equal).
        io_args = {"batch_size": None, "batch_format": "pyarrow", "fn_kwargs": {"spec": spec}, "num_cpus": cfg.cpus_per_io_task,
                   "memory": IO_TASK_MEMORY, **({"runtime_env": runtime_env} if runtime_env else {})}
        if not in_actor:  # Ray's batch-inference shape: CPU tasks feed the model actors
            ds = ds.map_batches(fetch_and_decode, **io_args)
        ds = ds.map_batches(CropWorker, fn_constructor_kwargs={"spec": spec}, batch_size=cfg.batch_size,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=smallest, max_size=actors),
                            num_cpus=cfg.cpus_per_actor, num_gpus=gpus or None, runtime_env=runtime_env)
        if not in_actor:
            ds = ds.map_batches(finish, **io_args)
        # Writing is I/O: zero-CPU tasks run while the actors hold every core, so crops reach the
        # output as they are made (and survive a crash) instead of piling up until the map ends.
        write_args = {"num_cpus": 0, **({"runtime_env": runtime_env} if runtime_env else {})}
        print(RAY_ACTOR_ARGS_NOTE, file=sys.stderr, flush=True)
        with ProgressReporter(counter, len(work)) if counter is not None else contextlib.nullcontext():
            meta = file_metadata(cfg.model, version, ratios, run_id)
            ds.write_parquet(target, filesystem=out.filesystem(), schema=SCHEMA.with_metadata(meta),
                             ray_remote_args=write_args, min_rows_per_file=cfg.rows_per_file, concurrency=max(2, actors))
    seconds = time.perf_counter() - start
    ok, failed, rows, missing, dups, errors = check(out, work, ratios)
    return Summary(listed=len(files), skipped=skipped, planned=len(work), ok=ok, failed=failed, rows=rows,
                   missing=missing, duplicates=dups, seconds=seconds, errors=errors, output=cfg.output,
                   max_error_rate=cfg.max_error_rate, removed=removed)
