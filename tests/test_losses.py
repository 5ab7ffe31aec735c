"""The training objective on hand-computed cases."""

import pytest
import torch

from s2cnet.training.losses import MOS_MEAN, MOS_STD, crop_loss, listwise_loss, ranking_loss


def test_ranking_loss_hand_computed() -> None:
    target = torch.tensor([2.0, 1.0, 0.0])
    # ordered pairs (0,1) gap 1, (0,2) gap 2, (1,2) gap 1; predicted gaps 0.5, -1, -1.5
    pred = torch.tensor([0.0, -0.5, 1.0])
    expected = ((1 - 0.5) + (2 + 1) + (1 + 1.5)) / 3
    assert ranking_loss(pred, target).item() == pytest.approx(expected)
    assert ranking_loss(target * 2, target).item() == 0.0  # wider predicted gaps cost nothing
    tied = ranking_loss(torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([3.0, 3.0]))
    assert tied.item() == 0.0 and tied.requires_grad  # no ordered pair: zero, still differentiable


def test_listwise_loss_is_zero_at_the_target_and_watches_the_top() -> None:
    target = torch.tensor([1.5, 1.0, 0.0, -1.0, -1.5])
    assert listwise_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    top_swapped = listwise_loss(target[[1, 0, 2, 3, 4]], target).item()
    bottom_swapped = listwise_loss(target[[0, 1, 2, 4, 3]], target).item()
    assert top_swapped > 0 and bottom_swapped >= 0
    assert top_swapped > 10 * bottom_swapped  # misordering the best crops is what costs


def test_crop_loss_weights_its_terms() -> None:
    mos = torch.tensor([4.0, 3.0, 2.5, 1.0])
    pred = torch.tensor([0.1, 0.3, -0.2, 0.0], requires_grad=True)
    target = (mos - MOS_MEAN) / MOS_STD
    plain, parts = crop_loss(pred, mos, reg_weight=1.0, rank_weight=2.0)
    assert "listwise" not in parts
    assert plain.item() == pytest.approx(parts["reg"] + 2.0 * ranking_loss(pred, target).item(), rel=1e-5)
    with_list, parts = crop_loss(pred, mos, reg_weight=1.0, rank_weight=2.0, listwise_weight=0.5)
    assert with_list.item() == pytest.approx(plain.item() + 0.5 * parts["listwise"], rel=1e-5)
    with_list.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
