"""Evaluate on GAICD with GAIC's metrics, side by side with baselines.

    python -m s2cnet.training.evaluate --data ../shared/data/gaicd --split test
    python -m s2cnet.training.evaluate --split test --objects proposed     # our own object proposals

Rows: the model; "crop area" (bigger is better); smartcrop.py scoring the same candidates; and the
GAIC-style network without the graph (RoI+RoD only) when its weights are given with --gaic-weights.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s2cnet.cropper import DEFAULT_WEIGHTS, WEIGHTS_DIR, Cropper
from s2cnet.training.data import GAICD
from s2cnet.training.fcdb import FCDBPairs, boundary_displacement, iou, pair_accuracy, split_fcdb, winner_first
from s2cnet.training.metrics import METRIC_COLUMNS, average_metrics, image_metrics

# A scorer maps (original image, crops [N,4], paper objects [M,4]) to scores [N].
Scorer = Callable[[Image.Image, np.ndarray, np.ndarray], np.ndarray]


def area_scorer(image: Image.Image, crops: np.ndarray, objects: np.ndarray) -> np.ndarray:
    return (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])


def smartcrop_scorer(analysis_side: int = 256) -> Scorer:
    """smartcrop.py's own crop score (skin, edges, saturation, thirds) on the same candidates."""
    from smartcrop import SmartCrop

    sc = SmartCrop()

    def score(image: Image.Image, crops: np.ndarray, objects: np.ndarray) -> np.ndarray:
        w0, h0 = image.size
        s = analysis_side / min(w0, h0)
        small = image.resize((max(1, round(w0 * s)), max(1, round(h0 * s))), Image.LANCZOS)
        feats_img = sc.prepare_features_image(small)
        d = sc.score_down_sample
        down = feats_img.resize((int(np.ceil(small.size[0] / d)), int(np.ceil(small.size[1] / d))), Image.LANCZOS)
        feats = sc.precompute_features(down)
        prescore = float(np.sum(feats)) * sc.outside_importance
        out = []
        for x1, y1, x2, y2 in crops * s / d:
            cx, cy = int(x1), int(y1)
            cw, ch = max(1, int(x2 - x1)), max(1, int(y2 - y1))
            importance = sc.get_importance(height=ch, width=cw) - sc.outside_importance
            importance = importance[: feats.shape[0] - cy, : feats.shape[1] - cx]
            out.append(sc.score(feats, prescore, (cx, cy, cw, ch), importance))
        return np.array(out)

    return score


def network_scorer(cropper: Cropper, objects: str = "paper") -> Scorer:
    """objects: 'paper' (GAICD's precomputed boxes), 'none' (no object nodes) or 'proposed' (the
    cropper's own proposer). Scores go through ``Cropper.score``, the product's own path."""

    def score(image: Image.Image, crops: np.ndarray, paper_objects: np.ndarray) -> np.ndarray:
        objs = {"paper": paper_objects, "proposed": None}.get(objects, np.zeros((0, 4), np.float32))
        return cropper.score(image, crops, objs)

    return score


def evaluate(scorer: Scorer, dataset: GAICD, limit: int | None = None) -> tuple[dict[str, float], float]:
    """Average metrics over the split and the seconds spent per image."""
    per_image, t0 = [], time.time()
    ids = dataset.ids[:limit] if limit else dataset.ids
    for image_id in ids:
        crops, mos, objects = dataset.load_boxes(image_id)
        # A lazily opened file: the Cropper decodes it as it decodes an upload (JPEG draft mode)
        with Image.open(dataset.image_path(image_id)) as image:
            per_image.append(image_metrics(scorer(image, crops, objects), mos))
    return average_metrics(per_image), (time.time() - t0) / max(len(ids), 1)


def evaluate_fcdb(scorer: Scorer, dataset: FCDBPairs, cropper: Cropper | None = None) -> dict[str, float]:
    """FCDB pair accuracy (%) of a scorer on every held-out pair; with a ``cropper``, also the IoU and
    BDE of its free-ratio crop against the crop a person drew. No paper boxes exist for FCDB."""
    scores, ious, bdes = [], [], []
    none = np.zeros((0, 4), np.float32)
    for name in dataset.names:
        boxes, _ = winner_first(dataset.pairs[name])
        with Image.open(dataset.image_path(name)) as image:
            if len(boxes):
                scores.append(np.asarray(scorer(image, boxes, none), np.float64))
            if cropper is not None:
                box, human = np.array(cropper.crop(image, ratios=None)[0].box, np.float64), np.array(dataset.best[name])
                ious.append(iou(box, human))
                bdes.append(boundary_displacement(box, human, *image.size))
    row = {"pair_acc": pair_accuracy(np.concatenate(scores)) * 100}
    if ious:
        row.update(IoU=float(np.mean(ious)), BDE=float(np.mean(bdes)))
    return row


