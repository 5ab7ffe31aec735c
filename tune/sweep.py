"""Ray Tune sweep over S2CNet's graph design and training knobs, ASHA-scheduled.

    python tune/sweep.py --smoke                               # about 30 s on 2 cores; synthetic data without GAICD
    nice -n 19 python tune/sweep.py --samples 4 --init runs/saliency.pt
    nice -n 19 python tune/sweep.py --samples 4 --init runs/saliency.pt --resume   # after an interruption
    python tune/sweep.py --storage s3://bucket/sweeps --s3-endpoint http://127.0.0.1:8333

Every trial is one ``s2cnet.training.train.train`` run in its own trial directory. It reports SRCC, Acc5 and
Acc10 on a validation split carved from GAICD *train* (never the test split) after each epoch,
with ``last.pt`` as a Tune checkpoint, so ASHA can stop weak trials early and an interrupted
sweep resumes every trial from its last finished epoch (``Tuner.restore``).

``--smoke`` checks the whole machinery in about 30 s: 3 trials of 2 epochs on 4 photos. Where
``--data`` holds no GAICD (a fresh clone without ../shared/data) it trains on a small synthetic set in
GAICD's format and says so. Without ``--storage`` its experiment (checkpoints, about 250 MB) lives in
a temporary directory removed at the end; only the tables stay, in runs/tune/smoke/.

By default the edge strategy is a grid axis with the other hyperparameters held constant across
it (``constant_grid_search``): each of the ``--samples`` draws runs once per strategy, which
turns "which edge strategy wins" into a paired comparison. At the end the script prints a
leaderboard, writes it and a per-strategy summary as CSV, and exports the best trial's settings
as a JSON file for ``python -m s2cnet.training.train --config FILE``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and str(ROOT) not in sys.path:  # `python tune/sweep.py` from anywhere
    sys.path.insert(0, str(ROOT))

from s2cnet.graph import EDGE_STRATEGIES  # noqa: E402
from s2cnet.training.train import TrainConfig  # noqa: E402

MODEL_KEYS = ("edge_strategy", "distance_threshold", "num_layers", "num_heads", "max_objects", "use_gate")
TRAIN_KEYS = ("lr", "rank_weight")
METRIC = "SRCC"
# Settings that only size the sweep; the exported config puts them back to TrainConfig's defaults.
SWEEP_ONLY = ("out", "epochs", "limit", "val_size", "threads")

FULL = dict(epochs=3, limit=150, val_size=40, samples=4, concurrent=2, name="s2cnet_sweep")
SMOKE = dict(epochs=2, limit=4, val_size=3, samples=1, concurrent=2, name="smoke")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gaicd"
DEFAULT_STORAGE = ROOT / "runs" / "tune"
SMOKE_TIME = "about 30 s"  # measured: `time python tune/sweep.py --smoke`, 2 cores (docstring and docs agree)
SYNTHETIC_PHOTOS = 8  # enough for the smoke split: 4 training + 3 validation photos


def search_space(paired: bool = True) -> dict:
    """The sampled hyperparameters; with ``paired`` the edge strategy is a grid axis."""
    from ray import tune

    return {
        "edge_strategy": tune.grid_search(list(EDGE_STRATEGIES)) if paired else tune.choice(list(EDGE_STRATEGIES)),
        "distance_threshold": tune.uniform(0.2, 0.6),  # DisDrop only; image diagonals
        "num_layers": tune.choice([1, 2, 3]),
        "num_heads": tune.choice([2, 4, 8]),  # must divide node_dim (256)
        "max_objects": tune.choice([3, 5, 10]),  # GAICD ships 10 boxes per image
        "use_gate": tune.choice([True, False]),
        "lr": tune.loguniform(1e-4, 1e-3),
        "rank_weight": tune.uniform(0.25, 2.0),
    }


def trial_config(config: dict, out: str | Path) -> TrainConfig:
    """A Tune config (searched keys + the fixed ``base`` TrainConfig dict) -> TrainConfig writing to ``out``."""
    d = json.loads(json.dumps(config["base"]))
    d["out"] = str(out)
    for k in TRAIN_KEYS:
        d[k] = config[k]
    d["model"] = {**d.get("model", {}), **{k: config[k] for k in MODEL_KEYS}}
    return TrainConfig.from_dict(d)


def run_trial(config: dict) -> None:
    """One trial: train() in the trial directory, resumed from Tune's checkpoint when there is one."""
    from ray import tune

    out = Path(tune.get_context().get_trial_dir()) / "train"
    out.mkdir(parents=True, exist_ok=True)
    cfg = trial_config(config, out)
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            shutil.copyfile(Path(d) / "last.pt", out / "last.pt")
    else:  # a restarted trial must not pick up an epoch Tune never saw
        (out / "last.pt").unlink(missing_ok=True)
    start_epoch = None

    def report(epoch: int, val: dict[str, float], ckpt_path: Path) -> None:
        nonlocal start_epoch
        start_epoch = epoch if start_epoch is None else start_epoch
        staging = out / "checkpoint"
        staging.mkdir(exist_ok=True)
        os.replace(ckpt_path, staging / "last.pt")  # train() only reads last.pt at start: Tune's copy is the one
        tune.report({"epoch": epoch + 1, "SRCC": val["SRCC"], "PCC": val["PCC"], "Acc5": val["Acc5"],
                     "Acc10": val["Acc10"], "start_epoch": start_epoch, "staging": str(staging)},
                    checkpoint=tune.Checkpoint.from_directory(staging))
        shutil.rmtree(staging, ignore_errors=True)  # Tune stops a finished trial during its last report: see drop_staging

    from s2cnet.training.train import train

    train(cfg, report=report)


