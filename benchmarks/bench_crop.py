"""Speed of ``Cropper.crop_batch`` (4 ratios) against smartcrop.py on the same photos and ratios.

    python benchmarks/bench_crop.py --data ../shared/data/gaicd --limit 200

Each method runs in a fresh process of its own (one after the other); photos are decoded from their
files each time.
The Cropper computes on torch's threads (``--threads``, default 1): the shipped proposer's heads
(faces, people, objects, saliency) read the scorer's own backbone pass. Only a proposer with an
image-only stage (the Haar cascade, for weights without subject heads) uses a second thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

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


STAGES = {"_load": "decode", "_backbone": "backbone", "_finish_objects": "proposals (heads, NMS)",
          "_score": "S2CNet scoring (nodes and graph)", "_choose": "the choice (all ratios)"}


def timed_stages(cropper) -> dict[str, float]:
    """Wraps the Cropper's stages with timers (seconds summed per stage); its results are unchanged."""
    spent = dict.fromkeys(STAGES.values(), 0.0)
    for attr, name in STAGES.items():
        inner = getattr(cropper, attr)

        def timed(*a, _inner=inner, _name=name, **kw):
            t = time.perf_counter()
            try:
                return _inner(*a, **kw)
            finally:
                spent[_name] += time.perf_counter() - t

        setattr(cropper, attr, timed)
    return spent


def measure(method: str, args: argparse.Namespace) -> dict:
    """images/s of one method on the photos, in this process (the caller gives each its own)."""
    ids = json.loads((args.data / "split.json").read_text())["test"][: args.limit]
    paths = [args.data / "images" / f"{i}.jpg" for i in ids]
    if method == "smartcrop":
        smartcrop_all_ratios(paths[0])  # warm-up
        t0 = time.perf_counter()
        for p in paths:
            smartcrop_all_ratios(p)
        return {"images_per_s": len(paths) / (time.perf_counter() - t0), "photos": len(paths)}
    torch.set_num_threads(args.threads)
    from s2cnet import Cropper

    cropper = Cropper.from_pretrained(args.weights)
    cropper.crop_batch(paths[:2], RATIOS)  # warm-up
    spent = timed_stages(cropper)
    t0 = time.perf_counter()
    for i in range(0, len(paths), args.batch):
        cropper.crop_batch(paths[i : i + args.batch], RATIOS)
    ours = len(paths) / (time.perf_counter() - t0)
    proposer = cropper.proposer
    shared = getattr(proposer, "shares_backbone", False)
    heads = "subject and saliency heads" if getattr(proposer, "subject", None) is not None else "saliency head + Haar faces"
    kind = f"{heads} on the S2CNet backbone" if shared else type(proposer).__name__ if proposer is not None else "none"
    return {"images_per_s": ours, "photos": len(paths), "stages_ms": {k: v / len(paths) * 1e3 for k, v in spent.items()},
            "about": f"torch threads {torch.get_num_threads()}, bf16 graph head {cropper.bf16}, proposals: {kind}, "
                     f"graph chunk {getattr(cropper, 'graph_chunk', None)}, model {cropper.model_version}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/gaicd"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the face worker is one more)")
    ap.add_argument("--weights", type=Path, default=None, help="S2CNet weights (default: the committed ones)")
    ap.add_argument("--stages", action="store_true", help="also print the Cropper's time per photo by stage")
    ap.add_argument("--method", choices=["ugc", "smartcrop"], help=argparse.SUPPRESS)  # one method, JSON out
    args = ap.parse_args()
    if args.method:
        print(json.dumps(measure(args.method, args)))
        return
    # Each method in a fresh process: in a shared one, the second inherits the first's allocator state
    # (glibc's mmap threshold rises with the blocks freed), which moved smartcrop.py by up to 30%.
    runs = {m: json.loads(subprocess.run([sys.executable, __file__, *sys.argv[1:], "--method", m], check=True,
                                         capture_output=True, text=True).stdout.splitlines()[-1])
            for m in ("ugc", "smartcrop")}
    ours = runs["ugc"]
    print(f"\n{ours['photos']} GAICD test photos (1024 px long side), ratios {','.join(RATIOS)}, "
          f"{os.cpu_count()} cores, each method in its own process; {ours['about']}\n")
    print("| method | images/s |\n|---|---|")
    print(f"| ugc-crop Cropper.crop_batch (proposals + S2CNet) | {ours['images_per_s']:.1f} |")
    print(f"| smartcrop.py 0.5 (crop() per ratio) | {runs['smartcrop']['images_per_s']:.1f} |")
    if args.stages:
        print("\n| ugc-crop stage | ms a photo |\n|---|---|")
        for name, ms in ours["stages_ms"].items():
            print(f"| {name} | {ms:.1f} |")
        print(f"| all (1 / images/s) | {1e3 / ours['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
