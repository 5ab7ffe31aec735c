#!/usr/bin/env python
"""Crop every photo in a bucket: S3 (or a folder) -> Ray actor pool running S2CNet -> Parquet (+ thumbnails).

    python crop_bucket.py                       # the embedded demo: local S3, sample photos, contact sheet
    python crop_bucket.py --input s3://bucket/uploads/ --output s3://bucket/crops/ \\
        --ratios 1:1,4:3,16:9,9:16 --thumbnails s3://bucket/thumbs/ --resume

This file only parses arguments: ``ray submit`` copies it alone to the head node, so everything it
runs comes from the installed packages ``pipelines`` and ``s2cnet``.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.batch import JobConfig, ModelSpec, OutputExistsError, normalize_ratios, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--demo", action="store_true", help="run the embedded demo (also the default with no arguments)")
    p.add_argument("--demo-dir", default="ugc-crop-demo", help="where the demo writes its contact sheet")
    p.add_argument("--input", help="s3://bucket/prefix or a local folder of photos")
    p.add_argument("--output", help="s3://bucket/prefix or a local folder: the Parquet dataset")
    p.add_argument("--ratios", default="1:1,4:3,16:9,9:16", help="comma-separated W:H aspect ratios")
    p.add_argument("--thumbnails", help="write JPEG thumbnails to {THUMBNAILS}/{key}/{W}x{H}.jpg")
    p.add_argument("--thumb-width", type=int, default=512, help="thumbnail width in px (never upscaled)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--actors", type=int, help="actor pool size (default: one per GPU, else one per CPU)")
    p.add_argument("--gpus-per-actor", type=float, help="default: 1 when the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="photos per crop_batch call")
    p.add_argument("--limit", type=int, help="process at most N photos (of those not done yet)")
    p.add_argument("--resume", action="store_true", help="skip (photo, ratio) pairs already in --output")
    p.add_argument("--overwrite", action="store_true", help="delete --output first")
    p.add_argument("--weights", help="S2CNet weights file (default: the weights shipped with s2cnet)")
    p.add_argument("--no-proposals", action="store_true", help="score without object proposals")
    p.add_argument("--untrained-ok", action="store_true", help="development: random weights if none exist")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="larger photos become error rows")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, a running local cluster, or new)")
    p.add_argument("--wait-for-actors", type=float, metavar="SECONDS",
                   help="start cropping only once all actors are up (default: as soon as one is)")
    p.add_argument("--no-forward-aws-env", action="store_true",
                   help="do not pass this shell's AWS_* variables to the Ray workers")
    p.add_argument("--summary-json", help="also write the summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if not args.demo and not (args.input or args.output):
        args.demo = True
    if not args.demo and not (args.input and args.output):
        p.error("--input and --output are both required (or neither, for the demo)")
    try:
        args.ratios = normalize_ratios(args.ratios)
    except ValueError as e:
        p.error(str(e))
    return args


def summary_dict(summary) -> dict:
    return {"listed": summary.listed, "skipped": summary.skipped, "planned": summary.planned, "ok": summary.ok,
            "failed": summary.failed, "rows": summary.rows, "missing": summary.missing,
            "duplicates": summary.duplicates, "seconds": round(summary.seconds, 3),
            "photos_per_s": round(summary.photos_per_s, 3), "errors": dict(summary.errors), "output": summary.output}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.demo:
        from pipelines.demo import run_demo

        summary, sheet = run_demo(args.demo_dir, ratios=args.ratios,
                                  cfg_overrides={"batch_size": args.batch_size, "progress": not args.no_progress,
                                                 "actors": args.actors})
        print(f"contact sheet: {sheet}")
    else:
        cfg = JobConfig(input=args.input, output=args.output, ratios=args.ratios, thumbnails=args.thumbnails,
                        thumb_width=args.thumb_width, endpoint_url=args.endpoint_url, actors=args.actors,
                        gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                        batch_size=args.batch_size, limit=args.limit, resume=args.resume, overwrite=args.overwrite,
                        model=ModelSpec(args.weights, not args.no_proposals, args.untrained_ok),
                        max_pixels=args.max_pixels, progress=not args.no_progress, ray_address=args.address,
                        forward_aws_env=not args.no_forward_aws_env, wait_for_actors_s=args.wait_for_actors)
        try:
            summary = run(cfg)
        except OutputExistsError as e:
            print(f"crop_bucket: {e}", file=sys.stderr)
            return 2
    if summary.errors:
        print("errors by kind: " + ", ".join(f"{k}: {n}" for k, n in summary.errors.most_common()))
    print(summary.line())
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary_dict(summary), f, indent=2)
    return 0 if summary.complete else 1


if __name__ == "__main__":
    sys.exit(main())
