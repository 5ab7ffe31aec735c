"""How much the coarse-to-fine path (``Cropper.refine``) gives up against scoring every candidate.

    python benchmarks/bench_coarse.py --data ../shared/data/gaicd --refine 4,8,16

On the 200 GAICD test photos, per K (graph-scored candidates per ratio):
- **same choice**: the share of (photo, ratio) pairs, at 1:1, 4:3, 16:9, 9:16 and the free ratio on the
  Cropper's own candidates and proposals, where the coarse-to-fine crop is the full path's crop;
- **graph-scored**: how many candidates per ratio the graph head scored, of how many;
- **GAICD MOS**: on the human-rated candidates (GAICD's protocol, our proposals as objects), the mean
  MOS of the crop each path ranks first, and Acc1/5 (that crop among the 5 best-rated).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from s2cnet import Cropper
from s2cnet.image_stage import for_model
from s2cnet.training.data import read_yxyx

RATIOS = ["1:1", "4:3", "16:9", "9:16", None]


def rated_choice(cropper: Cropper, path: Path, boxes: np.ndarray, refine: int | None) -> int:
    """Index of the rated box ranked first: by full scores, or by the graph over the coarse top ``refine``."""
    detail = cropper._load(path)
    loaded = for_model(detail, cropper.short_side)
    started = cropper._start_objects(detail, loaded, None)
    feat, maps, scale = cropper._features(loaded)
    objects = cropper._finish_objects(loaded, started, maps).boxes
    h, w = float(feat.shape[-2] * 16), float(feat.shape[-1] * 16)
    crops = torch.from_numpy(boxes * scale)
    objs = torch.from_numpy(objects * scale)
    model = cropper.model
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cropper.bf16):
        tokens = model.crop_tokens(feat, crops, w, h)
        idx = torch.arange(len(boxes)) if refine is None else torch.argsort(model.coarse_scores(tokens), descending=True)[:refine]
        fine = model.score_tokens(feat, tokens[idx], crops[idx], objs, w, h, cropper.graph_chunk).float()
    return int(idx[int(torch.argmax(fine))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/gaicd"))
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--refine", default="4,8,16", help="comma-separated K values to compare with the full path")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.refine.split(",")]
    ids = json.loads((args.data / "split.json").read_text())["test"][: args.limit]
    croppers = {None: Cropper.from_pretrained(refine=None), **{k: Cropper.from_pretrained(refine=k) for k in ks}}
    if not croppers[ks[0]].coarse_to_fine:
        raise SystemExit("these weights have no coarse readout: nothing to compare")
    same = dict.fromkeys(ks, 0)
    scored = {k: [] for k in [None, *ks]}
    seconds = dict.fromkeys([None, *ks], 0.0)
    mos = {k: [] for k in [None, *ks]}
    top5 = {k: [] for k in [None, *ks]}
    pairs = 0
    for n, i in enumerate(ids):
        path = args.data / "images" / f"{i}.jpg"
        results = {}
        for k, cropper in croppers.items():
            t = time.perf_counter()
            results[k] = cropper.analyse(path, RATIOS)
            seconds[k] += time.perf_counter() - t
            scored[k] += [(int(m.sum()), len(m)) for m in results[k].graph_scored.values()]
        full = [c.box for c in results[None].crops]
        pairs += len(full)
        for k in ks:
            same[k] += sum(a == b for a, b in zip(full, [c.box for c in results[k].crops]))
        boxes, rated = read_yxyx(args.data / "annotations" / f"{i}.txt", with_score=True)
        fifth = np.sort(rated)[::-1][min(4, len(rated) - 1)]
        for k in [None, *ks]:
            j = rated_choice(croppers[None], path, boxes, k)
            mos[k].append(float(rated[j]))
            top5[k].append(float(rated[j] >= fifth))
        if n % 50 == 0:
            print(f"  {n}/{len(ids)}", flush=True)
    print(f"\n{len(ids)} GAICD test photos, ratios {', '.join(r or 'free' for r in RATIOS)}; model "
          f"{croppers[None].model_version}\n")
    print("| graph-scored per ratio (K) | same crop as the full path | candidates through the graph | "
          "GAICD: MOS of the top-ranked rated crop | Acc1/5 | ms a photo (one process, all ratios) |")
    print("|---|---|---|---|---|---|")
    for k in [None, *ks]:
        got, of = np.mean([g for g, _ in scored[k]]), np.mean([o for _, o in scored[k]])
        agree = "-" if k is None else f"{100 * same[k] / pairs:.1f}%"
        print(f"| {'all (full path)' if k is None else k} | {agree} | {got:.1f} of {of:.1f} | {np.mean(mos[k]):.3f} | "
              f"{100 * np.mean(top5[k]):.1f} | {1e3 * seconds[k] / len(ids):.0f} |")


if __name__ == "__main__":
    main()
