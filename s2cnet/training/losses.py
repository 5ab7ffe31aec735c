"""Training objective: regression on normalised MOS plus a pairwise ranking loss (S2CNet, eq. 10),
and optionally a listwise term that concentrates on the few best crops, which is what Acc_K/N scores."""

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


def listwise_loss(pred: torch.Tensor, target: torch.Tensor, temperature: float = 0.25) -> torch.Tensor:
    """Cross-entropy between softmax(target / T) and softmax(pred / T) over one image's crops (ListNet).

    Pairwise hinges weigh every ordered pair alike, and most pairs are two mediocre crops; with a low
    temperature the target mass sits on the top few crops, so their order dominates the gradient.
    """
    p_target = torch.softmax(target / temperature, dim=0)
    cross = -(p_target * torch.log_softmax(pred / temperature, dim=0)).sum()
    return cross + (p_target * torch.log(p_target.clamp(min=1e-12))).sum()  # minus the target's entropy: 0 at best


def preference_loss(pred: torch.Tensor, vote_margin: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """Hinge on human-voted pairs (rows 2p, 2p+1 of ``pred``, preferred first), each pair weighted by its
    vote margin: a 5-0 vote pulls five times harder than a 3-2 one. ``margin`` is in normalised-MOS units."""
    gap = pred[0::2] - pred[1::2]
    if not len(gap):
        return pred.sum() * 0.0
    return (vote_margin * F.relu(margin - gap)).sum() / vote_margin.sum()


def crop_loss(pred: torch.Tensor, mos: torch.Tensor, reg_weight: float = 1.0, rank_weight: float = 1.0,
              listwise_weight: float = 0.0, listwise_temperature: float = 0.25) -> tuple[torch.Tensor, dict[str, float]]:
    target = normalise_mos(mos)
    reg = F.smooth_l1_loss(pred, target)
    rank = ranking_loss(pred, target)
    loss = reg_weight * reg + rank_weight * rank
    parts = {"reg": reg.item(), "rank": rank.item()}
    if listwise_weight:
        listwise = listwise_loss(pred, target, listwise_temperature)
        loss = loss + listwise_weight * listwise
        parts["listwise"] = listwise.item()
    return loss, parts
