"""Train S2CNet on GAICD's human MOS. Seeded, resumable, one log line per epoch.

    python -m s2cnet.training.train --data ../shared/data/gaicd --init runs/saliency.pt --out runs/s2cnet
    python -m s2cnet.training.train --config best_config.json      # a file from tune/sweep.py

The validation split is carved from GAICD train (never the test split) and only steers logging.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from s2cnet.checkpoint import widen
from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.training.data import GAICD
from s2cnet.training.fcdb import FCDBPairs, pair_accuracy, split_fcdb
from s2cnet.training.losses import crop_loss, preference_loss
from s2cnet.training.metrics import average_metrics, image_metrics


@dataclass
class TrainConfig:
    data: str = "../shared/data/gaicd"
    out: str = "runs/s2cnet"
    init: str | None = None  # saliency-pretrained (DUTS) or ImageNet backbone, or a whole S2CNet to fine-tune
    epochs: int = 16
    lr: float = 3e-4
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    reg_weight: float = 1.0
    rank_weight: float = 1.0
    listwise_weight: float = 0.0  # ListNet term on the top crops (0: the paper's loss)
    listwise_temperature: float = 0.25
    freeze_stage8: bool = True  # the stride-8 layers keep their pretrained weights (and save CPU)
    train_bn_affine: bool = False  # BatchNorm scale and shift learn (statistics stay fixed); in the folded
    # ImageNet files the shift is the conv's bias
    val_size: int = 60  # images carved from train for validation
    folds: int = 0  # k-fold cross-validation: 0 keeps the val_size split; k > 1 validates on fold `fold` of k
    fold: int = 0  # which fold is held out (0..folds-1); every photo is validated once over the k folds
    limit: int | None = None  # train on the first N training images (smoke runs, tests)
    seed: int = 0
    val_seed: int | None = None  # draws the validation split (default: seed); fix it to compare seeds on the same photos
    threads: int | None = None
    progress_every: int = 100  # steps between progress lines (0: epoch lines only)
    swa_from: int | None = None  # average the weights of every epoch end from this epoch on (SWA); final.pt holds the average
    scale_jitter: list[int] = field(default_factory=list)  # training short sides drawn per step, e.g. [224, 256, 288]
    fcdb: str | None = None  # FCDB folder: its human-voted same-ratio pairs become a second training signal
    fcdb_weight: float = 1.0
    fcdb_every: int = 2  # one FCDB photo's pairs join every k-th GAICD step
    fcdb_margin: float = 0.5  # hinge margin of the pair term, normalised-MOS units
    fcdb_val_size: int = 138  # FCDB photos held out (a fixed split of ours, seed 0) for pair accuracy
    model: S2CNetConfig = field(default_factory=S2CNetConfig)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        model = S2CNetConfig.from_dict(d.pop("model", {}))
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(model=model, **d)


def split_train_val(root: str | Path, val_size: int, seed: int, folds: int = 0,
                    fold: int = 0) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of GAICD's train split: the first ``val_size`` of a shuffle, or
    with ``folds`` > 1 every ``folds``-th photo of that shuffle from ``fold`` on (the k folds partition
    the photos, so a recipe is validated on all of them over its k runs)."""
    ids = json.loads((Path(root) / "split.json").read_text())["train"]
    ids = sorted(ids)
    random.Random(seed).shuffle(ids)
    if folds > 1:
        if not 0 <= fold < folds:
            raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
        return [i for n, i in enumerate(ids) if n % folds != fold], ids[fold::folds]
    return ids[val_size:], ids[:val_size]


