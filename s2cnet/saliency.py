"""Saliency: a head that maps the fused backbone features to a stride-16 saliency logit map.

It trains on DUTS's human masks (``python -m s2cnet.training.train_saliency``); the proposer turns its map into
object boxes. ``SaliencyNet`` is the standalone network (its own backbone); the shipped scorer carries
a head fitted on its own backbone, so one backbone pass per photo serves scoring and proposals.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from s2cnet.backbone import FUSED_CHANNELS, FusedMobileNetV2
from s2cnet.checkpoint import widen

SALIENCY_WEIGHTS = Path(__file__).parent / "weights" / "saliency.pt"  # the shipped standalone network

class SaliencyHead(nn.Module):
    """Predicts a stride-16 saliency logit map from the fused backbone features."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(FUSED_CHANNELS, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1)
        )

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)


class SaliencyNet(nn.Module):
    def __init__(self, tf_padding: bool = False) -> None:
        super().__init__()
        self.backbone = FusedMobileNetV2(tf_padding=tf_padding)
        self.head = SaliencyHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.fused(x))


def load_saliency(path: str | Path = SALIENCY_WEIGHTS) -> SaliencyNet:
    """A standalone saliency network from a file of ``train_saliency`` (or its fp16 export)."""
    net = SaliencyNet()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(widen(state.get("model", state)))
    return net.eval()


def load_saliency_head(state: dict) -> SaliencyHead:
    head = SaliencyHead()
    head.load_state_dict(widen(state))
    return head.eval()
