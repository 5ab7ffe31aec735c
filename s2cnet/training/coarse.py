"""Distils the coarse readout: a graph-free score of each candidate's token, trained to rank the
candidates as the full S2CNet score does, so the Cropper runs the graph head on the front-runners only.

    python -m s2cnet.training.coarse --data ../shared/data --weights s2cnet/weights/s2cnet.pt \
        --out runs/coarse --threads 2
    python -m s2cnet.training.export --into s2cnet/weights/s2cnet.pt --coarse-readout runs/coarse/coarse.pt

The teacher is the shipped model itself: for every photo the Cropper's own candidates (the ratios
below and the free ratio, with its proposals' anchors) get their full score, and the student, one
small MLP on the frozen token, learns a listwise ranking of them (softmax over a group, sharpened on
the top) plus a regression to the score, so a coarse score stands on the full score's scale. Photos:
GAICD train and FCDB minus ``teacher_labels.heldout_ids`` (GAICD test and FCDB validation among
them); one in ten of the rest validates the epochs. Tokens are cached in ``<out>/tokens-*.pt``
under the weights' digest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from s2cnet.checkpoint import weights_version
from s2cnet.cropper import Cropper
from s2cnet.image_stage import for_model
from s2cnet.model import score_mlp
from s2cnet.training.teacher_labels import heldout_ids, photo_list

RATIOS = ["1:1", "4:5", "3:4", "4:3", "16:9", "9:16", None]
TOPS = (1, 4, 8, 16, 32)


def collect(cropper: Cropper, paths: list[Path]) -> list[dict]:
    """Per photo and ratio: the candidates' tokens (fp16) and full scores, as the Cropper computes them."""
    out = []
    model = cropper.model
    for n, path in enumerate(paths):
        analysis = cropper.analyse(path, RATIOS)
        loaded = for_model(cropper._load(path), cropper.short_side)
        feat, _, scale = cropper._features(loaded)
        h, w = feat.shape[-2] * 16, feat.shape[-1] * 16
        for ratio, boxes in analysis.candidates.items():
            crops = torch.from_numpy(np.asarray(boxes, np.float32) * scale)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cropper.bf16):
                tokens = model.crop_tokens(feat, crops, float(w), float(h)).float()
            out.append({"photo": str(path), "ratio": ratio, "tokens": tokens.half(),
                        "scores": torch.from_numpy(np.asarray(analysis.scores[ratio], np.float32))})
        if n % 100 == 0:
            print(f"  {n}/{len(paths)} photos", flush=True)
    return out


def cached(cropper: Cropper, weights: Path, paths: list[Path], out: Path, name: str) -> list[dict]:
    file = out / f"tokens-{name}-{weights_version(weights)}.pt"
    if file.exists():
        return torch.load(file, weights_only=False)
    groups = collect(cropper, paths)
    torch.save(groups, file)
    return groups


def group_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Listwise KL towards the teacher's sharpened ranking, plus a regression onto its scale."""
    target = F.softmax(teacher / temperature, dim=0)
    listwise = -(target * F.log_softmax(student / temperature, dim=0)).sum()
    return listwise + F.mse_loss(student, teacher)


def evaluate(readout: torch.nn.Module, groups: list[dict]) -> dict:
    """Share of groups whose full-score winner is among the coarse top-K, and the mean rank correlation."""
    hits = {k: 0 for k in TOPS}
    srcc = []
    with torch.no_grad():
        for g in groups:
            s = readout(g["tokens"].float()).squeeze(-1)
            t = g["scores"]
            order = torch.argsort(s, descending=True)
            rank_of_best = int((order == int(torch.argmax(t))).nonzero()[0])
            for k in TOPS:
                hits[k] += rank_of_best < k
            if len(t) > 2:
                rs, rt = torch.argsort(torch.argsort(s)).float(), torch.argsort(torch.argsort(t)).float()
                srcc.append(float(torch.corrcoef(torch.stack([rs, rt]))[0, 1]))
    return {**{f"top{k}": 100.0 * hits[k] / len(groups) for k in TOPS}, "srcc": float(np.mean(srcc))}


