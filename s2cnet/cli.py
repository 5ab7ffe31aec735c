"""Command line: crop photos with S2CNet, a thin layer over ``Cropper``.

    s2cnet crop IMAGE... [--ratio 16:9 --ratio 1:1] [--out DIR] [--json] [--debug] [--weights PATH]

Without --ratio each photo gets its best free-ratio crop. A photo that cannot be read or cropped
gets an error line and the rest go on; the exit code is 1 if any photo failed (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence, TextIO

from PIL import Image

from s2cnet.candidates import parse_ratio
from s2cnet.cropper import Crop, Cropper
from s2cnet.imageio import DEFAULT_MAX_PIXELS, ImageLoadError, open_image


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="s2cnet", description="S2CNet image cropping.")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crop", help="best crop per aspect ratio for each photo",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    c.add_argument("--ratio", action="append", metavar="W:H",
                   help="aspect ratio, repeatable (default: one free-ratio crop)")
    c.add_argument("--out", type=Path, metavar="DIR",
                   help="write <stem>_<W>x<H>.jpg crops (and --debug overlays) here")
    c.add_argument("--json", action="store_true",
                   help="print one JSON object per photo: {path, width, height, crops} or {path, error}")
    c.add_argument("--debug", action="store_true",
                   help="also write <stem>_debug.png: candidate score heat, object boxes, chosen crops")
    c.add_argument("--weights", type=Path, metavar="PATH", help="S2CNet checkpoint (default: bundled weights)")
    c.add_argument("--no-objects", action="store_true", help="no object proposals (crop-only graph)")
    c.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse photos above N pixels before decoding (default {DEFAULT_MAX_PIXELS}; 0: no limit)")
    c.add_argument("--quality", type=int, default=95, help="JPEG quality of written crops (default 95)")
    c.add_argument("--debug-size", type=int, default=1024, metavar="PX",
                   help="long side of debug overlays (default 1024; 0: full size)")
    return ap


def load_cropper(weights: Path | None, objects: bool) -> Cropper:
    return Cropper.from_pretrained(weights, proposer="default" if objects else None)


class _Names:
    """Output file names, made unique within one run (two inputs may share a stem)."""

    def __init__(self, out: Path) -> None:
        self.out, self.used = out, set()

    def __call__(self, stem: str, suffix: str) -> Path:
        name, n = f"{stem}{suffix}", 2
        while name in self.used:
            base, ext = suffix.rsplit(".", 1)
            name, n = f"{stem}{base}_{n}.{ext}", n + 1
        self.used.add(name)
        return self.out / name


def crop_one(cropper: Cropper, path: Path, args: argparse.Namespace, names: _Names | None) -> dict:
    """Crops one photo and writes its files; returns its JSON record (raises on failure)."""
    loaded = open_image(path, max_pixels=args.max_pixels or None)
    image = loaded.image
    analysis = cropper.analyse(image, args.ratio)
    crops: list[Crop] = analysis.crops
    record = {"path": str(path), "width": image.width, "height": image.height,
              "model_version": cropper.model_version, "crops": []}
    for crop in crops:
        x1, y1, x2, y2 = crop.box
        item = {"ratio": crop.ratio, "box": [x1, y1, x2, y2], "score": round(float(crop.score), 6),
                "cut_objects": [[int(v) for v in b] for b in crop.cut_objects]}
        if names is not None:
            file = names(path.stem, f"_{x2 - x1}x{y2 - y1}.jpg")
            image.crop(crop.box).save(file, "JPEG", quality=args.quality,
                                      icc_profile=image.info.get("icc_profile"))
            item["file"] = str(file)
        record["crops"].append(item)
    if args.debug and names is not None:
        from s2cnet.overlay import debug_overlay

        file = names(path.stem, "_debug.png")
        overlay = debug_overlay(image, analysis, max_side=args.debug_size or None)
        overlay.save(file, compress_level=1)  # a debugging aid: fast to write beats small
        record["debug"] = str(file)
    return record


def _print_record(record: dict, as_json: bool, stdout: TextIO, stderr: TextIO) -> None:
    if as_json:
        print(json.dumps(record), file=stdout, flush=True)
    elif "error" in record:
        print(f"error: {record['path']}: {record['error']}", file=stderr, flush=True)
    else:
        for c in record["crops"]:
            box = ",".join(str(v) for v in c["box"])
            where = f"  -> {c['file']}" if "file" in c else ""
            print(f"{record['path']}  {c['ratio'] or 'free'}  box={box}  score={c['score']:.4f}  "
                  f"cut_objects={len(c['cut_objects'])}{where}", file=stdout, flush=True)
        if "debug" in record:
            print(f"{record['path']}  debug -> {record['debug']}", file=stdout, flush=True)


def run_crop(args: argparse.Namespace, cropper: Cropper | None, stdout: TextIO, stderr: TextIO) -> int:
    if cropper is None:
        try:
            cropper = load_cropper(args.weights, objects=not args.no_objects)
        except FileNotFoundError as e:  # S2CNet weights (--weights) or saliency weights (--no-objects)
            print(f"error: {e} (--weights PATH picks S2CNet weights; --no-objects runs without object proposals)",
                  file=stderr)
            return 2
        except (ImportError, OSError, RuntimeError, ValueError) as e:
            print(f"error: cannot load the cropper ({type(e).__name__}: {e}); "
                  "--no-objects skips object proposals", file=stderr)
            return 2
    names = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        names = _Names(args.out)
    failed = 0
    for path in args.images:
        try:
            record = crop_one(cropper, path, args, names)
        except ImageLoadError as e:
            record, failed = {"path": str(path), "error": e.reason}, failed + 1
        except ValueError as e:  # e.g. a photo too small for an exact ratio
            record, failed = {"path": str(path), "error": str(e)}, failed + 1
        except Exception as e:  # keep going through a batch; the exit code reports it
            record, failed = {"path": str(path), "error": f"{type(e).__name__}: {e}"}, failed + 1
        _print_record(record, args.json, stdout, stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None, cropper: Cropper | None = None) -> int:
    """Entry point of ``s2cnet``; ``cropper`` lets embedding code and tests supply their own model."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for r in args.ratio or []:
        try:
            parse_ratio(r)
        except ValueError as e:
            parser.error(str(e))
    if args.debug and args.out is None:
        parser.error("--debug needs --out DIR")
    if args.max_pixels < 0:
        parser.error("--max-pixels must be 0 (no limit) or positive")
    # Pillow refuses more than 2 * MAX_IMAGE_PIXELS on its own; follow a higher --max-pixels here.
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and (args.max_pixels == 0 or args.max_pixels > pil_limit):
        Image.MAX_IMAGE_PIXELS = args.max_pixels or None
    try:
        return run_crop(args, cropper, sys.stdout, sys.stderr)
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


if __name__ == "__main__":
    sys.exit(main())
