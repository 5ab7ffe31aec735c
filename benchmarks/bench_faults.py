"""Load and faults, bounded: the service at 32 clients through stalled uploads, a killed replica and a
stopped store; the batch job through a SeaweedFS stop and restart, then --resume.

    OMP_NUM_THREADS=1 python benchmarks/bench_faults.py                 # both parts, ~6 min on 2 cores
    python benchmarks/bench_faults.py --part serve --seconds 20
    python benchmarks/bench_faults.py --part memory                      # 16 clients on one 64 MP PNG

Serve: a local Ray (``address="local"``), SeaweedFS on 127.0.0.1 behind the thumbnails, two replicas
of serve.app (ingress and model deployments). 32 closed-loop clients (three in four POST /v1/crops with real photos,
one in four GET /v1/thumbnail) run through four phases of ``--seconds`` each: steady; 70 stalled
uploads held open (headers and 3 body bytes) while a probe times /healthz every 0.5 s; one replica
SIGKILLed 3 s into the phase; SeaweedFS stopped for the whole phase. Per phase: answers by status,
p50/p95/p99, the slowest /healthz, and hangs (no answer within 60 s). Replica memory (RSS) before
and after.

Pipeline: 120 photos in SeaweedFS; crop_bucket.py runs in a subprocess (its own local Ray); 30 s in
(Ray's start-up included, so while the actors read photos) SeaweedFS is stopped, and restarted on
the same port and data 15 s later; then ``--resume`` runs until
nothing is left to redo (at most three times). Reported: each run's exit code and summary, and the
final output's rows lost, duplicated and transient errors left.

Memory (``--part memory``, not in "both"): 16 clients at once ask for thumbnails of one 8000x8000 PNG
(64 MP, the default ``max_pixels``); the peak RSS of the ingress and model replicas against rest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import start_service  # noqa: E402

from pipelines.object_store import start_local_s3  # noqa: E402

RATIOS = "1:1,4:3,16:9,9:16"
HANG_S = 60.0


def photos(n: int, data: Path, long_side: int) -> list[bytes]:
    """``n`` JPEGs: GAICD photos at ``long_side`` px when ../shared/data is there, else synthetic ones."""
    paths = sorted((data / "images").glob("*.jpg"))[:n] if (data / "images").is_dir() else []
    out = []
    for i in range(n):
        if paths:
            img = Image.open(paths[i % len(paths)]).convert("RGB")
        else:
            rng = np.random.default_rng(i)
            img = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).resize((800, 600))
        img.thumbnail((long_side, long_side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def replica_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ServeReplica:faults:CropModel" in cmd:  # the model replicas: the ingress retries their requests
            found.append(p)
    return found


def rss_mb() -> dict[int, float]:
    return {p.pid: round(p.memory_info().rss / 2**20) for p in replica_processes()}


def stalled_uploads(port: int, n: int = 70) -> list[socket.socket]:
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST /v1/crops HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: 100000\r\n\r\n\xff\xd8\xff")
        held.append(s)
    return held


def phase(url: str, images: list[bytes], keys: list[str], clients: int, seconds: float,
          during=None) -> dict:
    """Closed loop for ``seconds``; ``during(t0)`` runs on its own thread (the fault)."""
    stats: dict = {"status": Counter(), "lat": {"crops": [], "thumbnail": []}, "hangs": 0, "health_ms": []}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        session, i = requests.Session(), k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            thumbnail = (i // clients + k) % 4 == 3  # every client mixes both kinds
            try:
                if thumbnail:
                    r = session.get(f"{url}/v1/thumbnail", params={"key": keys[i % len(keys)], "ratio": "16:9",
                                                                   "width": 320}, timeout=HANG_S)
                    kind = "thumbnail"
                else:
                    r = session.post(f"{url}/v1/crops", params={"ratios": RATIOS}, data=images[i % len(images)],
                                     headers={"Content-Type": "image/jpeg"}, timeout=HANG_S)
                    kind = "crops"
                code = str(r.status_code)
            except requests.Timeout:
                kind, code = "thumbnail" if thumbnail else "crops", "hang"
            except requests.RequestException as e:
                kind, code = "thumbnail" if thumbnail else "crops", type(e).__name__
            dt = time.perf_counter() - t0
            i += clients
            with lock:
                stats["status"][f"{kind} {code}"] += 1
                stats["hangs"] += code == "hang"
                if code == "200":
                    stats["lat"][kind].append(dt)

    def probe() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = requests.get(f"{url}/healthz", timeout=HANG_S).status_code == 200
            except requests.RequestException:
                ok = False
            stats["health_ms"].append((time.perf_counter() - t0) * 1e3 if ok else float("inf"))
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)] + [threading.Thread(target=probe)]
    if during is not None:
        threads.append(threading.Thread(target=during, args=(time.perf_counter(),)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pct = {}
    for kind, lat in stats["lat"].items():
        ms = np.array(lat) * 1e3
        pct[kind] = " / ".join(str(round(float(np.percentile(ms, q)))) for q in (50, 95, 99)) if len(ms) else "-"
    return {"answers": dict(sorted(stats["status"].items())), "latency_ms": pct, "hangs": stats["hangs"],
            "max_health_ms": round(max(stats["health_ms"])) if stats["health_ms"] else None}


def store_settings(store, **extra) -> dict:
    """The service's Settings for a local S3 store's bucket "photos", keys under ugc/."""
    from s2cnet.cropper import DEFAULT_WEIGHTS

    return {"weights": "" if DEFAULT_WEIGHTS.exists() else "random", "bucket": "photos", "prefix": "ugc/",
            "endpoint_url": store.endpoint_url, "access_key": store.access_key, "secret_key": store.secret_key,
            "region": store.region, **extra}


def serve_part(args) -> dict:
    import ray
    from ray import serve

    images = photos(16, args.data / "gaicd", 1024)
    store = start_local_s3(buckets=["photos"])
    keys = []
    for i, data in enumerate(images[:8]):
        key = f"ugc/{i}.jpg"
        store.client().put_object(Bucket="photos", Key=key, Body=data)
        keys.append(key)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    report: dict = {}
    try:
        url, port = start_service(store_settings(store), "faults", 2, os.cpu_count() / 2)
        phase(url, images, keys, 4, 5.0)  # warm-up
        report["rss_before_mb"] = rss_mb()
        report["steady"] = phase(url, images, keys, args.clients, args.seconds)
        held = stalled_uploads(port)
        try:
            report["70 stalled uploads"] = phase(url, images, keys, args.clients, args.seconds)
        finally:
            for s in held:
                s.close()

        def kill_a_replica(t0: float) -> None:
            time.sleep(3.0)
            victims = replica_processes()
            if victims:
                report["killed_pid"] = victims[0].pid
                os.kill(victims[0].pid, signal.SIGKILL)

        report["replica killed"] = phase(url, images, keys, args.clients, args.seconds, kill_a_replica)
        store.owns_dir = False
        store.stop()
        report["store stopped"] = phase(url, images, keys, args.clients, args.seconds)
        time.sleep(2.0)
        report["rss_after_mb"] = rss_mb()
    finally:
        serve.shutdown()
        ray.shutdown()
        store.owns_dir = True
        store.stop()
    return report


def pipeline_part(args) -> dict:
    import pyarrow.parquet  # noqa: F401  (pyarrow's S3 reads below)

    from pipelines.storage import Location, read_output

    images = photos(120, args.data / "gaicd", 640)
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    store = start_local_s3(work / "s3", buckets=["jobs"])
    client = store.client()
    keys = [f"in/{i:03d}.jpg" for i in range(len(images))]
    for key, data in zip(keys, images):
        client.put_object(Bucket="jobs", Key=key, Body=data)
    env = {**os.environ, **store.env(), "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    base = [sys.executable, str(ROOT / "pipelines" / "crop_bucket.py"), "--input", "s3://jobs/in/", "--output",
            "s3://jobs/crops/", "--endpoint-url", store.endpoint_url, "--ratios", RATIOS, "--no-progress",
            "--batch-size", "4"]
    runs = []
    proc = subprocess.Popen(base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(args.outage_after)
    port = store.ports["s3"]
    store.stop()
    time.sleep(args.outage_seconds)
    store = start_local_s3(work / "s3", access_key=store.access_key, secret_key=store.secret_key, s3_port=port)
    out, _ = proc.communicate(timeout=1800)
    runs.append({"run": f"first (store stopped {args.outage_seconds:.0f} s, {args.outage_after:.0f} s in)",
                 "exit": proc.returncode, "summary": _summary(out)})
    for i in range(3):
        done = subprocess.run([*base, "--resume"], env=env, capture_output=True, text=True, timeout=1800)
        runs.append({"run": f"--resume {i + 1}", "exit": done.returncode, "summary": _summary(done.stdout + done.stderr)})
        if done.returncode == 0 and "complete" in done.stdout:
            break
    rows = read_output(Location("s3://jobs/crops/", store.endpoint_url), ["key", "ratio", "error_kind"],
                       fs=store.filesystem()).to_pylist()
    pairs = Counter((r["key"], r["ratio"]) for r in rows)
    expected = {(k, r) for k in keys for r in RATIOS.split(",")}
    report = {"runs": runs, "photos": len(keys), "rows": len(rows),
              "lost": len(expected - set(pairs)), "duplicated": sum(n - 1 for n in pairs.values() if n > 1),
              "transient_errors_left": sum(r["error_kind"] in ("read", "thumbnail") for r in rows),
              "other_errors": dict(Counter(r["error_kind"] for r in rows if r["error_kind"]))}
    store.owns_dir = True
    store.stop()
    return report


def memory_part(args) -> dict:
    """16 clients at once ask for thumbnails of one 8000x8000 PNG (64 MP, the default max_pixels: 192 MB
    decoded, 0.2 MB stored): peak RSS of the ingress and model replicas against their resting RSS."""
    import ray
    from ray import serve

    store = start_local_s3(buckets=["photos"])
    big = io.BytesIO()
    Image.new("RGB", (8000, 8000), (90, 120, 150)).save(big, "PNG")
    store.client().put_object(Bucket="photos", Key="ugc/huge.png", Body=big.getvalue())
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        url, _ = start_service(store_settings(store, thumbnail_widths=""), "memory", 1)
        procs = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            for name in ("CropIngress", "CropModel"):
                if f"ServeReplica:memory:{name}" in cmd:
                    procs[name] = proc
        rest = {n: pr.memory_info().rss for n, pr in procs.items()}
        peak, done = dict(rest), threading.Event()

        def sample() -> None:
            while not done.is_set():
                for n, pr in procs.items():
                    try:
                        peak[n] = max(peak[n], pr.memory_info().rss)
                    except psutil.Error:
                        pass
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        try:
            with ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(lambda i: requests.get(url + "/v1/thumbnail", timeout=300, params={
                    "key": "ugc/huge.png", "ratio": "1:1", "width": 256 + i}).status_code, range(16)))
        finally:
            done.set()
            sampler.join()
        return {"codes": dict(Counter(codes)), "seconds": round(time.perf_counter() - t0, 1),
                "rest_mb": {n: round(v / 2**20) for n, v in rest.items()},
                "peak_mb": {n: round(v / 2**20) for n, v in peak.items()}}
    finally:
        serve.shutdown()
        ray.shutdown()
        store.stop()


def _summary(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("crop_bucket:") or "FAILED" in ln or "Error" in ln[:40]]
    return " | ".join(lines[-2:])[:300]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["serve", "pipeline", "memory", "both"], default="both")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0, help="per serve phase")
    ap.add_argument("--outage-after", type=float, default=30.0,
                    help="pipeline: seconds from the job's start (Ray's start-up included) to the store's stop")
    ap.add_argument("--outage-seconds", type=float, default=15.0, help="pipeline: how long the store stays down")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = {}
    if args.part in ("serve", "both"):
        report["serve"] = s = serve_part(args)
        print(f"\n## Serve: {args.clients} clients, 2 replicas, {os.cpu_count()} cores, {args.seconds:.0f} s per phase\n")
        print("| phase | answers | crops p50 / p95 / p99 ms | thumbnails p50 / p95 / p99 ms | hangs | slowest /healthz ms |")
        print("|---|---|---|---|---|---|")
        for name in ("steady", "70 stalled uploads", "replica killed", "store stopped"):
            p = s[name]
            answers = ", ".join(f"{k}: {v}" for k, v in p["answers"].items())
            lat = p["latency_ms"]
            print(f"| {name} | {answers} | {lat['crops']} | {lat['thumbnail']} | {p['hangs']} | {p['max_health_ms']} |")
        print(f"\nreplica RSS MB before {s['rss_before_mb']}, after {s['rss_after_mb']} (killed pid {s.get('killed_pid')})")
    if args.part in ("pipeline", "both"):
        report["pipeline"] = p = pipeline_part(args)
        print(f"\n## Pipeline: {p['photos']} photos x {len(RATIOS.split(','))} ratios, SeaweedFS stopped and restarted mid-job\n")
        print("| run | exit | summary |\n|---|---|---|")
        for r in p["runs"]:
            print(f"| {r['run']} | {r['exit']} | {r['summary']} |")
        print(f"\nfinal output: {p['rows']} rows; lost {p['lost']}, duplicated {p['duplicated']}, "
              f"transient errors left {p['transient_errors_left']}, other errors {p['other_errors']}")
    if args.part == "memory":
        report["memory"] = m = memory_part(args)
        print("\n## 16 clients, one 8000x8000 PNG (64 MP) thumbnail each, 1 ingress and 1 model replica\n")
        print("| replica | resting RSS MB | peak RSS MB | answers |\n|---|---|---|---|")
        for name in m["rest_mb"]:
            print(f"| {name} | {m['rest_mb'][name]} | {m['peak_mb'][name]} | {m['codes']} in {m['seconds']} s |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