def train(groups: list[dict], val: list[dict], dim: int, epochs: int, temperature: float, seed: int) -> tuple[dict, list]:
    torch.manual_seed(seed)
    readout = score_mlp(dim)
    opt = torch.optim.AdamW(readout.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * math.ceil(len(groups) / 16))
    history, best = [], None
    for epoch in range(epochs):
        t0 = time.time()
        order = torch.randperm(len(groups)).tolist()
        total = 0.0
        for i in range(0, len(order), 16):
            loss = sum(group_loss(readout(groups[j]["tokens"].float()).squeeze(-1), groups[j]["scores"], temperature)
                       for j in order[i : i + 16]) / len(order[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(order[i : i + 16])
        row = {"epoch": epoch, "loss": total / len(groups), **{f"val_{k}": v for k, v in evaluate(readout, val).items()},
               "seconds": round(time.time() - t0, 1)}
        history.append(row)
        print(json.dumps(row), flush=True)
        if best is None or row["val_top8"] >= best[0]:
            best = (row["val_top8"], {k: v.clone() for k, v in readout.state_dict().items()})
    return best[1], history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--weights", type=Path, default=Path("s2cnet/weights/s2cnet.pt"), help="the teacher (shipped) model")
    ap.add_argument("--out", type=Path, default=Path("runs/coarse"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--temperature", type=float, default=0.1, help="listwise softmax temperature (score units)")
    ap.add_argument("--shard", default="0/1", help="K/N: collect tokens for one shard of the photos only, then exit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    held = heldout_ids(args.data)
    photos = [(pid, p) for pid, p in photo_list(args.data) if pid.split("/")[0] in ("gaicd", "fcdb")]
    train_paths = [p for pid, p in photos if pid not in held]
    test_ids = json.loads((args.data / "gaicd/split.json").read_text())["test"]
    test_paths = [args.data / "gaicd/images" / f"{i}.jpg" for i in test_ids]
    cropper = Cropper.from_pretrained(args.weights, refine=None)
    k, n = (int(v) for v in args.shard.split("/"))
    if n > 1:  # collection only, so two processes can share the work
        cached(cropper, args.weights, train_paths[k::n], args.out, f"train{k}of{n}")
        cached(cropper, args.weights, test_paths[k::n], args.out, f"test{k}of{n}")
        return
    shards = sorted(args.out.glob(f"tokens-train*of*-{weights_version(args.weights)}.pt"))
    if shards:
        groups = [g for f in shards for g in torch.load(f, weights_only=False)]
        test = [g for f in sorted(args.out.glob(f"tokens-test*of*-{weights_version(args.weights)}.pt"))
                for g in torch.load(f, weights_only=False)]
    else:
        groups = cached(cropper, args.weights, train_paths, args.out, "train")
        test = cached(cropper, args.weights, test_paths, args.out, "test")
    val_photos = sorted({g["photo"] for g in groups})[::10]
    val = [g for g in groups if g["photo"] in set(val_photos)]
    fit = [g for g in groups if g["photo"] not in set(val_photos)]
    print(f"{len(fit)} training groups, {len(val)} validation groups, {len(test)} GAICD test groups", flush=True)
    state, history = train(fit, val, cropper.model.cfg.node_dim, args.epochs, args.temperature, args.seed)
    readout = score_mlp(cropper.model.cfg.node_dim)
    readout.load_state_dict(state)
    result = {"state": state, "history": history, "teacher": weights_version(args.weights),
              "test": evaluate(readout, test), "temperature": args.temperature, "ratios": RATIOS,
              "command": "python -m s2cnet.training.coarse " + " ".join(sys.argv[1:])}
    torch.save(result, args.out / "coarse.pt")
    print(json.dumps({"test": result["test"]}), flush=True)


if __name__ == "__main__":
    main()
