"""The batch pipeline against real components: SeaweedFS S3, a local Ray, pyarrow, the real Cropper."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from pipeline_files import crash_once_model, expected_rows, mixed_bucket, model_for_tests

from pipelines.batch import OutputExistsError, normalize_ratios, plan, run
from pipelines.config import JobConfig
from pipelines.photos import SCHEMA, PhotoError, crop_safely, decode, thumbnail_path
from pipelines.storage import InputFile, Location, list_inputs, read_output
from s2cnet.candidates import parse_ratio

ROOT = Path(__file__).resolve().parents[1]
RATIOS = ["1:1", "4:3", "16:9", "9:16"]
BUCKET = "pipeline"
COLUMNS = SCHEMA.names


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files():
    return {f"in/{k}": v for k, v in mixed_bucket().items()}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_for_tests(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def bucket(local_s3, files):
    local_s3.create_bucket(BUCKET)
    client = local_s3.client()
    for key, (data, _) in files.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    saved = {k: os.environ.get(k) for k in local_s3.env()}
    os.environ.update(local_s3.env())  # the driver's AWS_* settings are forwarded to the workers
    yield local_s3
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def job(store, out: str, model, **kw) -> JobConfig:
    return JobConfig(input=f"s3://{BUCKET}/in/", output=f"s3://{BUCKET}/{out}/", ratios=RATIOS,
                     endpoint_url=store.endpoint_url, model=model[0], actors=2, batch_size=4, progress=False, **kw)


def rows_of(loc: Location) -> list[dict]:
    return sorted(read_output(loc, COLUMNS).to_pylist(), key=lambda r: (r["key"], r["ratio"] or ""))


@pytest.fixture(scope="module")
def full_run(ray_session, bucket, model):
    cfg = job(bucket, "crops", model, thumbnails=f"s3://{BUCKET}/thumbs/")
    summary = run(cfg)
    return cfg, summary, rows_of(Location(cfg.output, bucket.endpoint_url))


# -- pure parts ----------------------------------------------------------------------------------------
def test_ratios_are_validated_and_deduplicated():
    assert normalize_ratios("1:1, 4:3,8:6,16:9") == ["1:1", "4:3", "16:9"]
    with pytest.raises(ValueError):
        normalize_ratios("1:1,wide")
    with pytest.raises(ValueError):
        normalize_ratios(" , ")


def test_thumbnail_names_follow_key_and_ratio():
    assert thumbnail_path("photos/thumbs/", "in/a b/c.jpg", "16:9") == "photos/thumbs/in/a b/c.jpg/16x9.jpg"


def _rows(key, *ratios, **kw):
    return [{"key": key, "ratio": r, "error_kind": None, "source_size": 1, "source_mtime_ns": 5,
             "model_version": "m1", **kw} for r in ratios]


def test_plan_keeps_only_missing_pairs():
    fs = [InputFile(k, k, 1, 5) for k in ("a", "b", "c", "d", "e")]
    done = {"a": _rows("a", "1:1"), "b": _rows("b", None, error_kind="corrupt"), "c": _rows("c", "1:1", "16:9")}
    work, skipped, redo = plan(fs, done, ["1:1", "16:9"], limit=None, model_version="m1")
    assert [(f.key, todo) for f, todo in work] == [("a", ["16:9"]), ("d", ["1:1", "16:9"]), ("e", ["1:1", "16:9"])]
    assert skipped == 2 and redo == set()
    work, _, _ = plan(fs, done, ["1:1", "16:9"], limit=2, model_version="m1")
    assert [f.key for f, _ in work] == ["a", "d"]


def test_summary_counts_the_rows_this_run_wrote_after_a_resume_that_adds_a_ratio(tmp_path):
    """A resumed run that adds 16:9 to photos that have 1:1 wrote one row a photo, not two."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.batch import check

    out = tmp_path / "crops"
    out.mkdir()
    table = lambda rows: pa.table({"key": [r[0] for r in rows], "ratio": [r[1] for r in rows],  # noqa: E731
                                   "error_kind": [r[2] for r in rows]})
    pq.write_table(table([("a.jpg", "1:1", None), ("b.jpg", "1:1", None), ("c.jpg", None, "corrupt")]),
                   out / "first.parquet")  # the earlier run: c.jpg is unreadable, so it is not planned again
    pq.write_table(table([("a.jpg", "16:9", None), ("b.jpg", "16:9", "crop")]), out / "second.parquet")
    work = [(InputFile(k, k, 1), ["16:9"]) for k in ("a.jpg", "b.jpg")]
    ok, failed, rows, missing, dups, errors = check(Location(str(out)), work, ["1:1", "16:9"])
    assert (ok, failed, rows, missing, dups, dict(errors)) == (1, 1, 2, [], 0, {"crop": 1})


