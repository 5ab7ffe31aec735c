"""Trains the face / person / object heads on the shipped scorer's frozen backbone, from teacher labels.

    python -m s2cnet.teacher_labels --out runs/teachers            # once: YuNet + DeepLab labels
    python -m s2cnet.train_subject --labels runs/teachers --backbone-from s2cnet/weights/s2cnet.pt \
        --out runs/subject_heads.pt --epochs 12 --threads 2

The backbone stays frozen (BatchNorm statistics included), so crop scores do not move: the heads
only add what the proposer protects. Training photos are GAICD train, FCDB train and DUTS train minus
one in ten by a hash of the id; ``teacher_labels.heldout_ids`` holds out the rest for the benchmark
(``benchmarks/bench_faces.py``). Each epoch resumes from ``<out>.resume.pt``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import box_iou

from s2cnet.checkpoint import load_checkpoint
from s2cnet.imageio import open_image
from s2cnet.subject import PERSON, STRIDE, SubjectHeads, SubjectMaps, decode_faces
from s2cnet.teacher_labels import heldout_ids, photo_list
from s2cnet.transforms import IMAGENET_MEAN, IMAGENET_STD, model_input, photometric_jitter

FACE_SCORE = 0.6  # YuNet rows at or above this are faces; LOW_SCORE..this are "not sure" (ignored)
PERSON_CLASS = 15  # PASCAL VOC
STORE_SHORT_SIDE = 320  # photos are kept in memory at this short side
MIN_FACE = 0.05  # the benchmark's faces: at least 5% of the photo's short side (max of box w, h)


@dataclass
class Photo:
    id: str
    image: np.ndarray  # [H, W, 3] uint8, short side STORE_SHORT_SIDE
    classes: np.ndarray  # [H, W] uint8 PASCAL class ids
    faces: np.ndarray  # [F, 5] x1, y1, x2, y2, score in ``image`` pixels


def read_faces(labels: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted(labels.glob("faces.*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    return rows


def face_boxes(row: dict, scale: float = 1.0) -> np.ndarray:
    """YuNet rows -> [F, 5] x1, y1, x2, y2, score, scaled."""
    f = np.asarray(row["faces"], np.float32).reshape(-1, 15)
    return np.stack([f[:, 0], f[:, 1], f[:, 0] + f[:, 2], f[:, 1] + f[:, 3], f[:, 14] / scale], 1) * scale


def load_photos(data: Path, labels: Path, ids: set[str], limit: int | None = None) -> list[Photo]:
    faces = read_faces(labels)
    out = []
    for pid, path in photo_list(data):
        if pid not in ids or pid not in faces:
            continue
        loaded = open_image(path, target_short_side=STORE_SHORT_SIDE)
        w0, h0 = loaded.original_size
        s = STORE_SHORT_SIDE / min(w0, h0)
        size = (max(1, round(w0 * s)), max(1, round(h0 * s)))
        image = np.asarray(loaded.image.convert("RGB").resize(size, Image.BILINEAR))
        classes = np.asarray(Image.open(labels / "masks" / f"{pid}.png").resize(size, Image.NEAREST))
        out.append(Photo(pid, image, classes, face_boxes(faces[pid], s)))
        if limit and len(out) >= limit:
            break
    return out


def targets(faces: np.ndarray, classes: np.ndarray, grid: int) -> dict[str, np.ndarray]:
    """Stride-8 training targets for one crop of ``grid * 8`` px square: CenterNet heatmap, its loss
    weight (0 over faces YuNet was unsure of), the centre cells' box targets, soft masks."""
    heat = np.zeros((grid, grid), np.float32)
    weight = np.ones((grid, grid), np.float32)
    box = np.zeros((4, grid, grid), np.float32)
    centre = np.zeros((grid, grid), np.float32)
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    for x1, y1, x2, y2, score in faces:
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        if not (0 <= cx < grid and 0 <= cy < grid):
            continue
        if score < FACE_SCORE or max(w, h) < 6:  # unsure, or too small to learn at stride 8: no loss either way
            rows = slice(max(0, int(y1 / STRIDE)), int(math.ceil(y2 / STRIDE)))
            weight[rows, max(0, int(x1 / STRIDE)) : int(math.ceil(x2 / STRIDE))] = 0
            continue
        sigma = max(0.5, 0.17 * math.sqrt(w * h) / STRIDE)
        heat = np.maximum(heat, np.exp(-((xx - (int(cx) + 0.5)) ** 2 + (yy - (int(cy) + 0.5)) ** 2) / (2 * sigma**2)))
        j, i = int(cx), int(cy)
        heat[i, j] = 1.0
        weight[i, j] = 1.0
        centre[i, j] = 1.0
        box[:, i, j] = [cx - j, cy - i, math.log(w / STRIDE), math.log(h / STRIDE)]
    fg = np.stack([classes == PERSON_CLASS, (classes > 0) & (classes < 255)]).astype(np.float32)
    masks = fg.reshape(2, grid, STRIDE, grid, STRIDE).mean((2, 4))
    return {"heat": heat, "weight": weight, "box": box, "centre": centre, "masks": masks}


