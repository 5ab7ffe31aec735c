"""A real two-node Ray cluster on loopback (head + one worker node, each with its own ports and temp
dir, started with `ray start`, stopped by PID) runs crop_bucket.py through `ray job submit`, and both
nodes crop photos. Other Ray clusters on the machine are never touched (no `ray stop`)."""

from __future__ import annotations

import collections
import json
import os
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


@pytest.fixture
def two_nodes():
    """(dashboard URL, env): a head and a worker node, 1 CPU each, bound to 127.0.0.1 where Ray allows."""
    base = Path(tempfile.mkdtemp(prefix="r2n-", dir="/tmp"))  # short: Ray's unix socket paths must fit 107 bytes
    head_dir, worker_dir = base / "head", base / "worker"
    gcs, dashboard, client, *rest = free_ports(3 + 2 * len(PORTS))
    head_ports, worker_ports = dict(zip(PORTS, rest[:len(PORTS)])), dict(zip(PORTS, rest[len(PORTS):]))
    env = {**os.environ, "PYTHONPATH": str(ROOT),  # stands in for the package installed on every node
           "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
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
    _, model_flags = model_for_tests(tmp_path)
    job_dir = tmp_path / "job"  # what the job ships: the lone script, nothing else
    job_dir.mkdir()
    shutil.copy(ROOT / "pipelines" / "crop_bucket.py", job_dir / "crop_bucket.py")
    runtime_env = {"env_vars": {**local_s3.env(), "OMP_NUM_THREADS": "1"}}
    submission = f"ugc-two-node-{os.getpid()}"
    args = [RAY, "job", "submit", "--address", url, "--submission-id", submission, "--working-dir", str(job_dir),
            "--runtime-env-json", json.dumps(runtime_env), "--",
            sys.executable, "crop_bucket.py", "--input", "s3://twonode/two/", "--output", "s3://twonode/crops/",
            "--endpoint-url", local_s3.endpoint_url, "--ratios", ",".join(RATIOS), "--actors", "2", "--min-actors", "2",
            "--batch-size", "2", "--wait-for-actors", "600", "--no-progress",
            "--max-error-rate", "1", *model_flags]  # the mixed bucket holds broken photos on purpose
    job = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1800)
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