def test_the_demo_refuses_options_it_would_ignore(capsys):
    from pipelines.crop_bucket import parse_args

    for argv, named in ((["--demo", "--resume"], "--resume"), (["--resume"], "--resume"),
                        (["--demo", "--limit", "3", "--weights", "w.pt"], "--limit, --weights"),
                        (["--demo", "--no-forward-aws-env"], "--no-forward-aws-env")):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and f"does not use {named}:" in err, err
    args = parse_args(["--demo", "--ratios", "1:1,8:6", "--batch-size", "2", "--actors", "1", "--no-progress",
                       "--demo-dir", "elsewhere", "--summary-json", "s.json"])  # what the demo does use
    assert args.demo and args.ratios == ["1:1", "4:3"]


def test_decode_gives_a_reason_per_kind_of_bad_upload(files):
    for key, (data, exp) in files.items():
        if isinstance(exp, tuple) and exp[0] == "error":
            with pytest.raises(PhotoError) as err:
                decode(data)
            assert err.value.kind == exp[1], (key, err.value.kind, str(err.value))
        else:
            assert decode(data).mode == "RGB"


def test_one_bad_photo_or_ratio_does_not_sink_the_batch(model):
    cropper = model[0].build()
    good = Image.new("RGB", (320, 240), "white")
    strip = Image.new("RGB", (400, 12), "white")
    out = crop_safely(cropper.crop_batch, [good, strip], RATIOS)
    assert all(not isinstance(c, str) for c in out[0])
    assert [isinstance(c, str) for c in out[1]] == [False, False, False, True]  # no exact 9:16 in a 400x12 strip
    assert out[1][3].startswith("crop:")


def test_local_folder_listing_uses_relative_keys(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"1")
    (tmp_path / "y.png").write_bytes(b"")
    got = list_inputs(Location(str(tmp_path)))
    assert [(f.key, f.size) for f in got] == [("a/b/x.jpg", 1), ("y.png", 0)]


# -- the job on S3 -------------------------------------------------------------------------------------
def test_every_key_once_per_ratio_or_once_as_an_error(full_run, files):
    cfg, summary, rows = full_run
    assert summary.complete and summary.planned == len(files) and summary.skipped == 0
    assert len(rows) == expected_rows(files, RATIOS) == summary.rows
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    assert set(by_key) == set(files)
    for key, (_, exp) in files.items():
        krows = by_key[key]
        if isinstance(exp, tuple) and exp[0] == "error":
            assert len(krows) == 1 and krows[0]["ratio"] is None and krows[0]["x1"] is None
            assert krows[0]["error_kind"] == exp[1] and krows[0]["error"], (key, krows[0])
            continue
        assert sorted(r["ratio"] for r in krows) == sorted(RATIOS), key
        bad = exp[1] if isinstance(exp, tuple) else set()
        for r in krows:
            if r["ratio"] in bad:
                assert r["error_kind"] == "crop" and r["error"].startswith("crop:") and r["x1"] is None
                continue
            assert r["error"] is None and r["error_kind"] is None, (key, r["error"])
            a, b = parse_ratio(r["ratio"])
            w, h = r["x2"] - r["x1"], r["y2"] - r["y1"]
            assert 0 <= r["x1"] < r["x2"] <= r["width"] and 0 <= r["y1"] < r["y2"] <= r["height"]
            assert w * b == h * a, (key, r)  # exactly the requested ratio
            assert r["model_version"] and r["score"] is not None
    assert {(r["width"], r["height"]) for r in by_key["in/odd/exif_rotated.jpg"]} == {(240, 320)}  # upright size
    n_failed = sum(1 for _, e in files.values() if isinstance(e, tuple))
    assert (summary.ok, summary.failed) == (len(files) - n_failed, n_failed)
    assert summary.errors == {"too_large": 2, "empty": 1, "not_an_image": 1, "corrupt": 1, "crop": 1}
    from pipelines.storage import parquet_files

    out = Location(cfg.output, cfg.endpoint_url)
    assert len(parquet_files(out, out.filesystem())) == 1  # files of >= rows_per_file rows, not one per block