def sample(photo: Photo, rng: random.Random, size: int = 256) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Scale jitter around the inference scale (short side 256), a random square crop (padded when the
    photo is smaller), flip and colour jitter."""
    u = rng.uniform(0.7, 1.4) * 256 / STORE_SHORT_SIDE
    h, w = photo.image.shape[:2]
    nw, nh = max(1, round(w * u)), max(1, round(h * u))
    img = np.asarray(Image.fromarray(photo.image).resize((nw, nh), Image.BILINEAR))
    cls = np.asarray(Image.fromarray(photo.classes).resize((nw, nh), Image.NEAREST))
    x0, y0 = rng.randint(0, max(0, nw - size)), rng.randint(0, max(0, nh - size))
    canvas = np.zeros((size, size, 3), np.uint8) + np.uint8([124, 116, 104])  # the ImageNet mean: "nothing"
    ccls = np.zeros((size, size), np.uint8)
    part = img[y0 : y0 + size, x0 : x0 + size]
    canvas[: part.shape[0], : part.shape[1]] = part
    ccls[: part.shape[0], : part.shape[1]] = cls[y0 : y0 + size, x0 : x0 + size]
    faces = photo.faces.copy()
    faces[:, :4] = faces[:, :4] * u - np.float32([x0, y0, x0, y0])
    if rng.random() < 0.5:
        canvas, ccls = canvas[:, ::-1], ccls[:, ::-1]
        faces[:, [0, 2]] = size - faces[:, [2, 0]]
    x = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1).float() / 255.0
    x = photometric_jitter(x, rng)
    x = (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return x, targets(faces, np.ascontiguousarray(ccls), size // STRIDE)


def head_loss(maps: SubjectMaps, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CenterNet's penalty-reduced focal loss on the heatmap, L1 on the centre cells' box, BCE plus
    soft Dice on the masks."""
    p = torch.sigmoid(maps.face_logits[:, 0]).clamp(1e-4, 1 - 1e-4)
    pos = t["centre"]
    neg = (1 - pos) * t["weight"] * (1 - t["heat"]) ** 4
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + neg * p**2 * torch.log(1 - p)).sum() / pos.sum().clamp(min=1)
    l1 = ((maps.face_box - t["box"]).abs().sum(1) * pos).sum() / pos.sum().clamp(min=1)
    m = torch.sigmoid(maps.mask_logits)
    bce = F.binary_cross_entropy_with_logits(maps.mask_logits, t["masks"])
    inter, total = (m * t["masks"]).sum((0, 2, 3)), (m + t["masks"]).sum((0, 2, 3))
    dice = (1 - (2 * inter + 1) / (total + 1)).mean()
    return {"loss": focal + l1 + bce + dice, "focal": focal, "box": l1, "mask": bce + dice}


def face_size(boxes: np.ndarray, short_side: float) -> np.ndarray:
    """A face's size as the benchmark counts it: the longer side of its box over the photo's short side."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / short_side


def assign_faces(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Greedy matching, most confident prediction first: [P] index of the teacher face each
    prediction matched (IoU >= ``iou``), or -1."""
    ious = box_iou(torch.as_tensor(pred, dtype=torch.float64).reshape(-1, 4),
                   torch.as_tensor(truth[:, :4], dtype=torch.float64).reshape(-1, 4)).numpy()
    taken = np.zeros(len(truth), bool)
    match = np.full(len(pred), -1)
    for i in np.argsort(-scores, kind="stable"):
        if len(truth) == 0:
            break
        free = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(free))
        if free[j] >= iou:
            taken[j], match[i] = True, j
    return match


def match_faces(pred: np.ndarray, scores: np.ndarray, truth: np.ndarray, short_side: float,
                min_face: float = MIN_FACE, iou: float = 0.5) -> tuple[int, int, int, int]:
    """(true positives, false positives, faces found, faces) for faces of at least ``min_face`` of the
    short side. ``truth`` rows are x1,y1,x2,y2,score; YuNet's unsure rows and smaller faces are
    "don't care": a prediction on one counts neither way, as does a prediction smaller than the range."""
    counted = (truth[:, 4] >= FACE_SCORE) & (face_size(truth, short_side) >= min_face)
    match = assign_faces(pred, scores, truth, iou)
    hit = match >= 0
    tp = int(counted[match[hit]].sum())
    fp = int((~hit & (face_size(pred, short_side) >= min_face)).sum())
    found = np.zeros(len(truth), bool)
    found[match[hit]] = True
    return tp, fp, int((found & counted).sum()), int(counted.sum())


