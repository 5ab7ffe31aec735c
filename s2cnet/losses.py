"""Training objective: regression on normalised MOS plus a pairwise ranking loss (S2CNet, eq. 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# GAICD train MOS statistics, used to normalise targets so the regression loss is scale-free.
MOS_MEAN, MOS_STD = 2.95, 0.8


def normalise_mos(mos: torch.Tensor) -> torch.Tensor:
    return (mos - MOS_MEAN) / MOS_STD


def ranking_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over ordered pairs (target_i > target_j) of relu((t_i - t_j) - (p_i - p_j)).

    The margin is the human score gap, so clearly better crops must be scored clearly higher.
    """
    dt = target[:, None] - target[None, :]
    dp = pred[:, None] - pred[None, :]
    pairs = dt > 0
    if not pairs.any():
        return pred.sum() * 0.0
    return F.relu(dt - dp)[pairs].mean()


def crop_loss(pred: torch.Tensor, mos: torch.Tensor, reg_weight: float = 1.0, rank_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    target = normalise_mos(mos)
    reg = F.smooth_l1_loss(pred, target)
    rank = ranking_loss(pred, target)
    loss = reg_weight * reg + rank_weight * rank
    return loss, {"reg": reg.item(), "rank": rank.item()}
