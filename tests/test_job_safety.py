"""The batch job a platform can trust: one writer per output, takedowns, ETag changes, safe keys, a scoped
--overwrite and a whole-output duplicate check."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_files import model_for_tests

from pipelines.batch import StartupError, run, stale
from pipelines.config import JobConfig
from pipelines.lease import LEASE_NAME, Lease, LeaseHeld
from pipelines.photos import SCHEMA, PhotoError, thumbnail_path
from pipelines.storage import InputFile, Location, list_inputs, parquet_files, read_output


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_for_tests(tmp_path_factory.mktemp("model"))


def photos(folder, n: int = 3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (320 + 20 * i, 240), (40 * i, 90, 160)).save(folder / f"{i}.jpg")


def local_job(tmp_path, model, **kw) -> JobConfig:
    kw = {"thumbnails": str(tmp_path / "thumbs"), **kw}
    return JobConfig(input=str(tmp_path / "photos"), output=str(tmp_path / "crops"), ratios=["1:1", "16:9"],
                     model=model[0], actors=1, progress=False, **kw)


def pairs(out) -> list[tuple]:
    rows = read_output(Location(str(out)), ["key", "ratio"]).to_pylist()
    return sorted((r["key"], r["ratio"]) for r in rows)


# -- options -------------------------------------------------------------------------------------------
BAD_OPTIONS = [(["--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
               (["--rows-per-file", "0"], "--rows-per-file must be"), (["--thumb-width", "0"], "--thumb-width must be"),
               (["--actors", "-3"], "--actors must be"), (["--limit", "0"], "--limit must be"),
               (["--cpus-per-actor", "0"], "--cpus-per-actor must be a number above 0"),
               (["--cpus-per-actor", "64"], "more than this machine's"),
               (["--max-error-rate", "nan"], "--max-error-rate must be a share between 0 and 1"),
               (["--max-error-rate", "1.5"], "--max-error-rate must be"),
               (["--weights", "missing.pt"], "no S2CNet weights at missing.pt"),
               (["--weights", "PHOTO"], "is not an S2CNet weights file"),
               (["--resume", "--overwrite"], "contradict")]


@pytest.mark.parametrize("argv,says", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_exits_2_with_one_line_before_ray(tmp_path, capsys, argv, says):
    import ray

    from pipelines.crop_bucket import main

    photos(tmp_path / "photos", 1)
    argv = [str(tmp_path / "photos" / "0.jpg") if a == "PHOTO" else a for a in argv]
    had_ray = ray.is_initialized()
    code = main(["--input", str(tmp_path / "photos"), "--output", str(tmp_path / "crops"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err
    assert ray.is_initialized() == had_ray  # refused before any Ray
    assert not (tmp_path / "crops").exists()  # and before the output was touched


def test_resources_this_machine_lacks_are_refused_with_ray_already_up_here(ray_session, tmp_path, capsys):
    """An in-process Ray on this machine alone (as in a notebook) is this machine: nothing would ever fit."""
    from pipelines.crop_bucket import main

    photos(tmp_path / "photos", 1)
    code = main(["--input", str(tmp_path / "photos"), "--output", str(tmp_path / "crops"), "--no-progress",
                 "--cpus-per-actor", "64"])
    assert code == 2 and "more than this machine's" in capsys.readouterr().err


def test_a_gpu_this_machine_lacks_is_refused_for_a_local_run(model):
    import torch

    from pipelines.config import option_problems

    cfg = JobConfig(input="in", output="out", gpus_per_actor=1, model=model[0])
    problems = option_problems(cfg, local=True)
    assert bool(problems) != torch.cuda.is_available(), problems
    assert option_problems(cfg, local=False) == []  # a cluster's autoscaler may add GPU nodes


# -- the lease -----------------------------------------------------------------------------------------
def test_a_live_lease_refuses_a_second_writer_and_an_expired_one_is_taken(tmp_path):
    out = Location(str(tmp_path / "crops"))
    first = Lease(out, "host:1", "run-1", ttl_s=60)
    first.acquire(settle_s=0)
    held = json.loads((tmp_path / "crops" / LEASE_NAME).read_text())
    assert held["owner"] == "host:1" and held["run_id"] == "run-1" and held["expires_unix"] > time.time() + 50
    with pytest.raises(LeaseHeld, match="being written by host:1 .*--take-over-lease"):
        Lease(out, "host:2", "run-2").acquire(settle_s=0)
    taker = Lease(out, "host:2", "run-2")
    taker.acquire(take_over=True, settle_s=0)  # the flag takes a live lease over
    first.release()  # no longer the holder: leaves the taker's lease alone
    assert json.loads((tmp_path / "crops" / LEASE_NAME).read_text())["run_id"] == "run-2"
    taker.release()
    assert not (tmp_path / "crops" / LEASE_NAME).exists()
    stale_lease = Lease(out, "host:3", "run-3", ttl_s=0.01)
    stale_lease.acquire(settle_s=0)
    stale_lease._stop.set()  # its driver "dies": no more renewals
    time.sleep(0.05)
    Lease(out, "host:4", "run-4").acquire(settle_s=0)  # expired: taken without the flag


def test_a_second_driver_on_a_leased_output_stops_before_ray(tmp_path, model):
    photos(tmp_path / "photos")
    holder = Lease(Location(str(tmp_path / "crops")), "elsewhere:7", "run-x")
    holder.acquire(settle_s=0)
    try:
        with pytest.raises(StartupError, match="being written by elsewhere:7"):
            run(local_job(tmp_path, model))
    finally:
        holder.release()
    assert not (tmp_path / "crops").exists() or not parquet_files(Location(str(tmp_path / "crops")),
                                                                  Location(str(tmp_path)).filesystem())


# -- change detection and keys -------------------------------------------------------------------------
def test_an_etag_change_is_a_change_whatever_size_and_mtime_say():
    row = [{"key": "a", "ratio": "1:1", "error_kind": None, "source_size": 10, "source_mtime_ns": 5,
            "source_etag": "abc", "model_version": "m"}]
    assert not stale(row, InputFile("a", "a", 10, 5, "abc"), "m", False)
    assert stale(row, InputFile("a", "a", 10, 5, "abd"), "m", False)  # same size, same mtime, new content
    assert not stale(row, InputFile("a", "a", 11, 9, "abc"), "m", False)  # the ETag decides where there is one
    assert stale(row, InputFile("a", "a", 11, 5, None), "m", False)  # no ETag (local disk): size and mtime


def test_keys_that_would_leave_the_thumbnails_root_are_refused():
    assert thumbnail_path("/t", "in/a.jpg", "1:1") == "/t/in/a.jpg/1x1.jpg"
    for key in ("in/../../escape/evil.jpg", "../x.jpg", "in/./a.jpg", "in//a.jpg", "/abs.jpg", ".."):
        with pytest.raises(PhotoError) as e:
            thumbnail_path("/t", key, "1:1")
        assert e.value.kind == "key"


def test_an_escaping_key_gets_an_error_row_and_no_file_outside_the_thumbnails_root(tmp_path):
    """S3 allows ``..`` in keys (SeaweedFS, the test store, refuses them): the thumbnail stage is fed one."""
    import io

    from pipelines.stages import Finisher, WorkerSpec

    thumbs = tmp_path / "deep" / "thumbs"
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), "gray").save(buf, "JPEG")
    job = JobConfig(input=str(tmp_path), output=str(tmp_path / "crops"), thumbnails=str(thumbs))
    rows = [{"key": key, "ratio": "1:1", "x1": 40, "y1": 0, "x2": 280, "y2": 240, "error_kind": None, "error": None}
            for key in ("in/ok.jpg", "in/../../escape/evil.jpg")]
    Finisher(WorkerSpec(job=job))._thumbnails({"rows": rows, "source": buf.getvalue()})
    assert rows[0]["error_kind"] is None and (thumbs / "in" / "ok.jpg" / "1x1.jpg").exists()
    assert rows[1]["error_kind"] == "key" and "'..'" in rows[1]["error"]
    assert not (tmp_path / "deep" / "escape").exists() and not (tmp_path / "escape").exists()


def test_s3_listing_carries_etags_into_the_rows(ray_session, local_s3, model, tmp_path):
    local_s3.create_bucket("safety")
    client = local_s3.client()
    jpeg = tmp_path / "p.jpg"
    Image.new("RGB", (320, 240), "gray").save(jpeg)
    client.put_object(Bucket="safety", Key="in/ok.jpg", Body=jpeg.read_bytes())
    saved = {k: os.environ.get(k) for k in local_s3.env()}
    os.environ.update(local_s3.env())
    try:
        listed = list_inputs(Location("s3://safety/in/", local_s3.endpoint_url))
        assert [f.key for f in listed] == ["in/ok.jpg"] and listed[0].etag and len(listed[0].etag) >= 32
        assert list_inputs(Location("s3://safety/in/ok.jpg", local_s3.endpoint_url))[0].etag == listed[0].etag
        with pytest.raises(FileNotFoundError):
            list_inputs(Location("s3://safety/nothing-here/", local_s3.endpoint_url))
        cfg = JobConfig(input="s3://safety/in/", output=str(tmp_path / "crops"), ratios=["1:1"],
                        endpoint_url=local_s3.endpoint_url, model=model[0], actors=1, progress=False)
        assert run(cfg).complete
        # the same bytes re-uploaded: a new LastModified, the same ETag -> nothing to redo
        client.put_object(Bucket="safety", Key="in/ok.jpg", Body=jpeg.read_bytes())
        cfg.resume = True
        assert run(cfg).planned == 0
        # same size, new content (an in-place edit): the ETag changes -> made again
        data = bytearray(jpeg.read_bytes())
        data[-3] ^= 0xFF
        client.put_object(Bucket="safety", Key="in/ok.jpg", Body=bytes(data))
        assert run(cfg).planned == 1
        now = list_inputs(Location("s3://safety/in/", local_s3.endpoint_url))[0]
        rows = read_output(Location(cfg.output), SCHEMA.names).to_pylist()
        assert len(rows) == 1 and rows[0]["source_etag"] == now.etag != listed[0].etag
        # a takedown on S3: the photo's rows go with the next resume
        client.put_object(Bucket="safety", Key="in/other.jpg", Body=jpeg.read_bytes())
        assert run(cfg).planned == 1
        client.delete_object(Bucket="safety", Key="in/ok.jpg")
        gone = run(cfg)
        assert gone.removed == 1 and gone.complete
        assert [r["key"] for r in read_output(Location(cfg.output), ["key"]).to_pylist()] == ["in/other.jpg"]
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


# -- takedowns, --overwrite, duplicates ----------------------------------------------------------------
def test_resume_removes_taken_down_photos_and_overwrite_removes_only_the_jobs_files(ray_session, model, tmp_path):
    photos(tmp_path / "photos")
    cfg = local_job(tmp_path, model)
    assert run(cfg).complete
    assert (tmp_path / "thumbs" / "1.jpg" / "1x1.jpg").exists()
    (tmp_path / "photos" / "1.jpg").unlink()  # a takedown
    cfg.resume = True
    again = run(cfg)
    assert again.removed == 1 and again.complete and again.planned == 0
    assert [k for k, _ in pairs(tmp_path / "crops")] == ["0.jpg", "0.jpg", "2.jpg", "2.jpg"]
    assert not (tmp_path / "thumbs" / "1.jpg").exists() or not any((tmp_path / "thumbs" / "1.jpg").iterdir())
    assert "1 no longer in the input removed" in again.line()
    # --keep-deleted: a photo gone from the input keeps its rows
    (tmp_path / "photos" / "2.jpg").unlink()
    cfg.keep_deleted = True
    assert run(cfg).removed == 0 and "2.jpg" in {k for k, _ in pairs(tmp_path / "crops")}
    # --overwrite: the job's Parquet and thumbnails go; what else lives there stays
    for folder in ("crops", "thumbs"):
        (tmp_path / folder / "backups").mkdir(exist_ok=True)
        (tmp_path / folder / "backups" / "db.dump").write_bytes(b"precious")
    cfg.resume, cfg.keep_deleted, cfg.overwrite = False, False, True
    fresh = run(cfg)
    assert fresh.complete and fresh.planned == 1 and [k for k, _ in pairs(tmp_path / "crops")] == ["0.jpg", "0.jpg"]
    assert (tmp_path / "crops" / "backups" / "db.dump").read_bytes() == b"precious"
    assert (tmp_path / "thumbs" / "backups" / "db.dump").read_bytes() == b"precious"
    assert not (tmp_path / "thumbs" / "2.jpg" / "1x1.jpg").exists()
    assert not (tmp_path / "crops" / LEASE_NAME).exists()  # released at the end


def test_duplicated_pairs_anywhere_are_reported_and_a_resume_repairs_them(ray_session, model, tmp_path):
    photos(tmp_path / "photos", 2)
    cfg = local_job(tmp_path, model, thumbnails=None)
    assert run(cfg).complete
    out = Location(cfg.output)
    first = parquet_files(out, out.filesystem())[0]
    shutil.copy(first, first.replace(".parquet", "-copy.parquet"))  # as a second driver would have written
    assert len(pq.read_table(first)) > 0
    cfg.resume = True
    repaired = run(cfg)
    assert repaired.complete and repaired.duplicates == 0 and repaired.planned == 2
    assert pairs(tmp_path / "crops") == sorted({p for p in pairs(tmp_path / "crops")})  # each pair once
    assert len(pairs(tmp_path / "crops")) == 4


def test_a_terminated_driver_releases_its_lease_and_leaves_no_ray_behind(tmp_path, model):
    """SIGTERM mid-run (a scheduler stopping the job): the lease is gone and every process of the Ray
    the driver started has exited, so the next run starts at once."""
    import signal
    import subprocess
    import sys

    import psutil

    photos(tmp_path / "photos", 40)
    script = Path(__file__).resolve().parents[1] / "pipelines" / "crop_bucket.py"
    proc = subprocess.Popen([sys.executable, str(script), "--input", str(tmp_path / "photos"), "--output",
                             str(tmp_path / "crops"), "--no-progress", "--actors", "1", *model[1]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lease = tmp_path / "crops" / LEASE_NAME
    deadline = time.time() + 90
    family: set[int] = set()
    while time.time() < deadline and len(family) < 3:  # Ray's own processes are up: mid-run
        time.sleep(0.5)
        family = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    assert lease.exists() and family
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode in (signal.SIGTERM, 128 + signal.SIGTERM)  # Ray's own handler once it is up, ours before
    assert not lease.exists()
    deadline = time.time() + 30
    while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in family):
        time.sleep(0.5)
    left = [psutil.Process(p).name() for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, left
