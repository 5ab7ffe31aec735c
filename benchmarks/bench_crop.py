"""What a photo costs: ugc-crop against smartcrop.py on the same photos, ratios and cores.

    python benchmarks/bench_crop.py --data ../shared/data/gaicd --limit 200 --stages

Three measurements per method, each in fresh processes of its own, one method after the other:
- **busy**: photos per second with the whole machine busy, one worker process per core (``--workers``),
  each on its share of the photos, timed from the moment every worker is loaded and warm to the
  moment the last one finishes. This is the figure a platform divides its bill by.
- **latency**: one process, one photo at a time (``Cropper.crop``), p50 and p95 milliseconds.
- **peak RSS** of a busy worker.
``--stages`` adds ugc-crop's time per photo by stage (one process). ``--also NAME=DIR`` measures the
ugc-crop of another checkout (e.g. a ``git worktree`` of the previous commit) in the same run, so a
change is judged against its parent on the same machine. ``--refine`` sets the coarse-to-fine
``Cropper.refine`` (0: every candidate through the graph head).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RATIOS = ["1:1", "4:3", "16:9", "9:16"]


def smartcrop_all_ratios(path: Path) -> list[tuple[int, int, int, int]]:
    from PIL import Image
    from smartcrop import SmartCrop

    image = Image.open(path).convert("RGB")
    out = []
    for r in RATIOS:
        a, b = (int(v) for v in r.split(":"))
        top = SmartCrop().crop(image, a * 100, b * 100)["top_crop"]
        out.append((top["x"], top["y"], top["x"] + top["width"], top["y"] + top["height"]))
    return out


STAGES = {"_load": "decode", "_backbone": "backbone", "_finish_objects": "proposals (heads, NMS; waits for faces)",
          "_score_candidates": "S2CNet scoring (tokens, coarse readout, graph)", "_choose": "the choice (all ratios)"}


def timed_stages(cropper) -> dict[str, float]:
    """Wraps the Cropper's stages with timers (seconds summed per stage); its results are unchanged."""
    spent = {}
    for attr, name in STAGES.items():
        if not hasattr(cropper, attr):  # an older checkout (--also) may name a stage otherwise
            continue
        spent[name] = 0.0
        inner = getattr(cropper, attr)

        def timed(*a, _inner=inner, _name=name, **kw):
            t = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                spent[_name] += time.perf_counter() - t

        setattr(cropper, attr, timed)
    return spent


def photo_paths(data: Path, limit: int) -> list[Path]:
    ids = json.loads((data / "split.json").read_text())["test"][:limit]
    return [data / "images" / f"{i}.jpg" for i in ids]


def make_worker(method: str, refine: int | None, faces: bool = True):
    """-> (a function cropping one photo at every ratio, what it is, the Cropper or None)."""
    if method == "smartcrop":
        return smartcrop_all_ratios, "smartcrop.py 0.5 (crop() per ratio)", None
    import torch

    torch.set_num_threads(1)
    from s2cnet import Cropper

    kwargs = {} if refine is None else {"refine": refine or None}
    if not faces:
        kwargs["face_detector"] = None
    cropper = Cropper.from_pretrained(**kwargs)
    path = (f"coarse-to-fine, graph on {cropper.refine} a ratio" if getattr(cropper, "coarse_to_fine", False)
            else "every candidate through the graph")
    about = f"{cropper.model_version}, {path}, bf16 {cropper.bf16}" + ("" if faces else ", no face detector")
    return (lambda p: cropper.crop(p, RATIOS)), about, cropper