def drop_staging(grid) -> None:
    """Removes the checkpoint staging folders a trial could not remove itself (Tune stops a trial while
    its last report returns), each a copy of a checkpoint Tune already holds (~40 MB a trial); only
    those on this machine, in Ray's temporary folder (/tmp/ray)."""
    for r in grid:
        staging = (r.metrics or {}).get("staging")
        if staging and Path(staging).name == "checkpoint":
            shutil.rmtree(staging, ignore_errors=True)


def resolve_storage(spec: str, endpoint: str | None = None):
    """Local dir or s3://bucket/prefix -> (storage_path, pyarrow filesystem or None).

    A custom S3 endpoint (SeaweedFS, MinIO) needs an explicit pyarrow S3FileSystem; credentials
    come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY as usual.
    """
    if not spec.startswith("s3://"):
        return str(Path(spec).expanduser().resolve()), None
    if not endpoint:
        return spec, None  # pyarrow resolves s3:// with the standard AWS configuration
    import pyarrow.fs

    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    fs = pyarrow.fs.S3FileSystem(
        endpoint_override=url.netloc, scheme=url.scheme or "http",
        access_key=os.environ.get("AWS_ACCESS_KEY_ID"), secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=os.environ.get("AWS_REGION", "us-east-1"))
    return spec[len("s3://"):].rstrip("/"), fs


def trial_dirname(trial) -> str:
    """Short trial directory names: id and edge strategy (the full config is in params.json)."""
    return f"{trial.trial_id}_{trial.config['edge_strategy']}"


def experiment_path(storage_path: str, name: str) -> str:
    return f"{storage_path.rstrip('/')}/{name}"


SETTINGS_FILE = "sweep_settings.json"


def _filesystem(path: str, fs):
    import pyarrow.fs

    return (fs, path) if fs is not None else pyarrow.fs.FileSystem.from_uri(path)


def write_settings(path: str, fs, settings: dict) -> None:
    """The sweep's own settings next to Tune's state, so a resumed run knows how many trials were planned."""
    fs, p = _filesystem(path, fs)
    fs.create_dir(p, recursive=True)
    with fs.open_output_stream(f"{p}/{SETTINGS_FILE}") as f:
        f.write(json.dumps(settings, indent=2).encode())


