"""k-fold cross-validation of training recipes on GAICD's training photos: every recipe is validated on
all 1,036 of them (each once, over its k runs) instead of 60, so recipes can be told apart from seeds.

    python -m s2cnet.training.cross_validate --recipes shipped,graph-free,base-readout --folds 5 \
        --out runs/cv --threads 1                       # hours on CPU: unattended, resumable
    python -m s2cnet.training.cross_validate --out runs/cv --summary   # the table, from what has finished

Runs go to ``<out>/<recipe>/fold<k>``; a fold whose ``final.pt`` holds every epoch is skipped, and an
interrupted one resumes from its ``last.pt`` (``train.train`` does that itself), so the same command
can be started again after a crash or on another day. The summary reads each run's chosen checkpoint
(the weight average when SWA ran and scored higher, as ``export`` chooses) and prints, per recipe,
the mean and spread (standard deviation over folds) of validation SRCC, Acc5 and Acc10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from s2cnet.training.train import TrainConfig, train

# The shipped recipe (scripts/train_all.sh) and the variants the comparison needs: the same data,
# initialisation and schedule, one switch apart. ``init`` and ``fcdb`` are filled in from --data.
SHIPPED = {"epochs": 6, "swa_from": 3, "scale_jitter": [224, 256, 288], "listwise_weight": 1.0,
           "model": {"tf_padding": True}}
RECIPES: dict[str, dict] = {
    "shipped": SHIPPED,
    "graph-free": {**SHIPPED, "model": {**SHIPPED["model"], "use_graph": False}},
    "base-readout": {**SHIPPED, "model": {**SHIPPED["model"], "base_readout": True}},
}
METRICS = ("SRCC", "Acc5", "Acc10")


def fold_config(recipe: dict, data: Path, out: Path, folds: int, fold: int, seed: int, threads: int | None,
                init: Path | None, fcdb: Path | None, limit: int | None = None, epochs: int | None = None) -> TrainConfig:
    cfg = {**recipe, "data": str(data / "gaicd") if (data / "gaicd").is_dir() else str(data), "out": str(out),
           "folds": folds, "fold": fold, "seed": seed, "val_seed": 0, "threads": threads, "progress_every": 0,
           "init": str(init) if init else None, "fcdb": str(fcdb) if fcdb else None, "limit": limit}
    if epochs is not None:
        cfg["epochs"] = epochs
        cfg["swa_from"] = min(cfg.get("swa_from") or epochs, epochs - 1) if cfg.get("swa_from") is not None else None
    return TrainConfig.from_dict(cfg)


def finished(run: Path, epochs: int) -> bool:
    final = run / "final.pt"
    if not final.exists():
        return False
    history = torch.load(final, map_location="cpu", weights_only=False).get("history", [])
    return len(history) >= epochs


def chosen_metrics(run: Path) -> dict[str, float] | None:
    """The validation metrics of the checkpoint export would ship from this run, or None if unfinished."""
    final = run / "final.pt"
    if not final.exists():
        return None
    history = torch.load(final, map_location="cpu", weights_only=False).get("history", [])
    if not history:
        return None
    row = history[-1]
    swa = "swa_val_SRCC" in row and row["swa_val_SRCC"] >= row["val_SRCC"]
    return {m: row[f"swa_val_{m}" if swa else f"val_{m}"] for m in METRICS}


def summary(out: Path, folds: int) -> list[dict]:
    """Per recipe folder under ``out``: folds finished, mean and spread of each metric."""
    rows = []
    for recipe in sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []:
        got = [m for k in range(folds) if (m := chosen_metrics(recipe / f"fold{k}")) is not None]
        if not got:
            continue
        row = {"recipe": recipe.name, "folds": len(got)}
        for m in METRICS:
            values = [g[m] for g in got]
            row[m] = statistics.fmean(values)
            row[f"{m}_sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        rows.append(row)
    return rows


def print_summary(rows: list[dict], folds: int) -> None:
    print(f"\n| recipe | folds done (of {folds}) | SRCC mean (sd) | Acc5 mean (sd) | Acc10 mean (sd) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['folds']} | {r['SRCC']:.4f} ({r['SRCC_sd']:.4f}) | {r['Acc5']:.1f} ({r['Acc5_sd']:.1f}) "
              f"| {r['Acc10']:.1f} ({r['Acc10_sd']:.1f}) |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="the datasets folder (or a GAICD folder)")
    ap.add_argument("--recipes", default="shipped,graph-free,base-readout", help=f"comma-separated, of {sorted(RECIPES)}")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("runs/cv"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--init", type=Path, default=None,
                    help="backbone initialisation (default: <data>/pretrained/mobilenet_v2_imagenet_tf2.pth when present)")
    ap.add_argument("--no-fcdb", action="store_true", help="train without FCDB's pairs")
    ap.add_argument("--limit", type=int, default=None, help="training photos per fold (smoke runs)")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs (smoke runs)")
    ap.add_argument("--summary", action="store_true", help="only print the table of what has finished")
    args = ap.parse_args(argv)
    if args.folds < 2:
        ap.error("--folds must be at least 2")
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in names if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipes {unknown}; known: {sorted(RECIPES)}")
    if not args.summary:
        init = args.init or next((p for p in [args.data / "pretrained" / "mobilenet_v2_imagenet_tf2.pth"] if p.exists()), None)
        fcdb = None if args.no_fcdb or not (args.data / "fcdb").is_dir() else args.data / "fcdb"
        for fold in range(args.folds):  # fold-major: a partial run already compares every recipe
            for name in names:
                run = args.out / name / f"fold{fold}"
                cfg = fold_config(RECIPES[name], args.data, run, args.folds, fold, args.seed, args.threads, init, fcdb,
                                  args.limit, args.epochs)
                if finished(run, cfg.epochs):
                    continue
                print(f"== {name} fold {fold} of {args.folds} -> {run}", flush=True)
                train(cfg)
    rows = summary(args.out, args.folds)
    print_summary(rows, args.folds)
    (args.out / "summary.json").parent.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
