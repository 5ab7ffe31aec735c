"""The checkpoint file format, in one place: training files, shipped fp16 files, and which file of a
run directory stands for it. Inference reads these without importing any training code.

A training run directory holds ``last.pt`` (the last epoch, with optimiser state and a nested
TrainConfig under ``config``) and ``final.pt`` (the weight average when SWA ran, else the last
epoch, with the S2CNetConfig under ``config``). A shipped file is ``{'model', 'config'[,
'saliency_head']}`` in fp16.
"""

from __future__ import annotations

from pathlib import Path

import torch

from s2cnet.model import S2CNet, S2CNetConfig


def widen(state: dict) -> dict:
    """fp16 (shipped) tensors back to fp32; integer buffers as they are."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def half(state: dict) -> dict:
    """fp32 tensors to fp16: the shipped files are half the size; loaders widen them back."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def model_config(checkpoint: dict) -> dict:
    """The S2CNetConfig dict of a shipped file, or of a train.py checkpoint (model fields nested)."""
    config = checkpoint["config"]
    return config["model"] if isinstance(config.get("model"), dict) else config


def load_checkpoint(path: str | Path) -> tuple[S2CNet, dict]:
    """An eval-mode S2CNet and the raw checkpoint dict, from a shipped or a training file.

    FileNotFoundError when there is no file; ValueError, with the reason, for anything that is not
    S2CNet weights: a directory, a FIFO (whose open would block forever), a JPEG, another model's file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no S2CNet weights at {path}")
    if not path.is_file():
        raise ValueError(f"S2CNet weights must be a regular file, got {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        model = S2CNet(S2CNetConfig.from_dict(model_config(ck)))
        model.load_state_dict(widen(ck["model"]))
    except Exception as e:
        raise ValueError(f"{path} is not an S2CNet weights file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from e
    model.eval()
    return model, ck


def weights_version(path: str | Path) -> str:
    """The model version every output records: 's2cnet-' and the first 12 hex digits of the file's
    SHA-256, so a job can tell crops made by other weights without loading any."""
    import hashlib

    return f"s2cnet-{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}"


def chosen_checkpoint(run: str | Path) -> Path:
    """A checkpoint file is itself. A run directory gives its last epoch (last.pt) when that scored a
    higher validation SRCC than the weight average (final.pt), else final.pt: chosen on held-out
    photos, never on test."""
    run = Path(run)
    if run.is_file():
        return run
    return _choice(run)[0]


def best_run(runs: list[str | Path]) -> Path:
    """Of runs validated on the same photos (--val-seed), the one whose chosen checkpoint scored the
    highest validation SRCC."""
    return max((Path(r) for r in runs), key=lambda run: _choice(run)[1])


def _choice(run: Path) -> tuple[Path, float | None]:
    """A run directory's chosen checkpoint and the validation SRCC it scored: one rule for both callers."""
    history = torch.load(run / "final.pt", map_location="cpu", weights_only=False).get("history", [])
    row = history[-1] if history else {}
    if "swa_val_SRCC" in row and row["val_SRCC"] > row["swa_val_SRCC"]:
        return run / "last.pt", row["val_SRCC"]
    return run / "final.pt", row.get("swa_val_SRCC", row.get("val_SRCC"))
