"""Saliency training on DUTS's human masks: backbone pretraining, or only the head on a trained scorer.

No ImageNet weights can be downloaded on our machines, so the backbone first learns to find the
salient object in 3,000 human-masked DUTS photos. What makes a crop good depends heavily on keeping
that object whole, so this is a relevant pretext task; the same head later proposes object boxes.

    python -m s2cnet.training.train_saliency --data ../shared/data/duts --out runs/saliency.pt --epochs 4 --stop-after 3

After S2CNet is trained, a second run fits only the head on S2CNet's frozen backbone, so the shipped
proposer reads the features the crop scorer computes anyway (one backbone pass per photo):

    python -m s2cnet.training.train_saliency --backbone-from runs/s2cnet --init runs/saliency.pt \
        --out runs/saliency_head.pt --epochs 2 --lr 1e-3

With an ImageNet MobileNetV2 file (``--imagenet``, torchvision layout, BatchNorm folded as in
``../shared/data/pretrained``), the same task becomes a second pretraining stage on top of ImageNet:
the stride-8 stage and every BatchNorm stay as ImageNet left them (a folded BatchNorm in training
mode would renormalise by batch statistics), the later stages and the head learn.

    python -m s2cnet.training.train_saliency --imagenet ../shared/data/pretrained/mobilenet_v2_imagenet_tf2.pth \
        --tf-padding --epochs 4 --lr 5e-4 --out runs/duts_on_imagenet.pt
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from s2cnet.checkpoint import chosen_checkpoint, model_config, widen
from s2cnet.saliency import SaliencyNet
from s2cnet.transforms import IMAGENET_MEAN, IMAGENET_STD, photometric_jitter


def load_duts(root: Path, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(p.stem for p in (root / "images").glob("*.jpg"))[:limit]
    out = []
    for n in names:
        img = np.asarray(Image.open(root / "images" / f"{n}.jpg").convert("RGB"))
        mask = np.asarray(Image.open(root / "masks" / f"{n}.png").convert("L")) > 127
        out.append((img, mask))
    return out


def _sample(img: np.ndarray, mask: np.ndarray, size: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale crop, flip and colour jitter, resized to size x size."""
    h, w = mask.shape
    s = rng.uniform(0.6, 1.0)
    ch, cw = int(h * s), int(w * s)
    y0, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
    pil = Image.fromarray(img[y0 : y0 + ch, x0 : x0 + cw]).resize((size, size), Image.BILINEAR)
    m = Image.fromarray((mask[y0 : y0 + ch, x0 : x0 + cw] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255.0
    y = torch.from_numpy(np.asarray(m).copy()).float()[None] / 255.0
    if rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    x = photometric_jitter(x, rng)
    x = (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    return x, y


def saliency_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft IoU, computed at the target's resolution."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    union = (p + target - p * target).sum((1, 2, 3))
    return bce + (1 - (inter + 1) / (union + 1)).mean()


@torch.no_grad()
def mean_abs_error(net: SaliencyNet, data: list[tuple[np.ndarray, np.ndarray]], size: int) -> float:
    net.eval()
    errs = []
    rng = random.Random(0)
    for img, mask in data:
        x, y = _sample(img, mask, size, rng)
        p = torch.sigmoid(F.interpolate(net(x[None]), size=y.shape[-2:], mode="bilinear", align_corners=False))
        errs.append((p[0] - y).abs().mean().item())
    net.train()
    return float(np.mean(errs))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/duts"))
    ap.add_argument("--out", type=Path, default=Path("runs/saliency.pt"))
    ap.add_argument("--epochs", type=int, default=4, help="length of the one-cycle schedule")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs of the schedule")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None, help="start from this saliency checkpoint")
    ap.add_argument("--backbone-from", type=Path, default=None,
                    help="an S2CNet checkpoint or run directory: freeze its backbone and fit only the head (saves {'head': ...})")
    ap.add_argument("--imagenet", type=Path, default=None,
                    help="start the backbone from this ImageNet MobileNetV2 file (torchvision layout)")
    ap.add_argument("--tf-padding", action="store_true", help="TensorFlow 'SAME' padding (the converted ImageNet files')")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.imagenet and (args.backbone_from or args.init):
        ap.error("--imagenet starts a new backbone; it does not combine with --backbone-from or --init")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    data = load_duts(args.data, args.limit)
    val, train = data[:100], data[100:]
    head_only = args.backbone_from is not None
    ck = torch.load(chosen_checkpoint(args.backbone_from), map_location="cpu", weights_only=True) if head_only else None
    config = model_config(ck) if head_only else {}  # the scorer's backbone padding
    net = SaliencyNet(tf_padding=bool(config.get("tf_padding", args.tf_padding)))
    if args.imagenet:
        net.backbone.load_torchvision(torch.load(args.imagenet, map_location="cpu", weights_only=True))
        net.backbone.freeze_pretrained()
    if args.init:
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        net.load_state_dict(widen(state.get("model", state)))
    if head_only:
        backbone = {k[len("backbone."):]: v for k, v in widen(ck["model"]).items()
                    if k.startswith("backbone.") and not k.startswith("backbone.reduce")}
        net.backbone.load_state_dict(backbone, strict=False)
        net.backbone.requires_grad_(False)
    params = net.head.parameters() if head_only else [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(train) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(steps, 1), pct_start=0.1)
    start_epoch, mae = 0, float("nan")
    ckpt_path = args.out.with_suffix(".resume.pt")
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        start_epoch = ck["epoch"] + 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for epoch in range(start_epoch, min(args.epochs, args.stop_after or args.epochs)):
        t0 = time.time()
        net.train()
        if head_only:
            net.backbone.eval()  # frozen, BatchNorm statistics included
        elif args.imagenet:
            net.backbone.freeze_pretrained()  # net.train() put them back in training mode
        order = list(range(len(train)))
        rng.shuffle(order)
        losses = []
        for b in range(len(train) // args.batch_size):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            xs, ys = zip(*(_sample(*train[i], args.size, rng) for i in idx))
            loss = saliency_loss(net(torch.stack(xs)), torch.stack(ys))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if b % 20 == 0:
                print(f"  epoch {epoch} step {b} loss {np.mean(losses[-20:]):.4f}", flush=True)
        mae = mean_abs_error(net, val, args.size)
        print(f"epoch {epoch} loss {np.mean(losses):.4f} val_mae {mae:.4f} time {time.time() - t0:.0f}s", flush=True)
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch}, ckpt_path)
    torch.save({"head": net.head.state_dict(), "val_mae": mae} if head_only else net.state_dict(), args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