def format_table(rows: dict[str, dict[str, float]]) -> str:
    head = "| method | " + " | ".join(METRIC_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(METRIC_COLUMNS) + 1)]
    for name, m in rows.items():
        cells = [f"{m[c]:.3f}" if c in ("SRCC", "PCC") else f"{m[c]:.1f}" for c in METRIC_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/gaicd"))
    ap.add_argument("--split", default="test", choices=["train", "test"])
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--gaic-weights", type=Path, default=WEIGHTS_DIR / "gaic_baseline.pt",
                    help="the graph-free network (RoI+RoD only); its row is skipped if the file is absent")
    ap.add_argument("--objects", default="paper", choices=["paper", "none", "proposed", "all"],
                    help="object nodes for the model; 'all' evaluates each of the three")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fp32", action="store_true", help="no bfloat16 scoring even where the CPU has it")
    ap.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    ap.add_argument("--fcdb", type=Path, default=None,
                    help="FCDB folder: also report pair accuracy and best-crop IoU/BDE on our held-out FCDB photos")
    ap.add_argument("--fcdb-val-size", type=int, default=138, help="the held-out FCDB photos (train.py's split)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = GAICD(args.data, args.split)
    rows: dict[str, dict[str, float]] = {}
    modes = ["paper", "none", "proposed"] if args.objects == "all" else [args.objects]
    cropper = Cropper.from_pretrained(args.weights, proposer="default" if "proposed" in modes else None,
                                      bf16=False if args.fp32 else None)
    for mode in modes:
        name = f"S2CNet ({ {'paper': 'paper objects', 'none': 'no objects', 'proposed': 'our proposals'}[mode] })"
        rows[name], sec = evaluate(network_scorer(cropper, mode), dataset, args.limit)
        m = rows[name]
        print(f"{name}: SRCC {m['SRCC']:.3f} Acc5 {m['Acc5']:.1f} Acc10 {m['Acc10']:.1f} ({sec * 1000:.0f} ms/image)", flush=True)
    if not args.no_baselines:
        if args.gaic_weights.exists():
            gaic = Cropper.from_pretrained(args.gaic_weights, proposer=None, bf16=False if args.fp32 else None)
            rows["GAIC-style, no graph (RoI+RoD)"], _ = evaluate(network_scorer(gaic, "none"), dataset, args.limit)
        else:
            print(f"(no graph-free baseline: {args.gaic_weights} not found)")
        rows["crop area"], _ = evaluate(area_scorer, dataset, args.limit)
        rows["smartcrop.py"], _ = evaluate(smartcrop_scorer(), dataset, args.limit)
    print(f"\nGAICD {args.split} ({args.limit or len(dataset)} images)\n")
    print(format_table(rows))
    if args.fcdb:
        fcdb = FCDBPairs(args.fcdb, split_fcdb(args.fcdb, args.fcdb_val_size, seed=0)[1][: args.limit])
        fcdb_rows = {"S2CNet (our proposals)": evaluate_fcdb(network_scorer(cropper, "proposed"), fcdb, cropper)
                     if "proposed" in modes else evaluate_fcdb(network_scorer(cropper, "none"), fcdb, cropper)}
        if not args.no_baselines:
            if args.gaic_weights.exists():
                fcdb_rows["GAIC-style, no graph (RoI+RoD)"] = evaluate_fcdb(network_scorer(gaic, "none"), fcdb, gaic)
            fcdb_rows["crop area"] = evaluate_fcdb(area_scorer, fcdb)
            fcdb_rows["smartcrop.py"] = evaluate_fcdb(smartcrop_scorer(), fcdb)
        print(f"\nFCDB held-out ({len(fcdb)} photos, {sum(len(fcdb.pairs[n]) for n in fcdb.names)} pairs)\n")
        print("| method | pair accuracy | free-ratio IoU | BDE |\n|---|---|---|---|")
        for name, r in fcdb_rows.items():
            print(f"| {name} | {r['pair_acc']:.1f} | " + (f"{r['IoU']:.3f} | {r['BDE']:.3f} |" if "IoU" in r else "- | - |"))
        rows = {**rows, **{f"FCDB: {k}": v for k, v in fcdb_rows.items()}}
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
