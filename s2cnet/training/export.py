"""Training checkpoints -> the small fp16 files shipped in ``s2cnet/weights/``.

    python -m s2cnet.training.export --checkpoint runs/s2cnet --saliency-head runs/saliency_head.pt \
        --out s2cnet/weights/s2cnet.pt
    python -m s2cnet.training.export --saliency runs/saliency.pt --out s2cnet/weights/saliency.pt
    python -m s2cnet.training.export --into s2cnet/weights/s2cnet.pt --subject-heads runs/subject_heads.pt
    python -m s2cnet.training.export --into s2cnet/weights/s2cnet.pt --coarse-readout runs/coarse/coarse.pt

A run directory stands for whichever of its last epoch (last.pt) and its weight average (final.pt)
scored the higher validation SRCC: the choice is made on the held-out photos, never on test.
fp16 halves the files (the repo keeps weights under 25 MB); loaders widen them back to fp32.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from s2cnet.checkpoint import chosen_checkpoint, half, model_config
from s2cnet.subject import FACE_TIERS


def export_model(checkpoint: str | Path, out: str | Path, card: dict | None = None,
                 saliency_head: str | Path | None = None) -> None:
    """A train.py checkpoint or run directory -> {'model', 'config'[, 'saliency_head']} plus a
    JSON card beside it. The saliency head must have been fitted on this checkpoint's backbone."""
    checkpoint = chosen_checkpoint(checkpoint)
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = model_config(ck)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shipped = {"model": half(ck["model"]), "config": config}
    info = {"config": config, "checkpoint": str(checkpoint), "history": ck.get("history", []), **(card or {})}
    run_config = Path(checkpoint).parent / "config.json"  # the whole TrainConfig: init file, data, recipe
    if run_config.exists():
        train = json.loads(run_config.read_text())
        info.update(init=train.get("init"), train_config=train)
    if saliency_head is not None:
        head = torch.load(saliency_head, map_location="cpu", weights_only=True)
        shipped["saliency_head"] = half(head["head"])
        info["saliency_head_val_mae"] = head.get("val_mae")
    torch.save(shipped, out)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))


def attach_subject_heads(model_file: str | Path, heads: str | Path) -> None:
    """Adds subject heads (``train_subject`` output, fitted on this file's backbone) to a shipped
    model file in place, as fp16 ``{'config', 'state'}`` under ``subject_heads`` with the face
    thresholds chosen on validation, and records their validation history in the card."""
    model_file, heads = Path(model_file), Path(heads)
    shipped = torch.load(model_file, map_location="cpu", weights_only=True)
    trained = torch.load(heads, map_location="cpu", weights_only=False)
    thresholds = {k: trained[k] for k in FACE_TIERS if k in trained}
    shipped["subject_heads"] = {"config": trained["config"], "state": half(trained["heads"]), **thresholds}
    torch.save(shipped, model_file)
    card_path = model_file.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    card["subject_heads"] = {"config": trained["config"], **thresholds, "history": trained.get("history", []),
                             "training_command": trained.get("command")}
    card_path.write_text(json.dumps(card, indent=2))


def attach_coarse_readout(model_file: str | Path, coarse: str | Path) -> None:
    """Adds a coarse readout (``training.coarse`` output, distilled from this very file's scores) to a
    shipped model file in place: its weights join the model's as ``coarse.*`` with ``coarse_readout``
    set in the config, and the card records its distillation history and GAICD test agreement."""
    model_file, coarse = Path(model_file), Path(coarse)
    shipped = torch.load(model_file, map_location="cpu", weights_only=True)
    trained = torch.load(coarse, map_location="cpu", weights_only=False)
    model = {k: v for k, v in shipped["model"].items() if not k.startswith("coarse.")}
    shipped["model"] = {**model, **half({f"coarse.{k}": v for k, v in trained["state"].items()})}
    shipped["config"] = {**shipped["config"], "coarse_readout": True}
    torch.save(shipped, model_file)
    card_path = model_file.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    card["config"] = shipped["config"]
    card["coarse_readout"] = {key: trained.get(key) for key in ("teacher", "test", "temperature", "ratios", "history", "command")}
    card_path.write_text(json.dumps(card, indent=2))


def export_saliency(checkpoint: str | Path, out: str | Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half(state.get("model", state)), out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="an S2CNet training checkpoint, or its run directory (see above)")
    src.add_argument("--saliency", type=Path, help="a DUTS saliency checkpoint")
    src.add_argument("--into", type=Path, help="a shipped model file to add --subject-heads to, in place")
    ap.add_argument("--subject-heads", type=Path, help="heads fitted by train_subject on that file's backbone (with --into)")
    ap.add_argument("--coarse-readout", type=Path, help="a readout distilled by training.coarse from that file (with --into)")
    ap.add_argument("--saliency-head", type=Path, help="a head fitted by saliency.py --backbone-from (with --checkpoint)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--command", help="the training command, recorded in the JSON card")
    ap.add_argument("--metrics", type=Path, help="an evaluate.py --json file, recorded in the JSON card")
    args = ap.parse_args(argv)
    if args.into:
        if args.subject_heads is None and args.coarse_readout is None:
            ap.error("--into needs --subject-heads or --coarse-readout")
        if args.subject_heads is not None:
            attach_subject_heads(args.into, args.subject_heads)
        if args.coarse_readout is not None:
            attach_coarse_readout(args.into, args.coarse_readout)
        print(f"updated {args.into} ({args.into.stat().st_size / 1e6:.1f} MB)")
        return
    if args.out is None:
        ap.error("--out is required with --checkpoint or --saliency")
    if args.checkpoint:
        card = {}
        if args.command:
            card["training_command"] = args.command
        if args.metrics:
            card["test_metrics"] = json.loads(args.metrics.read_text())
        export_model(args.checkpoint, args.out, card=card, saliency_head=args.saliency_head)
    else:
        export_saliency(args.saliency, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