@torch.no_grad()
def evaluate(backbone, heads: SubjectHeads, photos: list[Photo], threshold: float = 0.4) -> dict[str, float]:
    """Face precision / recall (faces >= 5% of the short side) and person-mask IoU against the teachers,
    on whole photos at the inference input size."""
    heads.eval()
    tp = fp = found = total = 0
    inter = union = 0.0
    for ph in photos:
        img = Image.fromarray(ph.image)
        x, scale = model_input(img, img.size)
        maps = heads(*backbone.pyramid(x))
        boxes, scores = decode_faces(maps, threshold)
        truth = ph.faces.copy()
        truth[:, :4] *= scale
        a, b, c, d = match_faces(boxes, scores, truth, min(x.shape[-2:]))
        tp, fp, found, total = tp + a, fp + b, found + c, total + d
        person = torch.sigmoid(maps.mask_logits[0, PERSON]).numpy() >= 0.5
        cls = np.asarray(Image.fromarray(ph.classes).resize(person.shape[::-1], Image.NEAREST)) == PERSON_CLASS
        inter, union = inter + (person & cls).sum(), union + (person | cls).sum()
    heads.train()
    return {"face_precision": tp / max(tp + fp, 1), "face_recall": found / max(total, 1), "faces": total,
            "person_iou": inter / max(union, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--labels", type=Path, default=Path("runs/teachers"))
    ap.add_argument("--backbone-from", type=Path, default=Path(__file__).parent / "weights" / "s2cnet.pt")
    ap.add_argument("--out", type=Path, default=Path("runs/subject_heads.pt"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--face-repeat", type=int, default=3,
                    help="photos with a face are seen this many times per epoch (about one photo in five has one)")
    ap.add_argument("--val-photos", type=int, default=400, help="held-out photos read each epoch")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    held = heldout_ids(args.data)
    every = {pid for pid, _ in photo_list(args.data)}
    t0 = time.time()
    train = load_photos(args.data, args.labels, every - held, args.limit)
    val = load_photos(args.data, args.labels, held, args.val_photos)
    print(f"{len(train)} training photos, {len(val)} validation photos, loaded in {time.time() - t0:.0f}s", flush=True)

    model, _ = load_checkpoint(args.backbone_from)
    # frozen: BatchNorm folded and channels-last, as the Cropper runs it (twice as fast on a CPU)
    backbone = model.backbone.eval().requires_grad_(False).fold_batchnorm().to(memory_format=torch.channels_last)
    heads = SubjectHeads(args.width, args.blocks)
    opt = torch.optim.AdamW(heads.parameters(), lr=args.lr, weight_decay=1e-4)
    has_face = [i for i, ph in enumerate(train) if (ph.faces[:, 4] >= FACE_SCORE).any()]
    base_order = list(range(len(train))) + has_face * (args.face_repeat - 1)
    steps_per_epoch = len(base_order) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, args.epochs * steps_per_epoch),
                                                pct_start=0.05)
    resume = args.out.with_suffix(".resume.pt")
    start, history = 0, []
    if resume.exists():
        ck = torch.load(resume, map_location="cpu", weights_only=False)
        heads.load_state_dict(ck["heads"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        start, history = ck["epoch"] + 1, ck["history"]
        rng.setstate(ck["rng"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {"width": args.width, "blocks": args.blocks}
    print(f"{len(has_face)} training photos with a face; {steps_per_epoch} steps an epoch", flush=True)
    for epoch in range(start, args.epochs):
        t0 = time.time()
        order = list(base_order)
        rng.shuffle(order)
        sums: dict[str, float] = {}
        for b in range(steps_per_epoch):
            xs, ts = zip(*(sample(train[i], rng) for i in order[b * args.batch_size : (b + 1) * args.batch_size]))
            t = {k: torch.from_numpy(np.stack([d[k] for d in ts])) for k in ts[0]}
            with torch.no_grad():
                c8, fused = backbone.pyramid(torch.stack(xs).contiguous(memory_format=torch.channels_last))
            losses = head_loss(heads(c8.contiguous(), fused.contiguous()), t)
            opt.zero_grad()
            losses["loss"].backward()
            opt.step()
            sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            if b % 50 == 0:
                print(f"  epoch {epoch} step {b}/{steps_per_epoch} loss {losses['loss'].item():.3f}", flush=True)
        row = {"epoch": epoch, **{k: v / steps_per_epoch for k, v in sums.items()}, **evaluate(backbone, heads, val),
               "seconds": time.time() - t0}
        history.append(row)
        print(json.dumps(row), flush=True)
        torch.save({"heads": heads.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                    "history": history, "rng": rng.getstate()}, resume)
        command = "python -m s2cnet.train_subject " + " ".join(argv if argv is not None else sys.argv[1:])
        torch.save({"heads": heads.state_dict(), "config": config, "history": history,
                    "backbone_from": str(args.backbone_from), "command": command}, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