def load_backbone_init(model: S2CNet, path: str | Path) -> None:
    """Accepts a saliency checkpoint (keys 'backbone.*'): its backbone, but not its reduction, which
    fed a different head; torchvision's own MobileNetV2 checkpoint (e.g. its ImageNet weights, for
    users who have the file): its features; or a whole S2CNet state dict of the same architecture:
    every weight, to fine-tune it (a second stage with other settings, e.g. the stride-8 stage unfrozen)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    if any(k.startswith("features.") for k in state):
        model.backbone.load_torchvision(state)
        return
    own = model.state_dict()
    if set(state) == set(own) and all(own[k].shape == v.shape for k, v in state.items()):
        model.load_state_dict(widen(state))
        return
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith("backbone.reduce")}
    if not any(k.startswith("backbone.") for k in matched):
        raise ValueError(f"{path} holds no backbone weights")
    model.load_state_dict(matched, strict=False)


@torch.no_grad()
def evaluate_on(model: S2CNet, dataset: GAICD) -> dict[str, float]:
    model.eval()
    per_image = []
    for i in range(len(dataset)):
        s = dataset[i]
        pred = model(s.image[None], s.crops, s.objects if model.cfg.use_graph else None)
        per_image.append(image_metrics(pred.numpy(), s.mos.numpy()))
    return average_metrics(per_image)


@torch.no_grad()
def evaluate_pairs(model: S2CNet, dataset: FCDBPairs) -> float:
    """FCDB pair accuracy over every held-out pair (no object nodes: FCDB has no paper boxes)."""
    model.eval()
    scores = [model(s.image[None], s.crops, None).numpy() for s in (dataset[i] for i in range(len(dataset)))]
    return pair_accuracy(np.concatenate(scores)) * 100 if scores else float("nan")


def set_train_mode(model: S2CNet, cfg: TrainConfig) -> None:
    model.train()
    model.backbone.freeze_pretrained(stage8=cfg.freeze_stage8, affine=not cfg.train_bn_affine)


def train(cfg: TrainConfig, report=None) -> dict[str, float]:
    """Runs (or resumes) training; ``report(epoch, metrics, ckpt_path)`` lets Ray Tune observe it."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids = split_train_val(cfg.data, cfg.val_size, cfg.seed if cfg.val_seed is None else cfg.val_seed,
                                         cfg.folds, cfg.fold)
    train_ids = train_ids[: cfg.limit] if cfg.limit else train_ids
    train_set = GAICD(cfg.data, "train", augment=True, seed=cfg.seed, ids=train_ids, scale_jitter=tuple(cfg.scale_jitter))
    val_set = GAICD(cfg.data, "train", ids=val_ids)
    fcdb_train = fcdb_val = None
    if cfg.fcdb:
        fcdb_train_names, fcdb_val_names = split_fcdb(cfg.fcdb, cfg.fcdb_val_size, seed=0)
        fcdb_train = FCDBPairs(cfg.fcdb, fcdb_train_names, augment=True, scale_jitter=tuple(cfg.scale_jitter), seed=cfg.seed)
        fcdb_val = FCDBPairs(cfg.fcdb, fcdb_val_names)

    model = S2CNet(cfg.model)
    if cfg.init:
        load_backbone_init(model, cfg.init)
    model.backbone.freeze_pretrained(stage8=cfg.freeze_stage8, affine=not cfg.train_bn_affine)
    def in_backbone(name: str) -> bool:  # the MobileNetV2 stages; the 1x1 reduction learns at the head's rate
        return name.startswith("backbone.") and not name.startswith("backbone.reduce")

    backbone = [p for n, p in model.named_parameters() if p.requires_grad and in_backbone(n)]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not in_backbone(n)]
    opt = torch.optim.AdamW([{"params": backbone, "lr": cfg.backbone_lr}, {"params": head, "lr": cfg.lr}],
                            weight_decay=cfg.weight_decay)
    total = cfg.epochs * len(train_set)
    warm = min(cfg.warmup_steps, max(total // 10, 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

    start_epoch, history = 0, []
    swa: dict[str, torch.Tensor] | None = None
    swa_count = 0
    ckpt_path = out / "last.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        start_epoch, history = ck["epoch"] + 1, ck["history"]
        swa, swa_count = ck.get("swa"), ck.get("swa_count", 0)
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed from {ckpt_path} at epoch {start_epoch}", flush=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (out / "val_ids.json").write_text(json.dumps(val_ids))  # runs are only comparable on the same held-out photos

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        set_train_mode(model, cfg)
        rng = random.Random(cfg.seed * 1000 + epoch)
        train_set.rng = random.Random(cfg.seed * 1000 + epoch + 1)
        order = list(range(len(train_set)))
        rng.shuffle(order)
        logs: list[dict[str, float]] = []
        fcdb_order = list(range(len(fcdb_train))) if fcdb_train is not None else []
        rng.shuffle(fcdb_order)
        for step, i in enumerate(order):
            s = train_set[i]
            pred = model(s.image[None], s.crops, s.objects if cfg.model.use_graph else None)
            loss, parts = crop_loss(pred, s.mos, cfg.reg_weight, cfg.rank_weight, cfg.listwise_weight, cfg.listwise_temperature)
            if fcdb_order and step % cfg.fcdb_every == 0:
                p = fcdb_train[fcdb_order[(step // cfg.fcdb_every) % len(fcdb_order)]]
                pair = preference_loss(model(p.image[None], p.crops, None), p.margin, cfg.fcdb_margin)
                loss = loss + cfg.fcdb_weight * pair
                parts["fcdb"] = pair.item()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            logs.append({"loss": loss.item(), **parts})
            if cfg.progress_every and len(logs) % cfg.progress_every == 0:
                recent = np.mean([r["loss"] for r in logs[-cfg.progress_every:]])
                print(f"  epoch {epoch} step {len(logs)}/{len(order)} loss {recent:.4f} "
                      f"{(time.time() - t0) / len(logs):.3f}s/step", flush=True)
        val = evaluate_on(model, val_set)
        losses = sorted({k for r in logs for k in r})  # "fcdb" only on the steps that had a pair term
        row = {"epoch": epoch, **{k: float(np.mean([r[k] for r in logs if k in r])) for k in losses},
               "val_SRCC": val["SRCC"], "val_Acc5": val["Acc5"], "val_Acc10": val["Acc10"]}
        if fcdb_val is not None:
            row["val_fcdb_pairs"] = evaluate_pairs(model, fcdb_val)
        row["seconds"] = time.time() - t0
        if cfg.swa_from is not None and epoch >= cfg.swa_from:
            swa, swa_count = update_average(swa, swa_count, model.state_dict())
            row["swa_epochs"] = swa_count
        history.append(row)
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch,
                    "history": history, "torch_rng": torch.get_rng_state(), "config": asdict(cfg),
                    "swa": swa, "swa_count": swa_count}, ckpt_path)
        if report is not None:
            report(epoch, val, ckpt_path)
    if swa is not None:
        model.load_state_dict(swa)
        if history and "swa_val_SRCC" not in history[-1]:
            val = evaluate_on(model, val_set)
            history[-1].update({"swa_val_SRCC": val["SRCC"], "swa_val_Acc5": val["Acc5"], "swa_val_Acc10": val["Acc10"]})
            if fcdb_val is not None:
                history[-1]["swa_val_fcdb_pairs"] = evaluate_pairs(model, fcdb_val)
            print(f"weight average of {swa_count} epochs: val_SRCC {val['SRCC']:.4f} val_Acc5 {val['Acc5']:.2f} "
                  f"val_Acc10 {val['Acc10']:.2f}", flush=True)
    torch.save({"model": model.state_dict(), "config": asdict(cfg.model), "history": history}, out / "final.pt")
    return history[-1] if history else {}


def update_average(avg: dict[str, torch.Tensor] | None, count: int,
                   state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Running mean of weights (SWA): flatter minima than the last epoch's, for free, since BatchNorm is frozen."""
    if avg is None:
        return {k: v.detach().clone() for k, v in state.items()}, 1
    for k, v in state.items():
        if v.is_floating_point():
            avg[k].mul_(count / (count + 1)).add_(v.detach(), alpha=1 / (count + 1))
    return avg, count + 1


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="JSON file of TrainConfig fields (model fields under 'model')")
    for f in fields(TrainConfig):
        if f.name == "model":
            continue
        kind = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes"),
                "list[int]": lambda v: [int(x) for x in v.split(",")]}.get(str(f.type).split(" ")[0], str)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    ap.add_argument("--model", action="append", default=[], metavar="KEY=VALUE", help="S2CNetConfig override, repeatable")
    args = ap.parse_args(argv)
    base = json.loads(args.config.read_text()) if args.config else {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None) if f.name != "model" else None
        if v is not None:
            base[f.name] = v
    model = dict(base.get("model", {}))
    for kv in args.model:
        k, v = kv.split("=", 1)
        default = getattr(S2CNetConfig(), k, None)
        model[k] = type(default)(v) if not isinstance(default, bool) else v.lower() in ("1", "true", "yes")
    base["model"] = model
    return TrainConfig.from_dict(base)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
