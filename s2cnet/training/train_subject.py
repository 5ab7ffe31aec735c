"""Trains the face / person / object heads on the shipped scorer's frozen backbone, from teacher labels.

    python -m s2cnet.training.teacher_labels --out runs/teachers            # once: YuNet + DeepLab labels
    python -m s2cnet.training.train_subject --labels runs/teachers --backbone-from s2cnet/weights/s2cnet.pt \
        --out runs/subject_heads.pt --epochs 20 --threads 2

The backbone stays frozen (BatchNorm statistics included), so crop scores do not move: the heads
only add what the proposer protects. Because it is frozen, its stage outputs are computed once per
photo, at exactly the input the Cropper gives it (whole photo, short side 256) and mirrored, and
cached in ``<out>.cache/`` under the backbone weights' digest; a step then costs the heads alone
(0.17 s for 16 photos on 2 cores, against 0.4 s or more with the backbone in the loop), so the heads
can train for many epochs. Training photos are GAICD train,
FCDB train and DUTS train minus one in ten by a hash of the id; ``teacher_labels.heldout_ids`` holds
out the rest for the benchmark (``benchmarks/bench_faces.py``); the first ``--val-photos`` of them
are the validation set the face thresholds are chosen on. Each epoch resumes from ``<out>.resume.pt``.
"""

from __future__ import annotations

import argparse
import hashlib
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
from torchvision.ops import box_iou, generalized_box_iou_loss

from s2cnet.backbone import fuse
from s2cnet.checkpoint import load_checkpoint
from s2cnet.imageio import open_image
from s2cnet.subject import PERSON, STRIDE, SubjectHeads, SubjectMaps, cell_boxes, decode_faces
from s2cnet.training.teacher_labels import heldout_ids, photo_list
from s2cnet.transforms import model_input

FACE_SCORE = 0.6  # YuNet rows at or above this are faces; LOW_SCORE..this are "not sure" (ignored)
PERSON_CLASS = 15  # PASCAL VOC
SHORT_SIDE = 256  # the Cropper's input: the heads train on exactly what they will see
MIN_FACE = 0.05  # the benchmark's faces: at least 5% of the photo's short side (max of box w, h)


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


