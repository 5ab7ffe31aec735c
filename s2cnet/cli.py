"""Command line: crop photos with S2CNet, a thin layer over ``Cropper``.

    s2cnet crop INPUT... [--ratio 16:9,1:1] [--width W] [--height H] [--out DIR] [--json] [--debug]

INPUT is a photo, a folder (its photos, recursively) or a glob pattern ("shots/*.jpg"). Without
--ratio each photo gets its best free-ratio crop. A photo that cannot be read or cropped gets an
error line and the rest go on; the exit code is 1 if any photo failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import glob
import json
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # torch loads only when a photo is cropped: --help and usage errors stay instant
    from s2cnet.cropper import Cropper

DEFAULT_MAX_PIXELS = 64_000_000  # the loader's own default (s2cnet.imageio.DEFAULT_MAX_PIXELS); tested equal
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
MAX_OUTPUT_SIDE = 16384


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ugc-crop")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="s2cnet", description="Thumbnails that keep the subject: S2CNet crops per aspect ratio.")
    ap.add_argument("--version", action="version", version=f"s2cnet (ugc-crop) {version()}")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crop", help="best crop per aspect ratio for each photo",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("images", nargs="+", metavar="INPUT", help="photos, folders or glob patterns")
    c.add_argument("--ratio", action="append", metavar="W:H",
                   help="aspect ratio; repeatable or comma-separated (default: one free-ratio crop)")
    c.add_argument("--width", type=int, metavar="PX", help="resize written crops to this width (never enlarged)")
    c.add_argument("--height", type=int, metavar="PX",
                   help="resize written crops to this height; with --width: exactly WxH, ratio W:H")
    c.add_argument("--out", type=Path, metavar="DIR",
                   help="write <stem>_<W>x<H>.jpg per ratio (<stem>_free.jpg) and --debug overlays here")
    c.add_argument("--json", action="store_true",
                   help="print one JSON object per photo: {path, width, height, crops} or {path, error}")
    c.add_argument("--debug", action="store_true",
                   help="also write <stem>_debug.png: candidate score heat, object boxes, chosen crops")
    c.add_argument("--weights", type=Path, metavar="PATH", help="S2CNet checkpoint (default: bundled weights)")
    c.add_argument("--no-objects", action="store_true", help="no object proposals (crop-only graph)")
    c.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse photos above N pixels before decoding (default {DEFAULT_MAX_PIXELS}; 0: no limit)")
    c.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG quality 1-100 of written crops (default 95)")
    c.add_argument("--debug-size", type=int, default=1024, metavar="PX",
                   help="long side of debug overlays (default 1024; 0: full size)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    c.add_argument("--keep", action="append", metavar="X1,Y1,X2,Y2", default=[],
                   help="a box (full-size pixels) every crop keeps whole when it can, ranked above faces; repeatable")
    c.add_argument("--focus", metavar="X,Y", help="a point (full-size pixels) every crop must contain")
    return ap


def numbers(text: str, n: int, flag: str, parser: argparse.ArgumentParser) -> list[float]:
    """``n`` comma-separated finite numbers, or a usage error naming the flag."""
    import math

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        parser.error(f"{flag} takes {n} comma-separated numbers, got {text!r}")
    return values


def expand_inputs(items: Iterable[str]) -> tuple[list[Path], list[str]]:
    """(photos in order, usage problems): folders give their photos recursively, patterns their
    matches; a missing path stays in the list (it becomes that photo's error line)."""
    paths, problems = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            problems += [] if found else [f"{item}: no photos in this folder"]
            paths += found
        elif not p.exists() and glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
            problems += [] if found else [f"{item}: the pattern matches no file"]
            paths += found
        elif p.exists() and not stat.S_ISREG(p.stat().st_mode):
            problems.append(f"{item}: not a regular file (a FIFO, socket or device would hang or never end)")
        else:
            paths.append(p)
    return paths, problems


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


def output_size(box: Sequence[int], width: int | None, height: int | None) -> tuple[int, int]:
    """The written size of a crop: exactly WxH when both are given, else scaled to the one given,
    never enlarged; the crop's own size when neither is."""
    w, h = box[2] - box[0], box[3] - box[1]
    if width and height:
        return width, height
    if width and width < w:
        return width, max(1, round(h * width / w))
    if height and height < h:
        return max(1, round(w * height / h)), height
    return w, h


def crop_one(cropper: Cropper, path: Path, args: argparse.Namespace, names: _Names | None) -> dict:
    """Crops one photo and writes its files; returns its JSON record (raises on failure)."""
    from PIL import Image

    from s2cnet.candidates import ratio_name, split_fitting
    from s2cnet.imageio import open_image

    # the crop sees exactly what the API, the service and the pipeline see for these bytes; only the
    # written crops read the photo at full size
    loaded = cropper.image_stage(path, max_pixels=args.max_pixels or None)
    asked = [None] if args.ratio is None else [args.ratio] if isinstance(args.ratio, str) else list(args.ratio)
    fits, errors = split_fitting(*loaded.original_size, asked)  # a ratio the photo cannot hold fails alone
    if not fits:
        raise ValueError("; ".join(e["detail"] for e in errors))
    analysis = cropper.analyse(loaded, fits, keep=args.keep, focus=args.focus)
    image = open_image(path, max_pixels=args.max_pixels or None).image if names is not None else None
    width, height = analysis.size
    first = analysis.crops[0]
    record = {"path": str(path), "width": width, "height": height, "model_version": cropper.model_version,
              "focal_point": list(first.focal_point) if first.focal_point else None,
              "safe_box": list(first.safe_box) if first.safe_box else None, "crops": [], "errors": errors}
    for crop in analysis.crops:
        x1, y1, x2, y2 = crop.box
        item = {"ratio": crop.ratio, "box": [x1, y1, x2, y2], "score": round(float(crop.score), 6),
                "cut_objects": [[int(v) for v in b] for b in crop.cut_objects],
                "dropped_objects": [[int(v) for v in b] for b in crop.dropped_objects],
                "faces": crop.faces, "kept_faces": crop.kept_faces, "saliency_kept": crop.saliency_kept}
        if names is not None:
            file = names(path.stem, f"_{ratio_name(crop.ratio)}.jpg")
            tile = image.crop(crop.box)
            size = output_size(crop.box, args.width, args.height)
            if size != tile.size:
                tile = tile.resize(size, Image.LANCZOS, reducing_gap=3.0)
            tile.save(file, "JPEG", quality=args.quality, icc_profile=image.info.get("icc_profile"))
            item["file"], item["size"] = str(file), list(size)
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
        for e in record.get("errors", []):
            print(f"error: {record['path']}: {e['ratio']}: {e['detail']}", file=stderr, flush=True)


def load_cropper(weights: Path | None, objects: bool, stderr: TextIO) -> Cropper | None:
    """The Cropper, or None after a one-line reason on stderr (a usage error, exit 2)."""
    from s2cnet.cropper import Cropper

    try:
        return Cropper.from_pretrained(weights, proposer="default" if objects else None)
    except FileNotFoundError as e:  # S2CNet weights (--weights) or saliency weights (--no-objects)
        print(f"error: {e} (--weights PATH picks S2CNet weights; --no-objects runs without object proposals)",
              file=stderr)
    except Exception as e:  # not a checkpoint, a checkpoint of something else, a truncated file...
        what = f"{weights} is not an S2CNet checkpoint" if weights else "cannot load the bundled weights"
        print(f"error: {what} ({type(e).__name__}: {' '.join(str(e).split())[:200]})", file=stderr)
    return None


def run_crop(args: argparse.Namespace, cropper: Cropper | None, stdout: TextIO, stderr: TextIO) -> int:
    from s2cnet.imageio import ImageLoadError

    names = None
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"error: cannot create --out {args.out} ({e.strerror or e})", file=stderr)
            return 2
        names = _Names(args.out)
    if cropper is None:
        cropper = load_cropper(args.weights, not args.no_objects, stderr)
        if cropper is None:
            return 2
    failed = 0
    photos = args.images
    if not args.no_progress and len(photos) > 1 and stderr.isatty():
        from tqdm import tqdm

        photos = tqdm(photos, unit="photo", file=stderr, leave=False)
    for path in photos:
        try:
            record = crop_one(cropper, path, args, names)
            failed += bool(record["errors"])  # the other ratios are written; the exit code still says
        except ImageLoadError as e:
            record, failed = {"path": str(path), "error": e.reason}, failed + 1
        except ValueError as e:  # e.g. a photo too small for an exact ratio
            record, failed = {"path": str(path), "error": str(e)}, failed + 1
        except Exception as e:  # keep going through a batch; the exit code reports it
            record, failed = {"path": str(path), "error": f"{type(e).__name__}: {e}"}, failed + 1
        _print_record(record, args.json, stdout, stderr)
    return 1 if failed else 0


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every option problem is a usage error (exit 2) before any photo or model is loaded."""
    from s2cnet.candidates import canonical_ratio

    ratios: list[str] = []
    for item in args.ratio or []:
        for r in (s.strip() for s in item.split(",")):
            try:
                r = canonical_ratio(r)  # one form, as in every other output
            except ValueError as e:
                parser.error(str(e))
            if r not in ratios:
                ratios.append(r)
    for name in ("width", "height"):
        v = getattr(args, name)
        if v is not None and not 1 <= v <= MAX_OUTPUT_SIDE:
            parser.error(f"--{name} must be 1..{MAX_OUTPUT_SIDE}, got {v}")
    if args.width and args.height:
        from math import gcd

        g = gcd(args.width, args.height)
        wanted = f"{args.width // g}:{args.height // g}"
        if ratios and ratios != [wanted]:
            parser.error(f"--width {args.width} --height {args.height} is ratio {wanted}; drop --ratio or make it {wanted}")
        ratios = [wanted]
    args.ratio = ratios or None
    if args.debug and args.out is None:
        parser.error("--debug needs --out DIR")
    if (args.width or args.height) and args.out is None:
        parser.error("--width/--height size the written crops: add --out DIR")
    if args.max_pixels < 0:
        parser.error("--max-pixels must be 0 (no limit) or positive")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be 1..100, got {args.quality}")
    if args.debug_size < 0:
        parser.error(f"--debug-size must be 0 (full size) or positive, got {args.debug_size}")
    args.keep = [numbers(k, 4, "--keep", parser) for k in args.keep] or None
    args.focus = numbers(args.focus, 2, "--focus", parser) if args.focus else None
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file")
    args.images, problems = expand_inputs(args.images)
    if problems:
        parser.error("; ".join(problems))


def main(argv: Sequence[str] | None = None, cropper: Cropper | None = None) -> int:
    """Entry point of ``s2cnet``; ``cropper`` lets embedding code and tests supply their own model."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    from PIL import Image

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
