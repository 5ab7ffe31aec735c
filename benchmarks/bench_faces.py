"""Faces and people: the subject heads against the teachers, the Haar cascade they replace, what the
proposals cost, and whether the chosen crops keep faces whole.

    python benchmarks/bench_faces.py --data ../shared/data --labels runs/teachers

On the held-out photos (``s2cnet.training.teacher_labels.heldout_ids``: GAICD test, FCDB and DUTS validation,
one in ten of the rest) after the first 300 (training's validation photos, where the face thresholds
were chosen; ``--skip 0 --limit 300`` shows those), against YuNet's labels (score >= 0.6; its unsure rows are "don't care"):
face recall and precision per face size (the longer box side over the photo's short side), for
the heads, for the cascade, and for YuNet itself run at the heads' input size (short side 256: what
that resolution allows a good detector, against its own labels at 640 px); person-mask IoU against
DeepLabV3; time per photo on one core; and, on the held-out photos with a face of at least 5%, the
share of those faces that the chosen crop cuts (keeps 10-90% of the box) or drops (keeps under 10%)
per ratio, for ugc-crop with the heads, ugc-crop with the cascade (the previous proposer),
smartcrop.py and a centre crop. Prints tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_subject import centre_crop, smartcrop_box  # noqa: E402

from s2cnet.checkpoint import load_checkpoint  # noqa: E402
from s2cnet.cropper import DEFAULT_WEIGHTS, Cropper, kept_share  # noqa: E402
from s2cnet.imageio import open_image  # noqa: E402
from s2cnet.proposals import FaceDetector, default_proposer  # noqa: E402
from s2cnet.subject import PERSON, decode_faces, mask_regions, subjects  # noqa: E402
from s2cnet.training.teacher_labels import YuNet, heldout_ids, photo_list  # noqa: E402
from s2cnet.training.train_subject import FACE_SCORE, MIN_FACE, PERSON_CLASS, assign_faces, face_boxes, face_size, read_faces  # noqa: E402
from s2cnet.transforms import model_input  # noqa: E402

BUCKETS = [(0.0, 0.05), (0.05, 0.10), (0.10, 0.20), (0.20, 10.0), (MIN_FACE, 10.0)]
RATIOS = ["1:1", "16:9", "9:16", None]


def bucket_name(lo: float, hi: float) -> str:
    return f">= {lo:.0%}" if hi >= 10 else f"{lo:.0%}-{hi:.0%}"


class Tally:
    """Recall and precision per face-size bucket; predictions on unsure teacher faces are "don't care",
    and so is a prediction that matched a face outside the bucket."""

    def __init__(self) -> None:
        self.found = np.zeros(len(BUCKETS))
        self.faces = np.zeros(len(BUCKETS))
        self.tp = np.zeros(len(BUCKETS))
        self.fp = np.zeros(len(BUCKETS))

    def add(self, pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, short_side: float) -> None:
        match = assign_faces(pred, scores, truth)
        sure = truth[:, 4] >= FACE_SCORE
        tsize, psize = face_size(truth, short_side), face_size(pred, short_side)
        found = np.zeros(len(truth), bool)
        found[match[match >= 0]] = True
        for b, (lo, hi) in enumerate(BUCKETS):
            inside = sure & (tsize >= lo) & (tsize < hi)
            self.faces[b] += inside.sum()
            self.found[b] += (found & inside).sum()
            hit = match >= 0
            self.tp[b] += (inside[match[hit]]).sum()
            self.fp[b] += (~hit & (psize >= lo) & (psize < hi)).sum()

    def rows(self) -> list[tuple[str, int, float, float]]:
        return [(bucket_name(*BUCKETS[b]), int(self.faces[b]), self.found[b] / max(self.faces[b], 1),
                 self.tp[b] / max(self.tp[b] + self.fp[b], 1)) for b in range(len(BUCKETS))]


def teacher_resolution(photos: list[tuple[str, Path]], labels: dict, data: Path, sides: list[int]) -> None:
    """YuNet at smaller long sides against its own 640-px labels: the recall a dedicated face detector
    keeps at a resolution, and what that resolution costs it on one core (resizing the decoded photo included)."""
    yunet = YuNet(data / "teachers" / "face_detection_yunet.onnx", score=FACE_SCORE)
    images = [(open_image(p).image, face_boxes(labels[pid])) for pid, p in photos]
    print(f"## YuNet at smaller sizes against its own labels at 640 px, {len(images)} held-out photos\n")
    print("| long side | recall (>= 5%) | precision (>= 5%) | recall 5-10% | ms per photo (one core) |")
    print("|---|---|---|---|---|")
    for side in sides:
        yunet.side, tally, ms = side, Tally(), []
        for image, truth in images:
            t0 = time.perf_counter()
            found = face_boxes({"faces": yunet(image).tolist()})
            ms.append(time.perf_counter() - t0)
            tally.add(found[:, :4], found[:, 4], truth, min(image.size))
        rows = tally.rows()
        print(f"| {side} | {rows[-1][2]:.3f} | {rows[-1][3]:.3f} | {rows[1][2]:.3f} | {1000 * np.median(ms):.1f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--labels", type=Path, default=Path("runs/teachers"))
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--skip", type=int, default=300,
                    help="leave out the first N held-out photos (training's validation; the face thresholds were chosen there)")
    ap.add_argument("--limit", type=int, default=None, help="held-out photos after --skip (default: all)")
    ap.add_argument("--threshold", type=float, default=None, help="face heatmap threshold (default: the proposer's)")
    ap.add_argument("--no-crops", action="store_true", help="skip the crop table (the slow part)")
    ap.add_argument("--sweep", action="store_true",
                    help="also print recall / precision (faces >= 5%%) per heatmap threshold")
    ap.add_argument("--teacher-sides", default=None,
                    help="only print YuNet's own recall / precision and time on one core at these long sides, e.g. "
                         "320,384,512,640: what resolution (and time) a good face detector needs for a given recall")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    held, labels = heldout_ids(args.data), read_faces(args.labels)
    photos = [(pid, p) for pid, p in photo_list(args.data) if pid in held and pid in labels][args.skip :]
    photos = photos[: args.limit]

    if args.teacher_sides:
        teacher_resolution(photos, labels, args.data, [int(v) for v in args.teacher_sides.split(",")])
        return
    heads_cropper = Cropper.from_pretrained(args.weights, bf16=False)
    proposer = heads_cropper.proposer
    if getattr(proposer, "subject", None) is None:
        raise SystemExit(f"{args.weights} carries no subject heads (see s2cnet.training.train_subject)")
    if args.threshold is not None:
        proposer.face_threshold = args.threshold
    _, ck = load_checkpoint(args.weights)
    cascade_cropper = Cropper.from_pretrained(args.weights, proposer=default_proposer(head_state=ck["saliency_head"]), bf16=False)
    haar = FaceDetector()
    yunet = YuNet(args.data / "teachers" / "face_detection_yunet.onnx", score=FACE_SCORE)
    backbone = heads_cropper.model.backbone

    heads_tally, haar_tally, yunet_tally = Tally(), Tally(), Tally()
    sweep: list = []
    inter = union = 0.0
    person_ious: list[float] = []
    ms = {"backbone": [], "subject heads": [], "whole proposer (heads + saliency + NMS)": [], "Haar cascade": []}
    with_faces = []
    for pid, path in photos:
        loaded = open_image(path, target_short_side=heads_cropper.short_side)
        truth = face_boxes(labels[pid])  # upright full-size pixels
        short = min(loaded.original_size)
        sx, sy = loaded.scale
        x, _ = model_input(loaded.image, loaded.original_size, heads_cropper.short_side)
        with torch.no_grad():
            t0 = time.perf_counter()
            maps = backbone.pyramid(x.contiguous(memory_format=torch.channels_last))
            t1 = time.perf_counter()
            # what proposer.subjects does, once: the heads, their face decoding and the mask regions
            raw = proposer.subject(maps.stride8, maps.fused, maps.stride4)
            found = subjects(raw, proposer.face_threshold)
            mask_regions(found.person), mask_regions(found.objects)
            t2 = time.perf_counter()
            proposer.propose(loaded.image, np.zeros((0, 4), np.float32), maps)
            t3 = time.perf_counter()
        ms["backbone"].append(t1 - t0)
        ms["subject heads"].append(t2 - t1)
        ms["whole proposer (heads + saliency + NMS)"].append(t3 - t2)
        h8, w8 = raw.face_logits.shape[-2:]  # model-input pixels -> full-size ones
        to_full = np.float32([loaded.original_size[0] / (w8 * 8), loaded.original_size[1] / (h8 * 8)] * 2)
        heads_tally.add(found.faces * to_full, found.face_scores, truth, short)
        if args.sweep:
            low_boxes, low_scores = decode_faces(raw, 0.1)
            sweep.append((low_boxes * to_full, low_scores, truth, short))
        t4 = time.perf_counter()
        cascade = haar(loaded.image)
        ms["Haar cascade"].append(time.perf_counter() - t4)
        haar_tally.add(cascade * np.float32([sx, sy, sx, sy]), np.ones(len(cascade), np.float32), truth, short)
        yunet.side = max(x.shape[-2:])  # the teacher at the student's resolution
        small = face_boxes({"faces": yunet(loaded.image).tolist()})
        yunet_tally.add(small[:, :4] * np.float32([sx, sy, sx, sy]), small[:, 4], truth, short)
        # person mask against DeepLab, at stride 8 of the model input
        person = torch.sigmoid(raw.mask_logits[0, PERSON]).numpy() >= 0.5
        teacher = Image.open(args.labels / "masks" / f"{pid}.png").resize(person.shape[::-1], Image.NEAREST)
        teacher = np.asarray(teacher) == PERSON_CLASS
        i, u = (person & teacher).sum(), (person | teacher).sum()
        inter, union = inter + i, union + u
        if teacher.mean() > 0.01:
            person_ious.append(i / max(u, 1))
        counted = truth[(truth[:, 4] >= FACE_SCORE) & (face_size(truth, short) >= MIN_FACE), :4]
        if len(counted):
            with_faces.append((path, counted))

    print(f"## Faces against YuNet, {len(photos)} held-out photos (IoU >= 0.5)\n")
    print(f"Heads: faces from heatmap {proposer.face_threshold}, sure faces from {proposer.sure_face}\n")
    print("| face size | faces | heads recall | heads precision | Haar recall | Haar precision "
          "| YuNet at the heads' input: recall | precision |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, n, r, p), (_, _, hr, hp), (_, _, yr, yp) in zip(heads_tally.rows(), haar_tally.rows(), yunet_tally.rows()):
        print(f"| {name} | {n} | {r:.3f} | {p:.3f} | {hr:.3f} | {hp:.3f} | {yr:.3f} | {yp:.3f} |")
    if args.sweep:
        print("\n| threshold | recall (>= 5%) | precision (>= 5%) |\n|---|---|---|")
        for t in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6):
            tally = Tally()
            for boxes, scores, truth, short in sweep:
                keep = scores >= t
                tally.add(boxes[keep], scores[keep], truth, short)
            _, _, r, p = tally.rows()[-1]
            print(f"| {t:.2f} | {r:.3f} | {p:.3f} |")
    print(f"\nPerson mask against DeepLabV3: IoU {inter / max(union, 1):.3f} over all held-out photos; "
          f"mean per-photo IoU {np.mean(person_ious):.3f} over the {len(person_ious)} photos with people (> 1% of the photo)\n")
    print("| stage (one core) | ms per photo |")
    print("|---|---|")
    for k, v in ms.items():
        print(f"| {k} | {1000 * np.mean(v):.1f} |")
    if args.no_crops:
        return

    methods = {"ugc-crop, subject heads": lambda im, r: heads_cropper.crop(im, [r])[0].box,
               "ugc-crop, Haar cascade (before)": lambda im, r: cascade_cropper.crop(im, [r])[0].box,
               "smartcrop.py": smartcrop_box, "centre crop": lambda im, r: centre_crop(im.size, r)}
    cut = {m: {r: [0, 0] for r in RATIOS} for m in methods}
    total = 0
    for path, faces in with_faces:
        image = open_image(path).image
        total += len(faces)
        for m, fn in methods.items():
            for r in RATIOS:
                kept = kept_share(np.array([fn(image, r)]), faces)[0]
                cut[m][r][0] += int(((kept > 0.1) & (kept < 0.9)).sum())
                cut[m][r][1] += int((kept <= 0.1).sum())
    print(f"\n## Faces cut / dropped by the chosen crop: {total} faces (>= 5% of the short side) in {len(with_faces)} photos\n")
    print("| method | " + " | ".join(r or "free" for r in RATIOS) + " |")
    print("|---|" + "---|" * len(RATIOS))
    for m in methods:
        cells = [f"{100 * c / total:.1f}% / {100 * d / total:.1f}%" for c, d in (cut[m][r] for r in RATIOS)]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
