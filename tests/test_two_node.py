"""A real two-node Ray cluster on loopback (head + one worker node, each with its own ports and temp
dir, started with `ray start`, stopped by PID) runs crop_bucket.py through `ray job submit` against a
real SeaweedFS: both nodes crop photos; an input where every photo fails exits non-zero; a photo
replaced under the same key is recomputed on --resume and leaves one row per ratio; the columns are
typed; files hold at least 1,000 rows when there are that many. Other Ray clusters on the machine
are never touched (no `ray stop`)."""

from __future__ import annotations

import collections
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from pipeline_files import expected_rows, mixed_bucket, model_for_tests

from pipelines.object_store import free_ports
from pipelines.storage import Location, read_output

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
PORTS = ("node_manager", "object_manager", "agent_listen", "agent_grpc", "runtime_env", "metrics")
RATIOS = ["1:1", "16:9"]


def _node_args(temp_dir: Path, ports: dict[str, int]) -> list[str]:
    return ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp_dir}",
            f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
            f"--dashboard-agent-listen-port={ports['agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['agent_grpc']}", f"--runtime-env-agent-port={ports['runtime_env']}",
            f"--metrics-export-port={ports['metrics']}", "--object-store-memory=200000000", "--disable-usage-stats"]


def _our_processes(temp_dirs: list[Path]) -> list[psutil.Process]:
    """Every process whose command line names one of our temp dirs, plus all their descendants."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(str(d) in cmd for d in temp_dirs):
            roots.append(p)
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop(temp_dirs: list[Path]) -> None:
    procs = _our_processes(temp_dirs)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def two_nodes():
    """(dashboard URL, env): a head and a worker node, 1 CPU each, bound to 127.0.0.1 where Ray allows."""
    base = Path(tempfile.mkdtemp(prefix="r2n-", dir="/tmp"))  # short: Ray's unix socket paths must fit 107 bytes
    head_dir, worker_dir = base / "head", base / "worker"
    gcs, dashboard, client, *rest = free_ports(3 + 2 * len(PORTS))
    head_ports, worker_ports = dict(zip(PORTS, rest[:len(PORTS)])), dict(zip(PORTS, rest[len(PORTS):]))
    env = {**os.environ, "PYTHONPATH": str(ROOT),  # the project folder, as cluster.yaml puts it on every node
           "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),  # this cluster's own token
           "RAY_worker_register_timeout_seconds": "600"}  # a loaded 2-core box starts workers slowly
    try:
        head = subprocess.run([RAY, "start", "--head", f"--port={gcs}", "--include-dashboard=true",
                               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                               f"--ray-client-server-port={client}", *_node_args(head_dir, head_ports)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        worker = subprocess.run([RAY, "start", f"--address=127.0.0.1:{gcs}", *_node_args(worker_dir, worker_ports)],
                                env=env, capture_output=True, text=True, timeout=600)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        url = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 300
        while True:
            nodes = _ray_list("nodes", url, env)
            if sum(n["state"] == "ALIVE" for n in nodes) == 2:
                break
            assert time.monotonic() < deadline, f"the worker node never joined: {nodes}"
            time.sleep(2)
        yield url, env, nodes
    finally:
        _stop([head_dir, worker_dir])
        shutil.rmtree(base, ignore_errors=True)


def _ray_list(what: str, url: str, env: dict) -> list[dict]:
    out = subprocess.run([RAY, "list", what, "--address", url, "--format", "json", "--detail", "--limit", "10000"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_job_submitted_to_two_nodes_uses_both(two_nodes, local_s3, tmp_path):
    url, env, nodes = two_nodes
    files = {f"two/{k}": v for k, v in mixed_bucket(12).items()}
    local_s3.create_bucket("twonode")
    client = local_s3.client()
    for key, (data, _) in files.items():
        client.put_object(Bucket="twonode", Key=key, Body=data)
    job = _submit(two_nodes, local_s3, tmp_path, "two-node", "--input", "s3://twonode/two/", "--output", "s3://twonode/crops/",
                  "--ratios", ",".join(RATIOS), "--batch-size", "2",
                  "--max-error-rate", "1")  # the mixed bucket holds broken photos on purpose
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout + job.stderr and "crop_bucket:" in job.stdout

    rows = read_output(Location("s3://twonode/crops/"), ["key", "ratio", "error"], fs=local_s3.filesystem()).to_pylist()
    assert len(rows) == expected_rows(files, RATIOS)
    assert collections.Counter((r["key"], r["ratio"]) for r in rows).most_common(1)[0][1] == 1
    assert {r["key"] for r in rows} == set(files)

    # Both nodes ran crop batches: the actor tasks of this job, by node.
    tasks = [t for t in _ray_list("tasks", url, env)
             if "MapBatches(CropWorker)" in t["name"] and t["name"].endswith(".submit") and t["state"] == "FINISHED"]
    by_node = collections.Counter(t["node_id"] for t in tasks)
    assert set(by_node) == {n["node_id"] for n in nodes}, by_node


def _submit(two_nodes, local_s3, tmp_path, name: str, *flags: str) -> subprocess.CompletedProcess:
    """``ray job submit`` of the lone crop_bucket.py with ``flags``; waits for the job to end."""
    url, env, _ = two_nodes
    _, model_flags = model_for_tests(tmp_path)
    job_dir = tmp_path / f"job-{name}"
    job_dir.mkdir()
    shutil.copy(ROOT / "pipelines" / "crop_bucket.py", job_dir / "crop_bucket.py")
    runtime_env = {"env_vars": {**local_s3.env(), "OMP_NUM_THREADS": "1"}}
    args = [RAY, "job", "submit", "--address", url, "--submission-id", f"ugc-{name}-{os.getpid()}",
            "--working-dir", str(job_dir), "--runtime-env-json", json.dumps(runtime_env), "--",
            sys.executable, "crop_bucket.py", "--endpoint-url", local_s3.endpoint_url, "--actors", "2",
            "--min-actors", "2", "--wait-for-actors", "600", "--no-progress", *model_flags, *flags]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)


def _jpeg(width: int, height: int, seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)).resize((width, height))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def test_all_failing_input_exits_non_zero(two_nodes, local_s3, tmp_path):
    local_s3.create_bucket("allbad")
    client = local_s3.client()
    for i in range(4):
        client.put_object(Bucket="allbad", Key=f"in/{i}.jpg", Body=b"not a photo at all\n" * (i + 1))
    job = _submit(two_nodes, local_s3, tmp_path, "allbad", "--input", "s3://allbad/in/", "--output", "s3://allbad/out/",
                  "--ratios", "1:1")
    out = job.stdout + job.stderr
    assert job.returncode != 0, out[-4000:]
    assert "crop_bucket:" in out and "not_an_image" in out, out[-4000:]


def test_replaced_photo_is_recomputed_on_resume_with_typed_columns(two_nodes, local_s3, tmp_path):
    import pyarrow as pa

    local_s3.create_bucket("replace")
    client = local_s3.client()
    for i in range(3):
        client.put_object(Bucket="replace", Key=f"in/p{i}.jpg", Body=_jpeg(320 + 40 * i, 240, seed=i))
    # In the GPU clusters' shape: fetch, decode and thumbnails as CPU tasks on one node, the model actor on the other
    common = ["--input", "s3://replace/in/", "--output", "s3://replace/out/", "--ratios", ",".join(RATIOS), "--resume",
              "--actors", "1", "--min-actors", "1", "--io-stages", "tasks", "--thumbnails", "s3://replace/thumbs/"]
    first = _submit(two_nodes, local_s3, tmp_path, "replace1", *common)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    time.sleep(1.1)  # a later mtime, as a real re-upload has
    client.put_object(Bucket="replace", Key="in/p1.jpg", Body=_jpeg(600, 900, seed=9))  # same key, new photo
    second = _submit(two_nodes, local_s3, tmp_path, "replace2", *common)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    from pipelines.photos import SCHEMA

    table = read_output(Location("s3://replace/out/"), SCHEMA.names, fs=local_s3.filesystem())
    rows = table.to_pylist()
    assert collections.Counter((r["key"], r["ratio"]) for r in rows) == {(f"in/p{i}.jpg", r): 1 for i in range(3) for r in RATIOS}
    assert {(r["width"], r["height"]) for r in rows if r["key"] == "in/p1.jpg"} == {(600, 900)}
    assert len({r["run_id"] for r in rows if r["key"] == "in/p1.jpg"}) == 1
    assert len({r["run_id"] for r in rows}) == 2  # the other photos were not redone
    assert all(r["thumbnail"] == f"s3://replace/thumbs/{r['key']}/{r['ratio'].replace(':', 'x')}.jpg" for r in rows)
    types = {f.name: f.type for f in table.schema}
    for name, kind in {"error_kind": pa.string(), "error": pa.string(), "source_size": pa.int64(),
                       "source_mtime_ns": pa.int64(), "run_id": pa.string(), "thumbnail": pa.string(),
                       "objects_cut": pa.int32(), "objects_dropped": pa.int32(), "faces": pa.int32(),
                       "faces_kept": pa.int32(), "model_version": pa.string()}.items():
        assert types[name] == kind, (name, types[name])
    assert pa.types.is_timestamp(types["processed_at"])


def test_output_files_hold_at_least_1000_rows(two_nodes, local_s3, tmp_path):
    from pipelines.storage import parquet_files

    local_s3.create_bucket("many")
    client = local_s3.client()
    body = _jpeg(96, 64, seed=3)
    for i in range(260):
        client.put_object(Bucket="many", Key=f"in/{i:04d}.jpg", Body=body)
    ratios = ["1:1", "4:3", "16:9", "9:16"]
    job = _submit(two_nodes, local_s3, tmp_path, "many", "--input", "s3://many/in/", "--output", "s3://many/out/",
                  "--ratios", ",".join(ratios), "--batch-size", "8")  # the default --rows-per-file (5,000)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    out = Location("s3://many/out/")
    files = parquet_files(out, local_s3.filesystem())
    import pyarrow.parquet as pq

    counts = []
    for f in files:
        with local_s3.filesystem().open_input_file(f) as fh:
            counts.append(pq.ParquetFile(fh).metadata.num_rows)
    assert sum(counts) == 260 * len(ratios)
    assert min(counts) >= 1000 or len(counts) == 1, counts