def read_settings(path: str, fs) -> dict | None:
    fs, p = _filesystem(path, fs)
    try:
        with fs.open_input_stream(f"{p}/{SETTINGS_FILE}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        return None


def build_tuner(args: argparse.Namespace, base: dict, storage_path: str, fs):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(run_trial, {"cpu": args.cpus_per_trial})
    return tune.Tuner(
        trainable,
        param_space={**search_space(paired=not args.unpaired), "base": base},
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=args.samples,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=args.epochs, grace_period=args.grace,
                                    reduction_factor=args.reduction_factor),
            search_alg=BasicVariantGenerator(constant_grid_search=True, random_state=args.seed,
                                             max_concurrent=args.concurrent),
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=args.name, storage_path=storage_path, storage_filesystem=fs, verbose=args.verbose,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
        ),
    )


def history(result) -> list[dict]:
    """Every epoch a trial reported, in order."""
    df = result.metrics_dataframe
    return [] if df is None else df.to_dict("records")


def leaderboard(grid) -> list[dict]:
    """One row per trial that reported an epoch or failed (its last reported epoch), best SRCC first.
    A trial created but silent yet is only counted as unfinished: an interrupted run's in-memory grid
    may hold it while the state saved on disk does not, and both must give the same table."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        if r.config is None or (not r.error and "epoch" not in m):
            continue
        trial = m.get("trial_id") or (Path(r.path).name if r.path else "?")
        row = {"trial": trial, **{k: r.config[k] for k in MODEL_KEYS + TRAIN_KEYS},
               "epochs": m.get("epoch", 0), "SRCC": m.get("SRCC", math.nan), "Acc5": m.get("Acc5", math.nan),
               "Acc10": m.get("Acc10", math.nan), "resumed_at": m.get("start_epoch", 0),
               "status": "ERROR" if r.error else "ok"}
        epochs = {h["epoch"]: h for h in history(r) if "epoch" in h}
        row["SRCC_e1"] = epochs[1]["SRCC"] if 1 in epochs else math.nan
        row["Acc5_e1"] = epochs[1]["Acc5"] if 1 in epochs else math.nan
        row["srcc_by_epoch"] = {e: h["SRCC"] for e, h in epochs.items()}
        rows.append(row)
    draws: dict[tuple, int] = {}
    for row in sorted(rows, key=lambda x: x["trial"]):  # trials sharing every other hyperparameter = one draw
        row["draw"] = draws.setdefault(_others(row), len(draws))
    rows.sort(key=lambda x: -x["SRCC"] if not math.isnan(x["SRCC"]) else math.inf)
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    return rows


def _others(row: dict) -> tuple:
    """Every searched value except the edge strategy: equal tuples are one paired draw."""
    return tuple(round(row[k], 6) if isinstance(row[k], float) else row[k]
                 for k in MODEL_KEYS + TRAIN_KEYS if k != "edge_strategy")


def _paired_gap(a: dict, b: dict) -> float:
    """SRCC of a minus b at the last epoch both trials reached (ASHA may have stopped either)."""
    ha, hb = a.get("srcc_by_epoch") or {1: a["SRCC_e1"]}, b.get("srcc_by_epoch") or {1: b["SRCC_e1"]}
    common = set(ha) & set(hb)
    return ha[max(common)] - hb[max(common)] if common else math.nan


def edge_summary(rows: list[dict]) -> list[dict]:
    """Per edge strategy: best final SRCC, means at epoch 1 (every trial gets there under ASHA), and
    paired gaps to DisEmb over draws that share all other hyperparameters (at epoch 1, and at the
    last epoch both trials of a pair reached), with the standard error of the latter."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(_others(r), {})[r["edge_strategy"]] = r
    out = []
    for s in EDGE_STRATEGIES:
        mine = [r for r in rows if r["edge_strategy"] == s and not math.isnan(r["SRCC_e1"])]
        if not mine:
            continue
        pairs = [g for g in groups.values() if s in g and "disemb" in g]
        gaps = [g[s]["SRCC_e1"] - g["disemb"]["SRCC_e1"] for g in pairs]
        late = [x for x in (_paired_gap(g[s], g["disemb"]) for g in pairs) if not math.isnan(x)]
        late_mean = sum(late) / len(late) if late else math.nan
        late_se = (math.sqrt(sum((x - late_mean) ** 2 for x in late) / (len(late) - 1) / len(late))
                   if len(late) > 1 else math.nan)
        full = [r["SRCC"] for r in mine if r["epochs"] == max(x["epochs"] for x in rows)]
        out.append({"edge_strategy": s, "trials": len(mine), "best_SRCC": max(r["SRCC"] for r in mine),
                    "trials_full": len(full), "mean_SRCC_full": sum(full) / len(full) if full else math.nan,
                    "mean_SRCC_e1": sum(r["SRCC_e1"] for r in mine) / len(mine),
                    "mean_Acc5_e1": sum(r["Acc5_e1"] for r in mine) / len(mine),
                    "paired_gap_e1_vs_disemb": sum(gaps) / len(gaps) if gaps else math.nan,
                    "paired_gap_last_vs_disemb": late_mean, "gap_last_se": late_se, "pairs": len(gaps)})
    return out


