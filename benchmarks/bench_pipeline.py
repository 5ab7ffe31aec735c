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
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: the repository is the package
    sys.path.insert(0, str(ROOT))
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

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def plain_loop(photos: dict[str, bytes], spec, batch_size: int) -> tuple[float, int, int]:
    """(seconds, photos cropped, peak RSS bytes) for the single-process loop over photos in memory;
    the timing includes building the Cropper, as the pipeline's includes starting its actors."""
    items = list(photos.values())
    done = 0
    with PeakRSS() as mem:
        start = time.perf_counter()
        cropper = spec.build()
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


def pipeline(store, spec, args, thumbnails: bool) -> tuple[object, int, int]:
    """(Summary, peak RSS of driver + Ray processes, peak RSS of one actor) for one full run."""
    from pipelines.batch import run
    from pipelines.config import JobConfig

    cfg = JobConfig(input="s3://bench/bench/", output="s3://bench/crops/", ratios=RATIOS,
                    thumbnails="s3://bench/thumbs/" if thumbnails else None, endpoint_url=store.endpoint_url,
                    model=spec, actors=args.actors, batch_size=args.batch_size, overwrite=True, progress=False)
    with PeakRSS(exclude_pids={store.process.pid}) as mem:
        summary = run(cfg)
    assert summary.complete and summary.planned == args.photos, summary.line()
    return summary, mem.peak, mem.peak_worker


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

    from pipelines.config import ModelSpec
    from pipelines.object_store import start_local_s3

    spec = ModelSpec(untrained_ok=True)
    source, photos = load_photos(args.photos, args.source)
    args.photos = len(photos)
    load_before = os.getloadavg()
    print(f"{len(photos)} photos from {source}; ratios {RATIOS}; batch {args.batch_size}; "
          f"{os.cpu_count()} cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"torch threads (plain loop) {torch.get_num_threads()}; load average before {load_before}")

    def plain(label: str) -> tuple[float, int]:
        s, n, peak = plain_loop(photos, spec, args.batch_size)
        print(f"plain loop ({label}): {n} photos in {s:.1f} s = {n / s:.2f} photos/s, peak RSS {peak / 2**20:.0f} MiB")
        return n / s, peak

    plain_before, plain_peak = plain("before")
    store = start_local_s3(buckets=["bench"])
    try:
        os.environ.update(store.env())
        client = store.client()
        for k, v in photos.items():
            client.put_object(Bucket="bench", Key=k, Body=v)
        ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **store.env()}})
        runs = {}
        for thumbs in (False, True):
            summary, peak, actor_peak = pipeline(store, spec, args, thumbs)
            runs[thumbs] = (summary, peak, actor_peak)
            print(f"pipeline ({'with' if thumbs else 'no'} thumbnails): {summary.line()}; peak RSS driver+Ray "
                  f"{peak / 2**20:.0f} MiB, largest actor {actor_peak / 2**20:.0f} MiB")
        ray.shutdown()
    finally:
        store.stop()
    plain_after, _ = plain("after")
    plain_rate = (plain_before + plain_after) / 2
    rate, rate_thumbs = runs[False][0].photos_per_s, runs[True][0].photos_per_s
    result = {
        "photos": len(photos), "source": source, "ratios": RATIOS, "batch_size": args.batch_size,
        "actors": args.actors, "ray_cpus": args.cpus, "cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads_plain": torch.get_num_threads(),
        "plain_photos_per_s_before": round(plain_before, 3), "plain_photos_per_s_after": round(plain_after, 3),
        "plain_peak_rss_mib": round(plain_peak / 2**20),
        "pipeline_photos_per_s": round(rate, 3), "pipeline_seconds": round(runs[False][0].seconds, 1),
        "pipeline_peak_rss_mib": round(runs[False][1] / 2**20),
        "pipeline_peak_actor_rss_mib": round(runs[False][2] / 2**20),
        "pipeline_with_thumbnails_photos_per_s": round(rate_thumbs, 3),
        "pipeline_with_thumbnails_peak_rss_mib": round(runs[True][1] / 2**20),
        "ratio_pipeline_to_plain": round(rate / plain_rate, 3),
        "ratio_pipeline_with_thumbnails_to_plain": round(rate_thumbs / plain_rate, 3), "bar": ">= 0.60",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "python": platform.python_version(),
    }
    print(f"RESULT pipeline {rate:.2f} photos/s = {rate / plain_rate:.0%} of the plain loop's "
          f"{plain_rate:.2f} photos/s (mean of before/after; bar 60%); with thumbnails {rate_thumbs:.2f} photos/s "
          f"= {rate_thumbs / plain_rate:.0%}; pipeline peak RSS (driver + Ray processes, shared pages counted per "
          f"process) {result['pipeline_peak_rss_mib']} MiB, largest actor {result['pipeline_peak_actor_rss_mib']} MiB")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
