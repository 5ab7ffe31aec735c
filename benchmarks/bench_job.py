"""The batch job under a careless operator: concurrent drivers, a takedown, an in-place edit, bad options.

    python benchmarks/bench_job.py --photos 60

Each case runs ``pipelines/crop_bucket.py`` as a user would, in fresh processes, and reads the output
back (local folders; the edit case on a local SeaweedFS, whose listing carries ETags):
1. two drivers on one output, the second started 8 s after the first: its exit code and how fast it
   left, the first's exit code, and duplicated (key, ratio) pairs in the output;
2. three photos deleted from the input, then ``--resume``: their rows and thumbnails left;
3. one S3 object rewritten in place with the same size, then ``--resume``: photos redone;
4. each bad option: exit code, lines on stderr, seconds, and whether a Ray session was started.
Prints a Markdown table. Photos: GAICD test images when ../shared/data is present, else samples.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GAICD = Path(os.environ.get("UGC_SHARED_DATA", ROOT.parent / "shared" / "data")) / "gaicd" / "images"
SCRIPT = ROOT / "pipelines" / "crop_bucket.py"


def photos(n: int) -> dict[str, bytes]:
    files = sorted(GAICD.glob("*.jpg"))[:n] if GAICD.is_dir() else []
    if len(files) >= n:
        return {p.name: p.read_bytes() for p in files}
    from pipelines.samples import augmented_photos

    return dict(augmented_photos(n, seed=3))


def crop_bucket(*args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, str(SCRIPT), "--no-progress", "--actors", "1", *args]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def output_pairs(out: Path) -> collections.Counter:
    from pipelines.storage import Location, read_output

    table = read_output(Location(str(out)), ["key", "ratio"])
    return collections.Counter(zip(table.column("key").to_pylist(), table.column("ratio").to_pylist()))


def ray_sessions() -> set[str]:
    root = Path(tempfile.gettempdir()) / "ray"
    return {p.name for p in root.glob("session_2*")} if root.is_dir() else set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=60)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-job-") as tmp:
        tmp = Path(tmp)
        src, out, thumbs = tmp / "photos", tmp / "crops", tmp / "thumbs"
        src.mkdir()
        for name, data in photos(args.photos).items():
            (src / name).write_bytes(data)
        job = ["--input", str(src), "--output", str(out), "--thumbnails", str(thumbs), "--ratios", "1:1,16:9"]

        # 1. two drivers, 8 s apart
        first = crop_bucket(*job, wait=False)
        time.sleep(8)
        t = time.perf_counter()
        second = crop_bucket(*job, "--resume")
        second_s = time.perf_counter() - t
        first.communicate()
        dups = sum(1 for n in output_pairs(out).values() if n > 1)
        rows.append(("two drivers on one output, 8 s apart",
                     f"second: exit {second.returncode} after {second_s:.1f} s ({second.stderr.strip()[:90]}...); "
                     f"first: exit {first.returncode}; duplicated pairs {dups}"))

        # 2. a takedown
        gone = sorted(p.name for p in src.iterdir())[:3]
        for name in gone:
            (src / name).unlink()
        again = crop_bucket(*job, "--resume")
        left = sum(n for (k, _), n in output_pairs(out).items() if k in gone)
        left_thumbs = sum(1 for name in gone for _ in (thumbs / name).glob("*.jpg")) if thumbs.is_dir() else 0
        rows.append(("3 photos deleted, then --resume", f"exit {again.returncode}; their rows left {left}, thumbnails "
                                                         f"left {left_thumbs}; `{again.stdout.strip().splitlines()[-1][-60:]}`"))

        # 3. an in-place edit that keeps the size, on S3
        from pipelines.object_store import start_local_s3

        store = start_local_s3(tmp / "s3", buckets=["bench-job"])
        try:
            env = {**os.environ, **store.env()}
            client = store.client()
            names = sorted(p.name for p in src.iterdir())[:10]
            for name in names:
                client.put_object(Bucket="bench-job", Key=f"in/{name}", Body=(src / name).read_bytes())
            s3job = ["--input", "s3://bench-job/in/", "--output", str(tmp / "s3crops"), "--ratios", "1:1",
                     "--endpoint-url", store.endpoint_url, "--summary-json", str(tmp / "s.json")]
            crop_bucket(*s3job, env=env)
            data = bytearray((src / names[0]).read_bytes())
            # same size, still a valid JPEG: the JFIF header's pixel density (as a metadata edit would);
            # a flipped bit elsewhere when there is no JFIF header
            at = 14 if data[6:11] == b"JFIF\x00" else len(data) // 2
            data[at] ^= 0x01
            client.put_object(Bucket="bench-job", Key=f"in/{names[0]}", Body=bytes(data))
            edited = crop_bucket(*s3job, "--resume", env=env)
            summary = json.loads((tmp / "s.json").read_text())
            rows.append(("one S3 object rewritten in place, same size, then --resume",
                         f"exit {edited.returncode}; photos redone {summary['planned']} of {len(names)}"))
        finally:
            store.stop()

        # 4. bad options
        bad = [["--batch-size", "0"], ["--rows-per-file", "0"], ["--cpus-per-actor", "0"], ["--actors", "-3"],
               ["--thumb-width", "0"], ["--limit", "0"], ["--max-error-rate", "nan"], ["--cpus-per-actor", "64"],
               ["--gpus-per-actor", "1"], ["--weights", str(tmp / "missing.pt")],
               ["--weights", str(next(src.iterdir()))]]
        for opt in bad:
            before = ray_sessions()
            t = time.perf_counter()
            r = crop_bucket("--input", str(src), "--output", str(tmp / "bad"), *opt)
            lines = r.stderr.strip().splitlines()
            started = bool(ray_sessions() - before)
            rows.append((f"`{' '.join(o if '/' not in o else Path(o).name for o in opt)}`",
                         f"exit {r.returncode}, {len(lines)} line, {time.perf_counter() - t:.1f} s, Ray started: "
                         f"{'yes' if started else 'no'}; {lines[-1][13:100] if lines else ''}"))
    print(f"\n{args.photos} photos, ratios 1:1,16:9, one actor; {os.cpu_count()} cores\n")
    print("| case | result |\n|---|---|")
    for case, result in rows:
        print(f"| {case} | {result} |")


if __name__ == "__main__":
    main()
