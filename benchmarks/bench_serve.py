"""Latency and throughput of POST /v1/crops on a real Ray Serve deployment, 1 MP JPEGs, 4 ratios.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_serve.py               # 1, 8, 32 clients
    python benchmarks/bench_serve.py --breakdown                                 # + in-process stage times

Starts its own local Ray (``address="local"``) and Serve on 127.0.0.1:<free port>, deploys
serve.app's ingress and model deployments with a fixed replica count each (no autoscaling, so figures are repeatable), then
runs closed-loop clients (each sends its next request when the last one answers) for ``--seconds``
per concurrency level. Photos are GAICD images resized to ~1 MP when ../shared/data is present,
else synthetic ones. Weights: committed ones when present, else the seeded untrained model with the
untrained saliency proposer (same compute, meaningless crops); the printed model_version says which.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RATIOS = "1:1,4:3,16:9,9:16"
ONE_MP = (1155, 866)


def photos(n: int, data: Path) -> list[bytes]:
    """``n`` ~1 MP JPEGs (quality 90): GAICD test photos if available, else synthetic scenes."""
    paths = sorted((data / "images").glob("*.jpg"))[:n] if (data / "images").is_dir() else []
    out = []
    for i in range(n):
        if paths:
            img = Image.open(paths[i % len(paths)]).convert("RGB")
            s = (ONE_MP[0] * ONE_MP[1] / (img.width * img.height)) ** 0.5
            img = img.resize((round(img.width * s), round(img.height * s)), Image.LANCZOS)
        else:
            rng = np.random.default_rng(i)
            y, x = np.mgrid[0:ONE_MP[1], 0:ONE_MP[0]].astype(np.float32)
            arr = np.stack([x / 5, y / 4, (x + y) / 8], -1) + rng.normal(0, 12, (ONE_MP[1], ONE_MP[0], 3))
            img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def model_args(choice: str) -> dict:
    from s2cnet.cropper import DEFAULT_WEIGHTS
    from s2cnet.proposals import SALIENCY_WEIGHTS

    if choice == "auto":
        choice = "committed" if DEFAULT_WEIGHTS.exists() else "random"
    if choice == "committed":
        return {"weights": "", "proposals": SALIENCY_WEIGHTS.exists()}
    return {"weights": "random", "proposals": True}


def run_level(url: str, images: list[bytes], clients: int, seconds: float) -> dict:
    """Closed loop: ``clients`` threads, each one request in flight, for ``seconds``."""
    lat, batches, server = [], Counter(), []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        session = requests.Session()
        i = k
        while time.perf_counter() < stop_at:
            data = images[i % len(images)]
            i += clients
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/v1/crops", params={"ratios": RATIOS}, data=data,
                                 headers={"Content-Type": "image/jpeg"}, timeout=120)
                ok, detail = r.status_code == 200, f"{r.status_code} {r.text[:100]}"
            except requests.RequestException as e:
                ok, detail, r = False, repr(e), None
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(dt)
                    batches[int(r.headers.get("x-batch-size", 1))] += 1
                    server.append(r.json()["timing_ms"])
                else:
                    errors.append(detail)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1e3
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "first_errors": errors[:3],
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "rps": len(lat) / wall,
            "mean_batch": sum(b * n for b, n in batches.items()) / max(1, sum(batches.values())),
            "server_decode_ms": statistics.median(t["decode"] for t in server) if server else None,
            "server_crop_ms": statistics.median(t["crop"] for t in server) if server else None}


def _done(value):
    """An already-finished future, so the stages can be timed one after another."""
    from concurrent.futures import Future

    f: Future = Future()
    f.set_result(value)
    return f


def breakdown(images: list[bytes], args: dict, repeats: int = 20) -> dict:
    """Median in-process ms per stage of one request (no Ray, no HTTP): where the latency goes.

    Mirrors POST /v1/crops: the service validates the upload by decoding it in draft mode, hands that
    image to Cropper.analyse, which runs the backbone, proposes objects, scores every candidate and chooses per ratio.
    Stages run one after another here; inside Cropper.crop the faces run on a worker thread beside
    the backbone, so the Cropper's total is below the sum.
    """
    from s2cnet.candidates import candidates
    from s2cnet.choice import Regions, Subjects
    from s2cnet.cropper import PendingObjects
    from s2cnet.image_stage import faces_in
    from serve.service import CropService
    from serve.settings import Settings

    svc = CropService(Settings.load(args))
    c = svc.cropper
    names = ("validate + draft decode (service.decode)", "cropper takes the decoded image", "resize+backbone",
             "faces (detector, worker thread)", "saliency boxes", "candidates", "score candidates", "choose", "sum of stages",
             "Cropper.crop total")
    stages: dict[str, list[float]] = {k: [] for k in names}
    ratios = RATIOS.split(",")
    n_cand = n_obj = 0
    for i in range(repeats + 2):
        data = images[i % len(images)]
        t = [time.perf_counter()]
        validated = svc.decode(data); t.append(time.perf_counter())
        loaded = c._load(validated); t.append(time.perf_counter())  # the route hands its decode over
        feat, fused, scale = c._features(loaded); t.append(time.perf_counter())
        faces = faces_in(c.face_detector, loaded) if c.face_detector is not None else None; t.append(time.perf_counter())
        none = np.zeros((0, 4), np.float32)
        prepared = c.proposer.prepare(loaded.image) if c.proposer is not None else None
        pending = PendingObjects(boxes=none) if c.proposer is None else PendingObjects(prepared=_done(prepared), faces=faces)
        found = c._finish_objects(loaded, pending, fused)
        objs = found.boxes
        t.append(time.perf_counter())
        w, h = loaded.original_size
        per_ratio = [candidates(w, h, r, c.grid) for r in ratios]; t.append(time.perf_counter())
        scores = c._score(feat, scale, np.concatenate(per_ratio), objs); t.append(time.perf_counter())
        parts = np.split(scores, np.cumsum([len(b) for b in per_ratio])[:-1])
        subjects = Subjects.of(found, loaded.original_size, c.protected_objects)
        size, nomass = loaded.original_size, [None] * len(ratios)
        c._choose(size, ratios, per_ratio, parts, nomass, subjects, Regions(), None); t.append(time.perf_counter())
        c.crop(svc.decode(data), ratios); t.append(time.perf_counter())
        n_cand, n_obj = sum(map(len, per_ratio)), len(objs)
        if i >= 2:  # warm-up
            d = np.diff(t) * 1e3
            for k, v in zip(names, [*d[:8], d[:8].sum(), d[8]]):
                stages[k].append(float(v))
    return {k: round(statistics.median(v), 1) for k, v in stages.items()} | {
        "n_candidates": n_cand, "n_objects": n_obj, "model_version": c.model_version}


def start_service(settings: dict, name: str, replicas: int, cpus_per_replica: float | None = None) -> tuple[str, int]:
    """serve.run of the ingress and the model deployment, ``replicas`` of each without autoscaling, on a
    free 127.0.0.1 port (Ray must be up); a quarter of ``cpus_per_replica`` to each ingress replica and
    three quarters to each model replica (None: the config file's). -> (URL, port) once /healthz answers."""
    from ray import serve

    from serve.app import application

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    def options(share: float) -> dict:
        cpus = {} if cpus_per_replica is None else {"ray_actor_options": {"num_cpus": share * cpus_per_replica}}
        return {"num_replicas": replicas, "autoscaling_config": None, **cpus}

    serve.run(application(settings, ingress=options(0.25), model=options(0.75)), name=name, route_prefix="/",
              blocking=False)
    url = f"http://127.0.0.1:{port}"
    requests.get(url + "/healthz", timeout=60)
    return url, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured time per concurrency level")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1, help="per replica")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--model", choices=["auto", "committed", "random"], default="auto")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "gaicd")
    ap.add_argument("--breakdown", action="store_true", help="also time each stage in-process")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    import ray
    from ray import serve

    images = photos(32, args.data)
    settings = {**model_args(args.model), "torch_threads": args.torch_threads, "max_batch_size": args.max_batch_size}
    report: dict = {"settings": settings, "replicas": args.replicas, "cores": os.cpu_count(),
                    "jpeg_kb_mean": round(sum(map(len, images)) / len(images) / 1024, 1)}
    if args.breakdown:
        report["breakdown_ms"] = breakdown(images, {**settings})
        print("in-process stages, median ms:", json.dumps(report["breakdown_ms"]), flush=True)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        url, _ = start_service(settings, "bench", args.replicas, os.cpu_count() / args.replicas)
        version = requests.get(url + "/healthz", timeout=30).json()["model_version"]
        run_level(url, images, 2 * args.replicas, 5.0)  # warm-up: every replica, threads, connections
        levels = [run_level(url, images, int(c), args.seconds) for c in args.clients.split(",")]
    finally:
        serve.shutdown()
        ray.shutdown()
    report.update(model_version=version, levels=levels)

    print(f"\nPOST /v1/crops?ratios={RATIOS}, {len(images)} ~1 MP JPEGs ({report['jpeg_kb_mean']} KB mean), "
          f"{args.replicas} replica(s) x {args.torch_threads} torch thread(s), max batch {args.max_batch_size}, "
          f"{os.cpu_count()} cores, model {version}, {args.seconds:.0f} s per level\n")
    print("| clients | requests | errors | p50 ms | p99 ms | requests/s | mean batch | server decode ms | server crop ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for lv in levels:
        print(f"| {lv['clients']} | {lv['requests']} | {lv['errors']} | {lv['p50_ms']:.0f} | {lv['p99_ms']:.0f} | "
              f"{lv['rps']:.2f} | {lv['mean_batch']:.2f} | {lv['server_decode_ms']:.1f} | {lv['server_crop_ms']:.0f} |")
        if lv["first_errors"]:
            print("   errors:", lv["first_errors"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
