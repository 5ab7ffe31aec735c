#!/usr/bin/env python
"""Crop every photo in a bucket: S3 (or a folder) -> Ray actor pool running S2CNet -> Parquet (+ thumbnails).

    python crop_bucket.py                       # the embedded demo: local S3, sample photos, contact sheet
    python crop_bucket.py --input s3://bucket/uploads/ --output s3://bucket/crops/ \\
        --ratios 1:1,4:3,16:9,9:16 --thumbnails s3://bucket/thumbs/ --resume

This file only parses arguments: ``ray submit`` copies it alone to the head node, so everything it
runs comes from the project folder on the node's PYTHONPATH (``pipelines``, as cluster.yaml sets it)
and the installed model library (``s2cnet``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and (ROOT / "pipelines").is_dir() and str(ROOT) not in sys.path:
    # `python pipelines/crop_bucket.py` in a checkout, from any folder: a local Ray started by this
    # driver gives its workers this environment, so they import the checkout too
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

from pipelines.batch import OutputExistsError, StartupError, normalize_ratios, run  # noqa: E402
from pipelines.config import JobConfig, ModelSpec, flag  # noqa: E402


def job_options(p: argparse.ArgumentParser) -> None:
    """One option per JobConfig field, from the field itself: its flag, help, type and default."""
    defaults = JobConfig(input="", output="")
    for f in fields(JobConfig):
        if f.name == "model":
            continue
        default = getattr(defaults, f.name)
        kind = str(f.type).split("|")[0].strip()
        if kind == "bool":
            p.add_argument(flag(f.name), dest=f.name, action="store_false" if default else "store_true", default=None,
                           help=f.metadata["help"])
            continue
        shown = ",".join(default) if isinstance(default, list) else default
        p.add_argument(flag(f.name), dest=f.name, type={"int": int, "float": float}.get(kind, str), default=None,
                       choices=f.metadata.get("choices"),
                       help=f.metadata["help"] + (f" (default: {shown})" if shown not in (None, "") else ""))


# What the demo honours besides --demo itself; any other option given with it is refused, never ignored.
DEMO_OPTIONS = {"demo_dir", "ratios", "batch_size", "actors", "progress", "summary_json"}


def ignored_by_demo(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The options given (not left at their parser default) that the demo would not use, as flags."""
    given = [k for k, v in vars(args).items() if k not in DEMO_OPTIONS | {"demo"} and v != p.get_default(k)]
    return [flag(k) for k in given]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true",
                   help="run the embedded demo (also the default with no arguments); it takes only --demo-dir, "
                        "--ratios, --batch-size, --actors, --no-progress and --summary-json")
    p.add_argument("--demo-dir", default="ugc-crop-demo", help="where the demo writes its contact sheet")
    job_options(p)
    p.add_argument("--weights", help="S2CNet weights file (default: the weights shipped with s2cnet)")
    p.add_argument("--no-proposals", action="store_true", help="score without object proposals")
    p.add_argument("--untrained-ok", action="store_true", help="development: random weights if none exist")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    args = p.parse_args(argv)
    if not args.demo and not (args.input or args.output):
        args.demo = True
    if not args.demo and not (args.input and args.output):
        p.error("--input and --output are both required (or neither, for the demo)")
    if args.demo and (ignored := ignored_by_demo(p, args)):
        p.exit(2, f"crop_bucket: the demo (--demo, or no --input and --output) does not use {', '.join(ignored)}: "
                  f"drop {'it' if len(ignored) == 1 else 'them'}, or give --input and --output to run the job on "
                  "your own photos\n")
    try:
        if args.ratios is not None:
            args.ratios = normalize_ratios(args.ratios)
    except ValueError as e:
        p.error(str(e))
    return args


def job_config(args: argparse.Namespace) -> JobConfig:
    """The options given, over JobConfig's own defaults."""
    given = {f.name: getattr(args, f.name) for f in fields(JobConfig)
             if f.name != "model" and getattr(args, f.name, None) is not None}
    return JobConfig(**given, model=ModelSpec(args.weights, not args.no_proposals, args.untrained_ok))


def summary_dict(summary) -> dict:
    return {"listed": summary.listed, "skipped": summary.skipped, "planned": summary.planned, "ok": summary.ok,
            "failed": summary.failed, "rows": summary.rows, "missing": summary.missing,
            "duplicates": summary.duplicates, "seconds": round(summary.seconds, 3),
            "photos_per_s": round(summary.photos_per_s, 3), "errors": dict(summary.errors), "output": summary.output}


def exit_on_sigterm() -> None:
    """SIGTERM (a scheduler stopping the job, ``kill PID``) unwinds like Ctrl-C: the output's lease is
    released and the Ray this driver started is shut down (Ray's atexit hook) instead of left behind."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.demo:
        from pipelines.demo import run_demo

        overrides = {k: getattr(args, k) for k in ("batch_size", "actors") if getattr(args, k) is not None}
        summary, sheet = run_demo(args.demo_dir, ratios=args.ratios,
                                  cfg_overrides={**overrides, "progress": args.progress is not False})
        print(f"contact sheet: {sheet}\nParquet rows: {sheet.parent / 'crops'}  thumbnails: {sheet.parent / 'thumbs'}")
    else:
        try:
            summary = run(job_config(args))
        except (OutputExistsError, StartupError) as e:
            print(f"crop_bucket: {e}", file=sys.stderr)
            return 2
    if summary.errors:
        print("errors by kind: " + ", ".join(f"{k}: {n}" for k, n in summary.errors.most_common()))
    print(summary.line())
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary_dict(summary), f, indent=2)
    return 0 if summary.complete and not summary.too_many_errors else 1


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