def targets(faces: np.ndarray, classes: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Stride-8 training targets for an input of ``grid`` (rows, columns) cells of 8 px: CenterNet
    heatmap, its loss weight (0 over faces YuNet was unsure of), box targets and their weight, soft
    masks. The box is learnt at the centre cell and its 3x3 neighbours (each cell's own offset to the
    centre, weighted by the heatmap there): decoding reads the peak cell, which is often a neighbour
    of the true centre cell, and nine cells give the regression nine times the examples."""
    gh, gw = grid
    heat = np.zeros((gh, gw), np.float32)
    weight = np.ones((gh, gw), np.float32)
    box = np.zeros((4, gh, gw), np.float32)
    box_weight = np.zeros((gh, gw), np.float32)
    centre = np.zeros((gh, gw), np.float32)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    for x1, y1, x2, y2, score in faces:
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        if not (0 <= cx < gw and 0 <= cy < gh):
            continue
        if score < FACE_SCORE or max(w, h) < 6:  # unsure, or too small to learn at stride 8: no loss either way
            rows = slice(max(0, int(y1 / STRIDE)), int(math.ceil(y2 / STRIDE)))
            weight[rows, max(0, int(x1 / STRIDE)) : int(math.ceil(x2 / STRIDE))] = 0
            continue
        sigma = max(0.5, 0.17 * math.sqrt(w * h) / STRIDE)
        j, i = int(cx), int(cy)
        g = np.exp(-((xx - (j + 0.5)) ** 2 + (yy - (i + 0.5)) ** 2) / (2 * sigma**2))
        heat = np.maximum(heat, g)
        heat[i, j] = 1.0
        weight[i, j] = 1.0
        centre[i, j] = 1.0
        for ni in range(max(0, i - 1), min(gh, i + 2)):
            for nj in range(max(0, j - 1), min(gw, j + 2)):
                wn = 1.0 if (ni, nj) == (i, j) else float(g[ni, nj])
                if wn > box_weight[ni, nj]:  # where two faces' neighbourhoods meet, the nearer centre wins
                    box_weight[ni, nj] = wn
                    box[:, ni, nj] = [cx - nj, cy - ni, math.log(w / STRIDE), math.log(h / STRIDE)]
    fg = np.stack([classes == PERSON_CLASS, (classes > 0) & (classes < 255)]).astype(np.float32)
    masks = fg.reshape(2, gh, STRIDE, gw, STRIDE).mean((2, 4))
    return {"heat": heat, "weight": weight, "box": box, "box_weight": box_weight, "centre": centre, "masks": masks}


@dataclass
class CachedPhoto:
    """One photo (or its mirror) as the heads see it: the frozen backbone's three stage outputs (fp16),
    plus its stride-4 map for heads that read it, and the stride-8 targets, with the teacher faces in
    input pixels for evaluation."""

    id: str
    stages: tuple[torch.Tensor, ...]  # [32, h, w], [96, h/2, w/2], [320, h/4, w/4], [24, 2h, 2w] (stride 4)
    targets: dict[str, np.ndarray]
    faces: np.ndarray  # [F, 5] x1, y1, x2, y2, score in input pixels
    person: np.ndarray  # [h, w] bool: DeepLab's "person" at stride 8 (nearest), as the benchmark reads it

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.stages[0].shape[-2:])


@torch.no_grad()
def cache_photo(backbone, pid: str, path: Path, row: dict, labels: Path, mirror: bool,
                stride4: bool = False) -> CachedPhoto:
    """Decodes, resizes and normalises the photo as the Cropper does, then runs the backbone once."""
    loaded = open_image(path, target_short_side=SHORT_SIDE)
    x, scale = model_input(loaded.image, loaded.original_size, SHORT_SIDE)
    height, width = x.shape[-2:]
    faces = face_boxes(row)
    faces[:, :4] *= scale
    classes = np.asarray(Image.open(labels / "masks" / f"{pid}.png").resize((width, height), Image.NEAREST))
    if mirror:
        x = x.flip(-1)
        faces[:, [0, 2]] = width - faces[:, [2, 0]]
        classes = classes[:, ::-1]
    c4, c8, c16, c32 = backbone.stages_from4(x.contiguous(memory_format=torch.channels_last))
    stages = tuple(s[0].half() for s in (c8, c16, c32, c4)[: 4 if stride4 else 3])  # stride 4 doubles the cache
    grid = (height // STRIDE, width // STRIDE)
    person = np.asarray(Image.fromarray(np.ascontiguousarray(classes)).resize(grid[::-1], Image.NEAREST)) == PERSON_CLASS
    return CachedPhoto(pid, stages, targets(faces, np.ascontiguousarray(classes), grid), faces, person)


def backbone_digest(backbone: torch.nn.Module) -> str:
    """12 hex digits of the backbone's weights: the model file's own hash also changes whenever heads
    are attached to it, which leaves the backbone, and so the cache, as it was."""
    h = hashlib.sha256()
    for k, v in sorted(backbone.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def build_cache(backbone, data: Path, labels: Path, ids: set[str], path: Path, mirrored: bool,
                limit: int | None = None, stride4: bool = False) -> list[CachedPhoto]:
    """Cached photos for ``ids`` (and their mirrors with ``mirrored``), read from ``path`` when a
    previous run wrote it."""
    if path.exists():  # stored as plain dicts: a pickled class would be tied to the module that wrote it
        return [CachedPhoto(**d) for d in torch.load(path, map_location="cpu", weights_only=False)]
    faces = read_faces(labels)
    out: list[CachedPhoto] = []
    t0 = time.time()
    for pid, photo in photo_list(data):
        if pid not in ids or pid not in faces:
            continue
        for mirror in (False, True) if mirrored else (False,):
            out.append(cache_photo(backbone, pid, photo, faces[pid], labels, mirror, stride4))
        if len(out) % 500 < (2 if mirrored else 1):
            print(f"  cached {len(out)} in {time.time() - t0:.0f}s", flush=True)
        if limit and len(out) >= limit:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([vars(p) for p in out], path)
    return out


def batches(photos: list[CachedPhoto], order: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """``order`` split into batches of photos of one grid size (photos differ in aspect ratio), in
    random order."""
    by_grid: dict[tuple[int, int], list[int]] = {}
    for i in order:
        by_grid.setdefault(photos[i].grid, []).append(i)
    out = []
    for idx in by_grid.values():
        rng.shuffle(idx)
        out += [idx[k : k + batch_size] for k in range(0, len(idx), batch_size)]
    rng.shuffle(out)
    return out


def features(photos: list[CachedPhoto]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The heads' inputs (stride-8 stage, fused map, stride-4 map if cached) for photos of one grid size."""
    maps = [torch.stack([p.stages[k] for p in photos]).float() for k in range(len(photos[0].stages))]
    c8, c16, c32 = maps[:3]
    return c8, fuse(c8, c16, c32), maps[3] if len(maps) > 3 else None


def collate(photos: list[CachedPhoto]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    t = {k: torch.from_numpy(np.stack([p.targets[k] for p in photos])) for k in photos[0].targets}
    return *features(photos), t


def head_loss(maps: SubjectMaps, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CenterNet's penalty-reduced focal loss on the heatmap; L1 plus GIoU on the box cells (GIoU is
    what the IoU >= 0.5 match rewards: an L1 error that is harmless on a big face ruins a small one);
    BCE plus soft Dice on the masks."""
    p = torch.sigmoid(maps.face_logits[:, 0]).clamp(1e-4, 1 - 1e-4)
    pos = t["centre"]
    n = pos.sum().clamp(min=1)
    neg = (1 - pos) * t["weight"] * (1 - t["heat"]) ** 4
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + neg * p**2 * torch.log(1 - p)).sum() / n
    bw = t["box_weight"]
    l1 = ((maps.face_box - t["box"]).abs().sum(1) * bw).sum() / n
    cells = bw > 0
    giou = maps.face_box.new_zeros(())
    if cells.any():
        pred, truth = cell_boxes(maps.face_box)[cells], cell_boxes(t["box"])[cells]
        giou = (generalized_box_iou_loss(pred, truth, reduction="none") * bw[cells]).sum() / n
    m = torch.sigmoid(maps.mask_logits)
    bce = F.binary_cross_entropy_with_logits(maps.mask_logits, t["masks"])
    inter, total = (m * t["masks"]).sum((0, 2, 3)), (m + t["masks"]).sum((0, 2, 3))
    dice = (1 - (2 * inter + 1) / (total + 1)).mean()
    return {"loss": focal + l1 + 2 * giou + bce + dice, "focal": focal, "box": l1 + giou, "mask": bce + dice}


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


THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
SURE_PRECISION = 0.9  # "sure" faces, which the crop choice never cuts, start where validation precision reaches this


@torch.no_grad()
def evaluate(heads: SubjectHeads, photos: list[CachedPhoto]) -> dict:
    """Face precision / recall (faces >= 5% of the short side) per heatmap threshold and person-mask
    IoU against the teachers, on whole cached photos. ``threshold`` (proposed faces) is the one with
    the best F1, ``sure_face`` the lowest from there with precision >= SURE_PRECISION."""
    heads.eval()
    counts = {t: np.zeros(4, np.int64) for t in THRESHOLDS}
    inter = union = 0
    for ph in photos:
        maps = heads(*features([ph]))
        boxes, scores = decode_faces(maps, min(THRESHOLDS))
        short = min(ph.grid) * STRIDE
        for t in THRESHOLDS:
            keep = scores >= t
            counts[t] += match_faces(boxes[keep], scores[keep], ph.faces, short)
        person = torch.sigmoid(maps.mask_logits[0, PERSON]).numpy() >= 0.5
        inter, union = inter + (person & ph.person).sum(), union + (person | ph.person).sum()
    heads.train()
    sweep = {t: (tp / max(tp + fp, 1), found / max(total, 1)) for t, (tp, fp, found, total) in counts.items()}
    best = max(THRESHOLDS, key=lambda t: 2 * sweep[t][0] * sweep[t][1] / max(sweep[t][0] + sweep[t][1], 1e-9))
    sure = min([t for t in THRESHOLDS if t >= best and sweep[t][0] >= SURE_PRECISION], default=max(THRESHOLDS))
    return {"face_precision": sweep[best][0], "face_recall": sweep[best][1], "threshold": best, "sure_face": sure,
            "faces": int(counts[best][3]), "person_iou": float(inter / max(union, 1)),
            "sweep": {str(t): [round(v, 4) for v in pr] for t, pr in sweep.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--labels", type=Path, default=Path("runs/teachers"))
    ap.add_argument("--backbone-from", type=Path, default=Path(__file__).parent / "weights" / "s2cnet.pt")
    ap.add_argument("--out", type=Path, default=Path("runs/subject_heads.pt"))
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder of cached backbone outputs (default <out>.cache; named by the backbone's weights)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--detail", action="store_true", help="the heads also read the stride-4 map (small faces' edges)")
    ap.add_argument("--dilated", action="store_true", help="dilate the trunk's later blocks (large faces)")
    ap.add_argument("--face-repeat", type=int, default=3,
                    help="photos with a face are seen this many times per epoch (about one photo in four has one)")
    ap.add_argument("--val-photos", type=int, default=300,
                    help="held-out photos read each epoch (the face thresholds are chosen there)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    model, _ = load_checkpoint(args.backbone_from)
    # frozen: BatchNorm folded and channels-last, as the Cropper runs it
    backbone = model.backbone.eval().requires_grad_(False).fold_batchnorm().to(memory_format=torch.channels_last)
    held = heldout_ids(args.data)
    every = {pid for pid, _ in photo_list(args.data)}
    cache = args.cache or args.out.with_suffix(".cache")
    t0 = time.time()
    tag = backbone_digest(backbone)  # a cache made on other backbone weights is never read
    s4 = "-stride4" if args.detail else ""  # caches with the stride-4 map are twice the size: only for heads that read it
    train = build_cache(backbone, args.data, args.labels, every - held, cache / f"train-{tag}{s4}.pt", True, args.limit,
                        args.detail)
    val = build_cache(backbone, args.data, args.labels, held, cache / f"val{args.val_photos}-{tag}{s4}.pt", False,
                      args.val_photos, args.detail)
    print(f"{len(train)} training photos (with mirrors), {len(val)} validation photos, ready in {time.time() - t0:.0f}s",
          flush=True)

    heads = SubjectHeads(args.width, args.blocks, args.detail, args.dilated)
    opt = torch.optim.AdamW(heads.parameters(), lr=args.lr, weight_decay=1e-4)
    has_face = [i for i, ph in enumerate(train) if (ph.faces[:, 4] >= FACE_SCORE).any()]
    base_order = list(range(len(train))) + has_face * (args.face_repeat - 1)
    steps_per_epoch = len(batches(train, base_order, args.batch_size, random.Random(0)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, args.epochs * steps_per_epoch + 1),
                                                pct_start=0.05)
    resume = args.out.with_suffix(".resume.pt")
    start, history = 0, []
    if resume.exists():
        ck = torch.load(resume, map_location="cpu", weights_only=False)
        heads.load_state_dict(ck["heads"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        start, history = ck["epoch"] + 1, ck["history"]
        rng.setstate(ck["rng"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {"width": args.width, "blocks": args.blocks, "detail": args.detail, "dilated": args.dilated}
    print(f"{len(has_face)} training photos with a face; {steps_per_epoch} steps an epoch", flush=True)
    for epoch in range(start, args.epochs):
        t0 = time.time()
        sums: dict[str, float] = {}
        plan = batches(train, base_order, args.batch_size, rng)
        for idx in plan:
            c8, fused, c4, t = collate([train[i] for i in idx])
            losses = head_loss(heads(c8, fused, c4), t)
            opt.zero_grad()
            losses["loss"].backward()
            opt.step()
            if sched.last_epoch < sched.total_steps - 1:
                sched.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
        row = {"epoch": epoch, **{k: v / len(plan) for k, v in sums.items()}, **evaluate(heads, val),
               "seconds": time.time() - t0}
        history.append(row)
        print(json.dumps(row), flush=True)
        torch.save({"heads": heads.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                    "history": history, "rng": rng.getstate()}, resume)
        command = "python -m s2cnet.training.train_subject " + " ".join(argv if argv is not None else sys.argv[1:])
        torch.save({"heads": heads.state_dict(), "config": config, "history": history, "face_threshold": row["threshold"],
                    "sure_face": row["sure_face"], "backbone_from": str(args.backbone_from), "command": command}, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