def test_every_file_says_which_model_and_run_made_it(full_run, bucket):
    import pyarrow.parquet as pq

    from pipelines.storage import parquet_files

    cfg, summary, rows = full_run
    out = Location(cfg.output, cfg.endpoint_url)
    fs = out.filesystem()
    for path in parquet_files(out, fs):
        with fs.open_input_file(path) as f:
            meta = {k.decode(): v.decode() for k, v in pq.ParquetFile(f).schema_arrow.metadata.items()
                    if k.startswith(b"ugc_crop.")}
        assert meta["ugc_crop.model_version"] == rows[0]["model_version"]
        assert meta["ugc_crop.ratios"] == ",".join(normalize_ratios(cfg.ratios))
        assert meta["ugc_crop.run_id"] == rows[0]["run_id"]
        assert isinstance(json.loads(meta["ugc_crop.model_card"]), dict)


def test_thumbnails_are_jpegs_named_by_key_and_ratio(full_run, bucket):
    cfg, _, rows = full_run
    fs, thumbs = bucket.filesystem(), Location(cfg.thumbnails)
    ok = [r for r in rows if r["error"] is None]
    for r in ok:
        with fs.open_input_stream(thumbnail_path(thumbs.root, r["key"], r["ratio"])) as f:
            img = Image.open(io.BytesIO(f.read()))
        assert img.format == "JPEG"
        assert img.width == min(512, r["x2"] - r["x1"])
        a, b = parse_ratio(r["ratio"])
        assert abs(img.width / img.height - a / b) < 0.05 + 2 / img.height
    listed = bucket.client().list_objects_v2(Bucket=BUCKET, Prefix="thumbs/", MaxKeys=1000)["KeyCount"]
    assert listed == len(ok)


def test_contact_sheet_shows_every_cropped_photo_and_every_error(full_run, bucket, tmp_path):
    from pipelines.contact_sheet import write_contact_sheet

    cfg, _, rows = full_run
    sheet = write_contact_sheet(Location(cfg.output, bucket.endpoint_url), Location(cfg.input, bucket.endpoint_url),
                                tmp_path / "sheet.html", thumbnails=Location(cfg.thumbnails, bucket.endpoint_url))
    page = sheet.read_text()
    cropped = {r["key"] for r in rows if r["x1"] is not None}
    assert page.count("<section>") == len(cropped)
    assert page.count("data:image/jpeg;base64,") == len(cropped) + sum(r["x1"] is not None for r in rows)
    assert f"Errors ({sum(r['error'] is not None for r in rows)})" in page  # nothing failed while drawing
    from s2cnet.overlay import hex_colour, ratio_colour

    for ratio in {r["ratio"] for r in rows if r["ratio"]}:  # each ratio in the colour the overlay and the page use
        assert f'color:{hex_colour(ratio_colour(ratio))}">&#9632; {ratio}' in page


def test_rerun_refuses_and_resume_adds_nothing(full_run, bucket, model):
    cfg, _, rows = full_run
    with pytest.raises(OutputExistsError):
        run(job(bucket, "crops", model))
    again = run(job(bucket, "crops", model, resume=True))
    assert again.planned == 0 and again.skipped == len({r["key"] for r in rows})
    assert rows_of(Location(cfg.output, bucket.endpoint_url)) == rows