def busy_worker(method: str, refine: int | None, faces: bool, paths: list[Path], barrier, results) -> None:
    crop, about, _ = make_worker(method, refine, faces)
    for p in paths[:2]:
        crop(p)  # warm-up
    barrier.wait()
    t0 = time.time()
    for p in paths:
        crop(p)
    results.put({"photos": len(paths), "t0": t0, "t1": time.time(), "about": about,
                 "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def busy(method: str, args: argparse.Namespace) -> dict:
    """Photos/s of ``--workers`` fresh processes (spawned), each cropping its share of the photos."""
    paths = photo_paths(args.data, args.limit) * args.repeat
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(args.workers), ctx.Queue()
    procs = [ctx.Process(target=busy_worker, args=(method, args.refine, not args.no_face_detector, paths[i :: args.workers],
                                                   barrier, results))
             for i in range(args.workers)]
    for p in procs:
        p.start()
    rows = [results.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(r["t1"] for r in rows) - min(r["t0"] for r in rows)
    return {"photos_per_s": sum(r["photos"] for r in rows) / wall, "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            "about": rows[0]["about"]}


def latency(method: str, args: argparse.Namespace) -> dict:
    """One process, one photo at a time: p50 / p95 ms per photo (all ratios), and the stage table."""
    import numpy as np

    crop, about, cropper = make_worker(method, args.refine, not args.no_face_detector)
    paths = photo_paths(args.data, args.limit)
    crop(paths[0])
    spent = timed_stages(cropper) if cropper is not None and args.stages else None
    ms = []
    for p in paths:
        t = time.perf_counter()
        crop(p)
        ms.append((time.perf_counter() - t) * 1e3)
    out = {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "about": about}
    if spent is not None:
        out["stages_ms"] = {k: v / len(paths) * 1e3 for k, v in spent.items()}
    return out


def run_child(mode: str, method: str, tree: Path | None, args: argparse.Namespace) -> dict:
    """One measurement in a fresh interpreter; ``tree``: import s2cnet from that checkout instead."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve())
    argv = ["--data", str(args.data), "--limit", str(args.limit), "--workers", str(args.workers),
            "--repeat", str(args.repeat), *(["--refine", str(args.refine)] if args.refine is not None else []),
            *(["--stages"] if args.stages else []), *(["--no-face-detector"] if args.no_face_detector else []),
            "--child", f"{mode}:{method}"]
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], check=True, capture_output=True,
                          text=True, env=env, cwd=str(tree.resolve()) if tree is not None else None)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/gaicd"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="busy processes (default: one per core)")
    ap.add_argument("--repeat", type=int, default=1, help="crop the photos this many times in the busy run")
    ap.add_argument("--refine", type=int, default=None, help="Cropper.refine (default: the Cropper's; 0: full path)")
    ap.add_argument("--stages", action="store_true", help="also print ugc-crop's time per photo by stage")
    ap.add_argument("--no-face-detector", action="store_true", help="ugc-crop with face_detector=None (subject heads only)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=DIR",
                    help="also measure the ugc-crop of the checkout DIR, labelled NAME (repeatable)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # MODE:METHOD, JSON out
    args = ap.parse_args()
    args.data = args.data.resolve()
    if args.child:
        mode, method = args.child.split(":")
        print(json.dumps(busy(method, args) if mode == "busy" else latency(method, args)))
        return
    trees = [("ugc-crop", None)] + [(n, Path(d)) for n, d in (a.split("=", 1) for a in args.also)]
    rows = []
    for name, tree in trees + [("smartcrop.py", None)]:
        method = "smartcrop" if name == "smartcrop.py" else "ugc"
        b, lat = run_child("busy", method, tree, args), run_child("latency", method, tree, args)
        rows.append((name, b, lat))
    print(f"\n{args.limit} GAICD test photos (1024 px long side) x{args.repeat}, ratios {','.join(RATIOS)}, "
          f"{os.cpu_count()} cores, {args.workers} busy workers; each method in fresh processes\n")
    smart = rows[-1][1]["photos_per_s"]
    print("| method | photos/s, machine busy | vs smartcrop.py | p50 ms a photo | p95 ms | peak RSS a worker (MB) |")
    print("|---|---|---|---|---|---|")
    for name, b, lat in rows:
        print(f"| {name} ({b['about']}) | {b['photos_per_s']:.1f} | {b['photos_per_s'] / smart:.2f}x | "
              f"{lat['p50_ms']:.0f} | {lat['p95_ms']:.0f} | {b['peak_rss_mb']:.0f} |")
    if args.stages:
        for name, _, lat in rows:
            if "stages_ms" in lat:
                print(f"\n| {name} stage (one process) | ms a photo |\n|---|---|")
                for stage, ms in lat["stages_ms"].items():
                    print(f"| {stage} | {ms:.1f} |")


if __name__ == "__main__":
    main()
