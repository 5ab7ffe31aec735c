"""Faces: the face detector against a 640-px teacher, and whether the chosen crops keep the largest face.

    python benchmarks/bench_faces.py --data ../shared/data

On the held-out photos (``s2cnet.training.teacher_labels.heldout_ids``: GAICD test, FCDB and DUTS
validation, one in ten of the rest), against YuNet run by OpenCV at 640 px on the long side (its rows
of score >= 0.6 are faces, 0.3-0.6 "don't care"; cached in ``--cache``):

1. Detectors: recall and precision per face size (the longer box side over the photo's short side)
   and time per photo on one core, for the shipped detector (``s2cnet.faces.LibFaceDetection``,
   resizing included), the subject heads on the model's 256-px input, and the two together.
2. Crops: on the photos whose largest teacher face spans at least 5% of the short side, the share of
   chosen crops that keep less than 90% of that face (cut or dropped), per ratio, split into the
   photos where a crop of that ratio could hold the face and those where it could not; for ugc-crop,
   ugc-crop with the subject heads' faces alone (the previous product), smartcrop.py and a centre
   crop. The same for photos with one dominant face (the largest at least twice the area of any other).
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_subject import centre_crop, smartcrop_box  # noqa: E402

from s2cnet.candidates import parse_ratio  # noqa: E402
from s2cnet.choice import KEEP_WHOLE, kept_share  # noqa: E402
from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper  # noqa: E402
from s2cnet.faces import LibFaceDetection  # noqa: E402
from s2cnet.image_stage import decode, faces_in, for_model  # noqa: E402
from s2cnet.imageio import open_image  # noqa: E402
from s2cnet.subject import subjects  # noqa: E402
from s2cnet.training.teacher_labels import YuNet, heldout_ids, photo_list  # noqa: E402
from s2cnet.training.train_subject import FACE_SCORE, MIN_FACE, assign_faces, face_size  # noqa: E402
from s2cnet.transforms import model_input  # noqa: E402

BUCKETS = [(0.0, 0.05), (0.05, 0.10), (0.10, 0.20), (0.20, 10.0), (0.0, 10.0)]
RATIOS = ["1:1", "4:5", "16:9", "9:16", None]


def teacher_faces(photos: list[tuple[str, Path]], data: Path, cache: Path) -> dict[str, np.ndarray]:
    """YuNet at 640 px per photo: [N, 5] x1, y1, x2, y2, score in upright full-size pixels (cached)."""
    rows = {}
    if cache.exists():
        for r in map(json.loads, cache.read_text().splitlines()):
            rows[r["id"]] = np.asarray(r["faces"], np.float32).reshape(-1, 5)
    todo = [(pid, p) for pid, p in photos if pid not in rows]
    if todo:
        yunet = YuNet(data / "teachers" / "face_detection_yunet.onnx")
        cache.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a") as log:
            for pid, path in todo:
                f = yunet(open_image(path).image)
                boxes = np.c_[f[:, 0], f[:, 1], f[:, 0] + f[:, 2], f[:, 1] + f[:, 3], f[:, 14]].astype(np.float32)
                rows[pid] = boxes
                log.write(json.dumps({"id": pid, "faces": np.round(boxes, 2).tolist()}) + "\n")
    return rows


class Tally:
    """Recall and precision per face-size bucket; a prediction on an unsure teacher face counts neither way."""

    def __init__(self) -> None:
        self.faces, self.found, self.tp, self.fp = (np.zeros(len(BUCKETS)) for _ in range(4))

    def add(self, pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, short_side: float) -> None:
        match = assign_faces(pred, scores, truth)
        sure = truth[:, 4] >= FACE_SCORE
        tsize, psize = face_size(truth, short_side), face_size(pred, short_side)
        found = np.zeros(len(truth), bool)
        found[match[match >= 0]] = True
        hit = match >= 0
        for b, (lo, hi) in enumerate(BUCKETS):
            inside = sure & (tsize >= lo) & (tsize < hi)
            self.faces[b] += inside.sum()
            self.found[b] += (found & inside).sum()
            self.tp[b] += inside[match[hit]].sum()
            self.fp[b] += (~hit & (psize >= lo) & (psize < hi)).sum()

    def cells(self) -> list[str]:
        return [f"{self.found[b] / max(self.faces[b], 1):.3f} / {self.tp[b] / max(self.tp[b] + self.fp[b], 1):.3f}"
                for b in range(len(BUCKETS))]


def could_hold(size: tuple[int, int], face: np.ndarray, ratio: str | None) -> bool:
    """Whether a crop of ``ratio`` inside the photo can hold the face box whole (the free ratio always can)."""
    if ratio is None:
        return True
    a, b = parse_ratio(ratio)
    w, h = size
    cw = min(w, h * a / b)
    return face[2] - face[0] <= cw + 0.5 and face[3] - face[1] <= cw * b / a + 0.5


def bucket(lo: float, hi: float) -> str:
    return "all" if lo == 0 and hi >= 10 else f">= {lo:.0%}" if hi >= 10 else f"{lo:.0%}-{hi:.0%}"


def detectors(photos, truth, heads_cropper: Cropper, detector: LibFaceDetection) -> None:
    proposer, backbone = heads_cropper.proposer, heads_cropper.model.backbone
    tallies = {"LibFaceDetection (shipped)": Tally(), "subject heads": Tally(), "both": Tally()}
    ms = {"LibFaceDetection (shipped)": [], "subject heads": []}
    for pid, path in photos:
        detail = decode(path, heads_cropper.short_side, detector)
        loaded = for_model(detail, heads_cropper.short_side)
        t0 = time.perf_counter()
        boxes, scores = faces_in(detector, detail)
        ms["LibFaceDetection (shipped)"].append(time.perf_counter() - t0)
        x, _ = model_input(loaded.image, loaded.original_size, heads_cropper.short_side)
        with torch.no_grad():
            maps = backbone.pyramid(x.contiguous(memory_format=torch.channels_last))
            t1 = time.perf_counter()
            found = subjects(proposer.subject(maps.stride8, maps.fused, maps.stride4), proposer.face_threshold)
            ms["subject heads"].append(time.perf_counter() - t1)
        h8, w8 = maps.stride8.shape[-2:]
        to_full = np.float32([loaded.original_size[0] / (w8 * 8), loaded.original_size[1] / (h8 * 8)] * 2)
        hboxes, hscores = found.faces * to_full, found.face_scores
        short = min(loaded.original_size)
        t = truth[pid]
        tallies["LibFaceDetection (shipped)"].add(boxes, scores, t, short)
        tallies["subject heads"].add(hboxes, hscores, t, short)
        tallies["both"].add(np.concatenate([boxes, hboxes]), np.concatenate([scores, hscores * 0.5]), t, short)
    print(f"## Face detectors against YuNet at 640 px: {len(photos)} held-out photos (IoU >= 0.5), recall / precision\n")
    print("| detector | " + " | ".join(bucket(*b) for b in BUCKETS) + " | ms per photo (one core) |")
    print("|---|" + "---|" * (len(BUCKETS) + 1))
    n = {name: int(t.faces[b]) for b, name in [(len(BUCKETS) - 1, "all")] for t in tallies.values()}
    for name, t in tallies.items():
        time_ms = f"{1000 * np.mean(ms[name]):.1f}" if name in ms else "-"
        print(f"| {name} | " + " | ".join(t.cells()) + f" | {time_ms} |")
    print("\nFaces per size: " + ", ".join(f"{bucket(*b)} {int(next(iter(tallies.values())).faces[i])}"
                                       for i, b in enumerate(BUCKETS)) + f" (all: {n['all']})\n")


def crops(photos, truth, methods: dict) -> None:
    cases = []
    for pid, path in photos:
        t = truth[pid]
        sure = t[t[:, 4] >= FACE_SCORE, :4]
        if not len(sure):
            continue
        area = (sure[:, 2] - sure[:, 0]) * (sure[:, 3] - sure[:, 1])
        order = np.argsort(-area)
        largest = sure[order[0]]
        image = open_image(path).image
        if face_size(largest[None], min(image.size))[0] < MIN_FACE:
            continue
        dominant = len(sure) == 1 or area[order[0]] >= 2 * area[order[1]]
        cases.append((path, image, largest, dominant))
    tally = {m: {r: np.zeros(4, int) for r in RATIOS} for m in methods}  # [fail hold, n hold, fail not, n not]
    dom = {m: {r: np.zeros(4, int) for r in RATIOS} for m in methods}
    ms = {m: [] for m in methods}
    for path, image, face, dominant in cases:
        for m, fn in methods.items():
            t0 = time.perf_counter()
            boxes = fn(path, image)
            ms[m].append(time.perf_counter() - t0)
            for r, box in zip(RATIOS, boxes):
                lost = kept_share(np.array([box]), face[None])[0, 0] < KEEP_WHOLE
                k = 0 if could_hold(image.size, face, r) else 2
                for table in (tally, dom) if dominant else (tally,):
                    table[m][r][k] += int(lost)
                    table[m][r][k + 1] += 1
    n_dom = sum(d for *_, d in cases)
    for title, table, n in (("all photos", tally, len(cases)), ("one dominant face", dom, n_dom)):
        print(f"## Largest face (>= 5% of the short side) cut or dropped by the chosen crop, {title}: {n} photos\n")
        print("Where a crop of the ratio could hold it (could not: in brackets, with the count).\n")
        print("| method | " + " | ".join(r or "free" for r in RATIOS) + " |")
        print("|---|" + "---|" * len(RATIOS))
        for m in methods:
            cells = []
            for r in RATIOS:
                fh, nh, fn_, nn = table[m][r]
                extra = f" ({100 * fn_ / nn:.0f}% of {nn})" if nn else ""
                cells.append(f"{100 * fh / max(nh, 1):.1f}% of {nh}{extra}")
            print(f"| {m} | " + " | ".join(cells) + " |")
        print()
    print("| method | ms per photo, 5 ratios |\n|---|---|")
    for m in methods:
        print(f"| {m} | {1000 * np.mean(ms[m]):.0f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="the datasets folder (teachers/ included)")
    ap.add_argument("--cache", type=Path, default=Path("runs/bench_faces/yunet640.jsonl"), help="the teacher's faces, cached")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--limit", type=int, default=None, help="held-out photos (default: all)")
    ap.add_argument("--no-crops", action="store_true", help="only the detector table")
    ap.add_argument("--face-side", type=int, default=None, help="the detector's long side (default: the shipped one)")
    ap.add_argument("--fp32", action="store_true", help="float32 throughout, even where the CPU has bfloat16")
    ap.add_argument("--ugc-only", action="store_true", help="crops: ugc-crop alone (no peers), e.g. to compare --face-side")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    held = heldout_ids(args.data)
    photos = [(pid, p) for pid, p in photo_list(args.data) if pid in held][: args.limit]
    truth = teacher_faces(photos, args.data, args.cache)
    detector = LibFaceDetection(side=args.face_side) if args.face_side else "default"
    bf16 = False if args.fp32 else None  # None: the product's own choice (bfloat16 where the CPU has it)
    cropper = Cropper.from_pretrained(args.weights, bf16=bf16, face_detector=detector)
    heads_cropper = Cropper.from_pretrained(args.weights, bf16=bf16, face_detector=None)
    detectors(photos, truth, heads_cropper, cropper.face_detector)
    if args.no_crops:
        return
    methods = {"ugc-crop": lambda p, im: [c.box for c in cropper.crop(p, RATIOS[:-1])] + [cropper.crop(p, None)[0].box],
               "ugc-crop, faces from the subject heads only":
                   lambda p, im: [c.box for c in heads_cropper.crop(p, RATIOS[:-1])] + [heads_cropper.crop(p, None)[0].box],
               "smartcrop.py": lambda p, im: [smartcrop_box(im, r) for r in RATIOS],
               "centre crop": lambda p, im: [centre_crop(im.size, r) for r in RATIOS]}
    crops(photos, truth, {"ugc-crop": methods["ugc-crop"]} if args.ugc_only else methods)


if __name__ == "__main__":
    main()