def test_partial_run_then_resume_through_a_crash_equals_one_run(full_run, files, bucket, model, tmp_path):
    """10 photos at 2 ratios, then --resume at 4 ratios while one actor dies mid-run: same rows as one run."""
    _, _, rows = full_run
    first = run(_with(job(bucket, "resumed", model, limit=10), ratios=["1:1", "16:9"]))
    whole_photo_errors = {r["key"] for r in rows if r["ratio"] is None}
    assert first.complete and first.planned == 10
    assert first.rows == sum(1 if k in whole_photo_errors else 2 for k in sorted(files)[:10])
    marker = tmp_path / "crashed"
    second = run(job(bucket, "resumed", (crash_once_model(model[0], str(marker)),), resume=True))
    assert marker.exists(), "no actor crashed: the retry path was not exercised"
    assert second.complete and second.duplicates == 0
    assert second.planned == len({r["key"] for r in rows})  # the first 10 still lack two ratios
    third = run(job(bucket, "resumed", model, resume=True))
    assert third.planned == 0 and third.skipped == second.planned
    assert _comparable(rows_of(Location(f"s3://{BUCKET}/resumed/", bucket.endpoint_url))) == _comparable(rows)


def test_io_stages_as_cpu_tasks_around_the_model_actors_give_the_same_rows(full_run, bucket, model, caplog):
    """The GPU cluster's shape (fetch and decode, then thumbnails, as CPU tasks; the actors run only the
    model), here on CPU: the same rows and the same thumbnails as the actors doing everything."""
    import logging

    _, _, rows = full_run
    # half a core each: the session's shared Ray has 2 CPUs, and a live Serve replica may hold one
    cfg = _with(job(bucket, "staged", model, thumbnails=f"s3://{BUCKET}/thumbs_staged/", io_stages="tasks",
                    cpus_per_actor=0.5, cpus_per_io_task=0.5), actors=1)
    with caplog.at_level(logging.INFO, logger="ray.data"):
        logging.getLogger("ray.data").addHandler(caplog.handler)
        try:
            summary = run(cfg)
        finally:
            logging.getLogger("ray.data").removeHandler(caplog.handler)
    # three operators, not fused into the actors (Ray Data fuses stages whose remote arguments are equal)
    assert ("TaskPoolMapOperator[MapBatches(fetch_and_decode)] -> ActorPoolMapOperator[MapBatches(CropWorker)] -> "
            "TaskPoolMapOperator[MapBatches(finish)]") in caplog.text, caplog.text[-2000:]
    assert summary.complete and summary.duplicates == 0
    got = rows_of(Location(cfg.output, bucket.endpoint_url))
    assert _comparable(got) == _comparable(rows)
    assert [r["error_kind"] for r in got] == [r["error_kind"] for r in rows]
    fs = bucket.filesystem()
    for r in (r for r in got if r["error"] is None):
        assert r["thumbnail"] == Location(cfg.thumbnails).uri_of(r["key"], r["ratio"])
        with fs.open_input_stream(thumbnail_path(Location(cfg.thumbnails).root, r["key"], r["ratio"])) as f, \
                fs.open_input_stream(thumbnail_path(Location(f"s3://{BUCKET}/thumbs/").root, r["key"], r["ratio"])) as g:
            assert f.read() == g.read(), r["key"]


