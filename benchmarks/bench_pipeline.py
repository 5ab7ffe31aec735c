"""Photos/s end to end through the batch pipeline (local S3 -> Ray actor pool -> Parquet) against the
plain single-process ``Cropper.crop_batch`` loop on the same photos, plus the pipeline's peak memory.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_pipeline.py --photos 500

Photos: the first N GAICD images when ../shared/data/gaicd is present, else N augmented
scikit-image samples. The bar: pipeline rate >= 60% of the plain loop's rate on the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
GAICD = Path(os.environ.get("UGC_SHARED_DATA", ROOT.parent / "shared" / "data")) / "gaicd" / "images"
RATIOS = ["1:1", "4:3", "16:9", "9:16"]


def load_photos(n: int, source: str) -> tuple[str, dict[str, bytes]]:
    if source in ("auto", "gaicd") and GAICD.is_dir():
        files = sorted(GAICD.glob("*.jpg"))[:n]
        if len(files) >= n:
            return f"GAICD images ({GAICD})", {f"bench/{p.name}": p.read_bytes() for p in files}
    from pipelines.samples import augmented_photos

    return "augmented scikit-image samples", {f"bench/{k}": v for k, v in augmented_photos(n, seed=7)}


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants (Ray's raylet, workers, ...)."""

    def __init__(self, exclude_pids: set[int] = frozenset(), interval: float = 0.5) -> None:
        self.exclude, self.interval, self.peak, self.peak_worker = set(exclude_pids), interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        total, worker = 0, 0
        for p in [me, *me.children(recursive=True)]:
            if p.pid in self.exclude:
                continue
            try:
                rss = p.memory_info().rss
                total += rss
                if "MapWorker" in " ".join(p.cmdline()) or "CropWorker" in p.name():
                    worker = max(worker, rss)
            except psutil.Error:
                continue
        self.peak, self.peak_worker = max(self.peak, total), max(self.peak_worker, worker)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def plain_loop(photos: dict[str, bytes], spec, batch_size: int) -> tuple[float, int, int]:
    """(seconds, photos cropped, peak RSS bytes) for the single-process loop; photos already in memory."""
    cropper = spec.build()
    items = list(photos.values())
    done = 0
    with PeakRSS() as mem:
        start = time.perf_counter()
        for i in range(0, len(items), batch_size):
            batch = items[i:i + batch_size]
            try:
                done += len(cropper.crop_batch(batch, RATIOS))
            except Exception:  # a bad photo sinks its whole batch here: retry one by one, as a loop would
                for one in batch:
                    try:
                        done += len(cropper.crop_batch([one], RATIOS))
                    except Exception:
                        pass
        seconds = time.perf_counter() - start
    return seconds, done, mem.peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=500)
    ap.add_argument("--source", choices=["auto", "gaicd", "samples"], default="auto")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import ray
    import torch

    from pipelines.batch import JobConfig, ModelSpec, run
    from pipelines.object_store import start_local_s3

    spec = ModelSpec(untrained_ok=True)
    source, photos = load_photos(args.photos, args.source)
    print(f"{len(photos)} photos from {source}; ratios {RATIOS}; torch threads {torch.get_num_threads()}; "
          f"{os.cpu_count()} cores; load average before {os.getloadavg()}")

    plain_s, plain_n, plain_peak = plain_loop(photos, spec, args.batch_size)
    print(f"plain loop: {plain_n} photos in {plain_s:.1f} s = {plain_n / plain_s:.2f} photos/s, "
          f"peak RSS {plain_peak / 2**20:.0f} MiB")

    store = start_local_s3(buckets=["bench"])
    try:
        os.environ.update(store.env())
        client = store.client()
        for k, v in photos.items():
            client.put_object(Bucket="bench", Key=k, Body=v)
        ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        cfg = JobConfig(input="s3://bench/bench/", output="s3://bench/crops/", ratios=RATIOS,
                        thumbnails="s3://bench/thumbs/", endpoint_url=store.endpoint_url, model=spec,
                        actors=args.actors, batch_size=args.batch_size, overwrite=True, progress=False)
        with PeakRSS(exclude_pids={store.process.pid}) as mem:
            summary = run(cfg)
        print(summary.line())
        ray.shutdown()
    finally:
        store.stop()
    pipe_rate, plain_rate = summary.photos_per_s, plain_n / plain_s
    result = {
        "photos": len(photos), "source": source, "ratios": RATIOS, "batch_size": args.batch_size,
        "actors": args.actors, "ray_cpus": args.cpus, "cores": os.cpu_count(), "torch_threads_plain": torch.get_num_threads(),
        "plain_photos_per_s": round(plain_rate, 3), "plain_seconds": round(plain_s, 1),
        "plain_peak_rss_mib": round(plain_peak / 2**20),
        "pipeline_photos_per_s": round(pipe_rate, 3), "pipeline_seconds": round(summary.seconds, 1),
        "pipeline_complete": summary.complete, "pipeline_ok": summary.ok, "pipeline_failed": summary.failed,
        "pipeline_peak_rss_mib": round(mem.peak / 2**20), "pipeline_peak_actor_rss_mib": round(mem.peak_worker / 2**20),
        "ratio_pipeline_to_plain": round(pipe_rate / plain_rate, 3), "bar": ">= 0.60",
        "load_average_after": os.getloadavg(), "python": platform.python_version(),
    }
    print(f"pipeline: {summary.planned} photos in {summary.seconds:.1f} s = {pipe_rate:.2f} photos/s "
          f"({result['ratio_pipeline_to_plain']:.0%} of the plain loop; bar 60%); "
          f"peak RSS driver+Ray {result['pipeline_peak_rss_mib']} MiB, largest actor {result['pipeline_peak_actor_rss_mib']} MiB")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
