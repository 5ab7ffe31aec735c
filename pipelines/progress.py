"""Progress of a batch job in its own terms: photos done of the total, rate and ETA.

Actors report each finished batch to a zero-CPU Ray actor; a driver thread reads it and shows a tqdm
bar on a terminal, or one log line per interval otherwise (logs of a long `ray submit` run). Ray
Data's own bars count blocks and rows of internal operators, which say little about a 10 M-photo job.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class Counter:
    """The Ray actor the crop actors report to (created with ``ray.remote(num_cpus=0)``)."""

    def __init__(self) -> None:
        self.photos = 0
        self.failed = 0

    def add(self, photos: int, failed: int) -> None:
        self.photos += photos
        self.failed += failed

    def read(self) -> tuple[int, int]:
        return self.photos, self.failed


def eta_line(done: int, total: int, failed: int, seconds: float) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    left = (total - done) / rate if rate > 0 else float("inf")
    eta = "?" if left == float("inf") else time.strftime("%H:%M:%S", time.gmtime(left))
    return (f"crop_bucket: {done}/{total} photos ({done / max(total, 1):.0%}), {failed} failed, "
            f"{rate:.2f} photos/s, ETA {eta}")


class ProgressReporter:
    """Polls the counter on a thread until ``stop()``: a bar on a terminal, else a line per ``interval_s``."""

    def __init__(self, counter, total: int, stream: TextIO | None = None, interval_s: float = 30.0) -> None:
        self.counter, self.total, self.stream = counter, total, stream or sys.stderr
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="crop-progress")
        self._start = time.perf_counter()

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _read(self) -> tuple[int, int]:
        import ray

        try:
            return ray.get(self.counter.read.remote(), timeout=10)
        except Exception:  # a slow or lost counter never stops the job
            return -1, -1

    def _run(self) -> None:
        bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            bar = tqdm(total=self.total, unit="photo", file=self.stream, desc="crop_bucket")
        last_line = 0.0
        while not self._stop.wait(1.0 if bar is not None else min(self.interval_s, 5.0)):
            done, failed = self._read()
            if done < 0:
                continue
            if bar is not None:
                bar.n = done
                bar.set_postfix(failed=failed, refresh=False)
                bar.refresh()
            elif time.perf_counter() - last_line >= self.interval_s:
                last_line = time.perf_counter()
                print(eta_line(done, self.total, failed, last_line - self._start), file=self.stream, flush=True)
        done, failed = self._read()
        if bar is not None:
            bar.n = max(done, bar.n)
            bar.close()