def _with(cfg: JobConfig, **kw) -> JobConfig:
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_date_partitioned_output_reads_back_and_resumes(ray_session, bucket, model):
    import datetime

    import pyarrow.dataset as pads

    from pipelines.storage import parquet_files

    cfg = _with(job(bucket, "parted", model, limit=4), ratios=["1:1"], partition_by_date=True)
    first = run(cfg)
    assert first.ok + first.failed == 4
    out = Location(cfg.output, cfg.endpoint_url)
    fs = out.filesystem()
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    files = parquet_files(out, fs)
    assert files and all(f"/processed_date={day}/" in f for f in files), files
    table = pads.dataset(out.root, filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert {str(d) for d in table.column("processed_date").to_pylist()} == {day}
    assert table.num_rows == len(rows_of(out)) == first.rows
    again = run(_with(cfg, resume=True, limit=None))
    assert again.skipped == 4 and again.missing == [] and again.duplicates == 0  # the partition is found on resume


def _comparable(rows: list[dict]) -> list[tuple]:
    return [(r["key"], r["ratio"], r["width"], r["height"], r["x1"], r["y1"], r["x2"], r["y2"],
             None if r["score"] is None else round(r["score"], 4), r["error"]) for r in rows]


# -- the script as `ray submit` runs it: a lone copy, another directory, local folders -----------------
def test_script_copied_alone_runs_from_another_directory(ray_session, full_run, files, model, tmp_path):
    _, _, rows = full_run
    src = tmp_path / "photos"
    keys = [k for k in sorted(files) if k.startswith("in/odd/")]
    for k in keys:
        (src / k).parent.mkdir(parents=True, exist_ok=True)
        (src / k).write_bytes(files[k][0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(ROOT / "pipelines" / "crop_bucket.py", elsewhere / "crop_bucket.py")
    # On a cluster the package is installed on every node (cluster.yaml's setup_commands); here the
    # checkout stands in for it: PYTHONPATH for this driver, the job's runtime_env for its workers
    # (the variable is how `ray job submit` hands a runtime_env to its entrypoint).
    job_config = {"runtime_env": {"env_vars": {"PYTHONPATH": str(ROOT)}}}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job_config),
           "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "crop_bucket.py", "--input", str(src), "--output", str(tmp_path / "crops"),
            "--actors", "2", "--batch-size", "4", "--no-progress", "--summary-json", "summary.json",
            "--max-error-rate", "1", *model[1]]  # the odd photos fail on purpose
    proc = subprocess.run(args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((elsewhere / "summary.json").read_text())
    assert summary["missing"] == [] and summary["duplicates"] == 0 and summary["planned"] == len(keys)
    assert "crop_bucket:" in proc.stdout and "complete" in proc.stdout
    got = rows_of(Location(str(tmp_path / "crops")))
    assert _comparable(got) == _comparable([r for r in rows if r["key"] in set(keys)])


def test_all_failing_input_exits_non_zero(ray_session, model, tmp_path, capsys):
    from pipelines.crop_bucket import main as crop_bucket_main

    src = tmp_path / "bad"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(b"not a photo at all " * 4)
    code = crop_bucket_main(["--input", str(src), "--output", str(tmp_path / "out"), "--actors", "1",
                             "--no-progress", *model[1]])
    captured = capsys.readouterr()
    assert code == 1 and "FAILED: 3 of 3 photos failed" in captured.out
    assert "expected, not an error of this job" in captured.err  # said before Ray's own ERROR line about actor restarts


def test_a_replaced_photo_is_recomputed_on_resume_and_leaves_one_row_per_ratio(ray_session, model, tmp_path):
    src, out = tmp_path / "photos", tmp_path / "crops"
    src.mkdir()
    for i, size in enumerate([(320, 240), (240, 320), (300, 300)]):
        Image.new("RGB", size, (40 * i, 90, 160)).save(src / f"{i}.jpg")
    cfg = JobConfig(input=str(src), output=str(out), ratios=["1:1", "16:9"], model=model[0], actors=1, progress=False)
    first = run(cfg)
    assert first.complete and first.planned == 3
    time.sleep(0.05)
    Image.new("RGB", (500, 200), "white").save(src / "1.jpg")  # same key, another photo
    cfg.resume = True
    second = run(cfg)
    assert second.complete and second.planned == 1 and second.skipped == 2 and second.duplicates == 0
    rows = read_output(Location(str(out)), SCHEMA.names).to_pylist()
    by_key = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    assert sorted(len(v) for v in by_key.values()) == [2, 2, 2]  # one row per key and ratio
    assert {(r["width"], r["height"]) for r in by_key["1.jpg"]} == {(500, 200)}
    assert len({r["run_id"] for r in rows}) == 2 and all(r["processed_at"] is not None for r in rows)
    assert {r["source_size"] for r in by_key["1.jpg"]} == {(src / "1.jpg").stat().st_size}
    third = run(cfg)
    assert third.planned == 0 and third.skipped == 3


def test_pool_sizes_and_an_explicit_gpu_request(monkeypatch):
    import ray

    from pipelines.batch import _resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    base = dict(input="s3://b/in/", output="s3://b/out/")
    assert _resources(JobConfig(**base)) == (1, 4, 0.0, True)  # CPU-only: one actor per CPU now, doing its own I/O
    assert _resources(JobConfig(**base, io_stages="tasks")) == (1, 3, 0.0, False)  # a core left for the I/O tasks
    # an empty cluster asked for GPU actors: the request itself is what makes the autoscaler add GPU nodes
    assert _resources(JobConfig(**base, gpus_per_actor=1.0, actors=8)) == (1, 8, 1.0, False)
    assert _resources(JobConfig(**base, actors=8, min_actors=3)) == (3, 8, 0.0, True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    assert _resources(JobConfig(**base)) == (1, 2, 1.0, False)  # GPU actors: fetch, decode, thumbnails in CPU tasks
    assert _resources(JobConfig(**base, io_stages="actors")) == (1, 2, 1.0, True)


def test_checkout_script_run_from_another_folder_hands_its_workers_the_checkout(tmp_path):
    """`python /path/to/checkout/pipelines/crop_bucket.py --demo` from any folder: the local Ray it
    starts gives its workers the driver's environment, so PYTHONPATH must name the checkout (without
    it every actor died on `import pipelines`)."""
    code = ("import os, runpy, sys\n"
            f"sys.argv = ['crop_bucket.py', '--help']\n"
            "try:\n"
            f"    runpy.run_path({str(ROOT / 'pipelines' / 'crop_bucket.py')!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('PYTHONPATH=' + os.environ.get('PYTHONPATH', ''))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = proc.stdout.strip().splitlines()[-1].removeprefix("PYTHONPATH=")
    assert str(ROOT) in path.split(os.pathsep)
    worker = subprocess.run([sys.executable, "-c", "import pipelines.batch"], cwd=tmp_path, env={**env, "PYTHONPATH": path},
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, worker.stderr[-2000:]


def test_regions_file_keeps_the_callers_boxes_and_refuses_what_does_not_fit(ray_session, model, tmp_path):
    import json as _json

    from pipelines.batch import StartupError, read_regions

    src, out = tmp_path / "photos", tmp_path / "crops"
    src.mkdir()
    Image.new("RGB", (640, 320), (90, 120, 150)).save(src / "wide.jpg")
    Image.new("RGB", (300, 300), (150, 120, 90)).save(src / "square.jpg")
    regions = tmp_path / "regions.jsonl"
    regions.write_text(_json.dumps({"key": "wide.jpg", "keep": [[560, 40, 630, 120]], "focus": [600, 80]}) + "\n"
                       + _json.dumps({"key": "square.jpg", "keep": [[0, 0, 900, 10]]}) + "\n")
    cfg = JobConfig(input=str(src), output=str(out), ratios=["1:1", "9:16"], model=model[0], actors=1, progress=False,
                    regions=str(regions), max_error_rate=1.0)
    summary = run(cfg)
    assert summary.planned == 2 and summary.failed == 1
    rows = {(r["key"], r["ratio"]): r for r in read_output(Location(str(out)), SCHEMA.names).to_pylist()}
    for ratio in ("1:1", "9:16"):
        r = rows[("wide.jpg", ratio)]
        assert r["x1"] <= 560 and r["x2"] >= 630 and r["y1"] <= 40 and r["y2"] >= 120, r
        assert (r["focal_x"], r["focal_y"]) == (600, 80) and r["error"] is None
        assert "outside" in rows[("square.jpg", ratio)]["error"]
    regions.write_text('{"key": "wide.jpg", "keep": [[1, 2, 3]]}\n')
    with pytest.raises(StartupError, match="line 1"):
        read_regions(cfg)