def export_config(config: dict) -> dict:
    """The best trial's settings as a TrainConfig dict for a full training run (sweep-only sizes reset)."""
    d = asdict(trial_config(config, TrainConfig().out))
    defaults = TrainConfig()
    for k in SWEEP_ONLY:
        d[k] = getattr(defaults, k)
    return d


def format_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v) -> str:
        if isinstance(v, bool) or not isinstance(v, float):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}"

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    line = lambda cells: "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


LEADERBOARD_COLUMNS = ["rank", "trial", "draw", *MODEL_KEYS, *TRAIN_KEYS, "epochs", "SRCC", "Acc5", "Acc10", "SRCC_e1",
                       "Acc5_e1", "resumed_at", "status"]
SUMMARY_COLUMNS = ["edge_strategy", "trials", "best_SRCC", "trials_full", "mean_SRCC_full", "mean_SRCC_e1",
                   "mean_Acc5_e1", "paired_gap_e1_vs_disemb", "paired_gap_last_vs_disemb", "gap_last_se", "pairs"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help=f"check the machinery on a tiny subset ({SMOKE_TIME} on 2 cores): {SMOKE}")
    ap.add_argument("--samples", type=int, help="hyperparameter draws (x3 trials when paired)")
    ap.add_argument("--storage", help="local dir or s3://bucket/prefix for the experiment (default: runs/tune; "
                                      "--smoke without it uses a temporary dir, removed after the run)")
    ap.add_argument("--s3-endpoint", default=os.environ.get("AWS_ENDPOINT_URL"), help="custom S3 endpoint URL")
    ap.add_argument("--name", help="experiment name (a directory under --storage)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted experiment (Tuner.restore)")
    ap.add_argument("--report-only", action="store_true", help="print and export the tables of an existing "
                                                                "experiment (running or interrupted) without running it")
    ap.add_argument("--export-dir", type=Path, help="where the leaderboard and best config go (default: the "
                                                    "experiment dir when storage is local, else runs/tune/<name>)")
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="GAICD folder (images/, annotations/, objects/, split.json); trials train and validate on its "
                         "train split only (default: ../shared/data/gaicd; --smoke falls back to a synthetic "
                         "GAICD-like set when the folder holds no GAICD)")
    ap.add_argument("--init", help="backbone checkpoint for every trial, e.g. runs/saliency.pt")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--limit", type=int, help="training images per trial")
    ap.add_argument("--val-size", type=int, help="validation images carved from GAICD train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrent", type=int, help="trials running at once")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0)
    ap.add_argument("--cpus", type=int, help="num_cpus when this script starts Ray itself")
    ap.add_argument("--grace", type=int, default=1, help="ASHA grace period (epochs)")
    ap.add_argument("--reduction-factor", type=float, default=2)
    ap.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial from its checkpoint")
    ap.add_argument("--unpaired", action="store_true", help="sample the edge strategy instead of gridding it")
    ap.add_argument("--verbose", type=int, default=1)
    args = ap.parse_args(argv)
    for k, v in (SMOKE if args.smoke else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.temporary = args.smoke and args.storage is None
    if args.temporary and (args.resume or args.report_only):
        ap.error("a --smoke run without --storage keeps no experiment to resume or report: pass --storage DIR")
    return args


def base_config(args: argparse.Namespace) -> dict:
    """The fixed part of every trial's TrainConfig (absolute paths: trials run in their own dirs)."""
    return asdict(TrainConfig(data=str(Path(args.data).resolve()), init=str(Path(args.init).resolve()) if args.init else None,
                              epochs=args.epochs, limit=args.limit, val_size=args.val_size, seed=args.seed, threads=1))


def ensure_ray(args: argparse.Namespace) -> bool:
    """Joins a running Ray (e.g. the one the tests share) or starts a local one; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=args.cpus, include_dashboard=False)
    return True


def is_gaicd(folder: str | Path) -> bool:
    return (Path(folder) / "split.json").exists()


def export_dir(args: argparse.Namespace, path: str, fs) -> Path:
    """Where the tables and the best config go: --export-dir, else the experiment dir when it is a
    local and kept one, else runs/tune/<name>."""
    if args.export_dir:
        return Path(args.export_dir)
    local = fs is None and not path.startswith("s3://")
    return Path(path) if local and not args.temporary else DEFAULT_STORAGE / args.name


def smoke_data(args: argparse.Namespace, folder: Path) -> str:
    """GAICD where --data has it; for --smoke without it, a synthetic GAICD-like set written into
    ``folder`` (seeded: a resumed run finds the same photos), announced on stdout."""
    if is_gaicd(args.data):
        return args.data
    from s2cnet.training.synthetic import write_gaicd

    write_gaicd(folder, n_images=SYNTHETIC_PHOTOS, size=(320, 240), seed=args.seed)
    print(f"GAICD not found at {args.data}: the smoke run trains on a synthetic GAICD-like set "
          f"({SYNTHETIC_PHOTOS} generated photos in {folder}); its scores say nothing about the model", flush=True)
    return str(folder)


def main(argv: list[str] | None = None) -> dict:
    """Runs or resumes the sweep, then reports; returns the written paths and tables."""
    args = parse_args(argv)
    if not args.smoke and not args.report_only and not is_gaicd(args.data):
        raise SystemExit(f"GAICD not found at {args.data} (expected split.json): pass --data FOLDER, "
                         "or --smoke to try the sweep on a synthetic set")
    if not args.temporary:
        return _sweep(args, args.storage or str(DEFAULT_STORAGE), argv)
    with tempfile.TemporaryDirectory(prefix="ugc-crop-smoke-") as scratch:  # checkpoints go, the tables stay
        return _sweep(args, scratch, argv)


def _sweep(args: argparse.Namespace, storage: str, argv: list[str] | None) -> dict:
    from ray import tune

    storage_path, fs = resolve_storage(storage, args.s3_endpoint)
    path = experiment_path(storage_path, args.name)
    if args.report_only:
        from ray.tune import ExperimentAnalysis, ResultGrid

        grid = ResultGrid(ExperimentAnalysis(path, storage_filesystem=fs, default_metric=METRIC, default_mode="max"))
        return report(grid, args, path, fs, (read_settings(path, fs) or {}).get("planned_trials", len(grid)))
    started = ensure_ray(args)
    try:
        exists = tune.Tuner.can_restore(path, storage_filesystem=fs)
        if args.resume and exists:
            print(f"resuming {path}", flush=True)
            tuner = tune.Tuner.restore(path, trainable=tune.with_resources(run_trial, {"cpu": args.cpus_per_trial}),
                                       resume_errored=True, storage_filesystem=fs)
        elif exists:
            raise SystemExit(f"an experiment already exists at {path}: pass --resume to continue it or --name for a new one")
        else:
            if args.resume:
                print(f"nothing to resume at {path}; starting a new sweep", flush=True)
            if args.smoke:
                scratch = Path(storage) if args.temporary else export_dir(args, path, fs)
                args.data = smoke_data(args, scratch / "synthetic_gaicd")
            write_settings(path, fs, {"planned_trials": args.samples * (1 if args.unpaired else len(EDGE_STRATEGIES)),
                                      "argv": list(sys.argv[1:] if argv is None else argv)})
            tuner = build_tuner(args, base_config(args), storage_path, fs)
        grid = tuner.fit()
        drop_staging(grid)
        settings = read_settings(path, fs) or {}
    finally:
        if started:
            import ray

            ray.shutdown()
    return report(grid, args, path, fs, settings.get("planned_trials", len(grid)))


def report(grid, args: argparse.Namespace, path: str, fs, planned: int) -> dict:
    rows = leaderboard(grid)
    summary = edge_summary(rows)
    # finished = stopped by ASHA, ran all epochs, or errored; an interrupted sweep also has trials not yet created
    finished = sum(1 for r in grid if r.error or (r.metrics or {}).get("done"))
    unfinished = max(planned - finished, 0)
    export = export_dir(args, path, fs)
    export.mkdir(parents=True, exist_ok=True)
    write_csv(export / "leaderboard.csv", rows, LEADERBOARD_COLUMNS)
    write_csv(export / "edge_summary.csv", summary, SUMMARY_COLUMNS)
    print("\nleaderboard (validation split of GAICD train; SRCC/Acc at the last epoch each trial reached)")
    print(format_table(rows, LEADERBOARD_COLUMNS))
    print("\nby edge strategy")
    print(format_table(summary, SUMMARY_COLUMNS))
    out = {"experiment": path, "leaderboard": rows, "summary": summary, "unfinished": unfinished,
           "leaderboard_csv": export / "leaderboard.csv", "summary_csv": export / "edge_summary.csv", "best_config": None}
    scored = [r for r in grid if r.config is not None and not math.isnan((r.metrics or {}).get(METRIC, math.nan))]
    if unfinished and not args.temporary:
        print(f"\n{unfinished} of {planned} trial(s) unfinished: rerun with --resume to continue {path}")
    if not scored:
        return out
    best = max(scored, key=lambda r: r.metrics[METRIC])  # last reported epoch, like scope="last"
    best_path = export / "best_config.json"
    best_path.write_text(json.dumps(export_config(best.config), indent=2) + "\n")
    (export / "best_trial.json").write_text(json.dumps(
        {"trial": best.metrics.get("trial_id"), "path": best.path, "complete_sweep": not unfinished,
         "metrics": {k: best.metrics.get(k) for k in ("epoch", "SRCC", "PCC", "Acc5", "Acc10")},
         "sweep": {k: best.config["base"][k] for k in SWEEP_ONLY if k != "out"}}, indent=2) + "\n")
    so_far = " so far" if unfinished else ""
    print(f"\nbest config{so_far} -> {best_path}  (python -m s2cnet.training.train --config {best_path})")
    print(f"leaderboard -> {export / 'leaderboard.csv'}")
    out["best_config"] = best_path
    return out


if __name__ == "__main__":
    from tune.sweep import main as _main  # import by module name so Ray workers unpickle tune.sweep, not __main__

    _main()
