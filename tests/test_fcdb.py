"""FCDB pairs: preferred crop first, ties dropped, the pair term trains, pair accuracy and IoU/BDE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s2cnet.model import S2CNetConfig
from s2cnet.training.fcdb import FCDBPairs, boundary_displacement, iou, pair_accuracy, split_fcdb, winner_first
from s2cnet.training.losses import preference_loss
from s2cnet.training.synthetic import write_gaicd
from s2cnet.training.train import TrainConfig, train


def write_fcdb(root: Path, n: int = 4, size: tuple[int, int] = (160, 120)) -> None:
    """Noise photos with a bright square on the left; every pair prefers the crop that keeps it."""
    rng = np.random.default_rng(0)
    w, h = size
    (root / "images").mkdir(parents=True)
    pairs, best = {}, {}
    for i in range(n):
        pixels = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
        pixels[40:80, 10:50] = (240, 220, 60)
        name = f"photo_{i}.jpg"
        Image.fromarray(pixels).save(root / "images" / name, quality=95)
        keep, lose = [0, 20, 80, 100], [80, 20, 160, 100]
        pairs[name] = [[keep, lose, 5, 0], [lose, keep, 1, 4], [keep, lose, 3, 2], [keep, lose, 2, 2]]
        best[name] = [0, 20, 80, 100]
    (root / "pairs.json").write_text(json.dumps(pairs))
    (root / "crops.json").write_text(json.dumps(best))


def test_winner_first_orders_pairs_and_drops_ties() -> None:
    a, b = [0, 0, 10, 10], [5, 5, 15, 15]
    boxes, margins = winner_first([[a, b, 1, 4], [a, b, 5, 0], [a, b, 2, 2]])
    assert boxes.tolist() == [b, a, a, b]
    assert margins.tolist() == pytest.approx([0.6, 1.0])


def test_preference_loss_weighs_by_vote_margin() -> None:
    pred = torch.tensor([0.0, 0.0, 1.0, 0.0])  # pair 0 tied (hinge 0.5), pair 1 clear (hinge 0)
    assert preference_loss(pred, torch.tensor([1.0, 1.0])).item() == pytest.approx(0.25)
    assert preference_loss(pred, torch.tensor([0.2, 1.0])).item() == pytest.approx(0.5 * 0.2 / 1.2)
    assert preference_loss(pred[:0], torch.tensor([])).item() == 0.0


def test_pair_accuracy_iou_and_bde() -> None:
    assert pair_accuracy(np.array([2.0, 1.0, 0.0, 1.0])) == 0.5
    assert iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(50 / 150)
    assert boundary_displacement([0, 0, 10, 10], [5, 0, 15, 10], 20, 10) == pytest.approx((0.25 + 0.25) / 4)


def test_split_is_disjoint_and_fixed(tmp_path) -> None:
    write_fcdb(tmp_path, n=6)
    train_names, val_names = split_fcdb(tmp_path, 2)
    assert len(val_names) == 2 and not set(train_names) & set(val_names)
    assert split_fcdb(tmp_path, 2) == (train_names, val_names)


def test_dataset_scales_boxes_and_mirrors_pairs_together(tmp_path) -> None:
    write_fcdb(tmp_path, n=1)
    plain = FCDBPairs(tmp_path)[0]
    assert plain.crops.shape == (6, 4) and plain.margin.shape == (3,)
    w = plain.image.shape[-1]
    assert plain.crops[:, 2].max() <= w + 1e-3
    flipped = [s for s in (FCDBPairs(tmp_path, augment=True, seed=k)[0] for k in range(8))
               if not torch.allclose(s.crops, plain.crops)]
    assert flipped, "no mirrored sample in 8 draws"
    assert torch.allclose(flipped[0].crops[:, 0], w - plain.crops[:, 2], atol=1e-3)


def test_training_with_fcdb_logs_the_pair_term_and_val_accuracy(tmp_path) -> None:
    write_gaicd(tmp_path / "gaicd", n_images=3, size=(160, 120))
    write_fcdb(tmp_path / "fcdb", n=4)
    cfg = TrainConfig(data=str(tmp_path / "gaicd"), out=str(tmp_path / "run"), fcdb=str(tmp_path / "fcdb"),
                      fcdb_val_size=1, fcdb_every=1, val_size=1, epochs=2, lr=3e-3, seed=0,
                      model=S2CNetConfig(node_dim=64, num_heads=4))
    last = train(cfg)
    history = torch.load(tmp_path / "run" / "final.pt", weights_only=False)["history"]
    assert all(row["fcdb"] > 0 for row in history)
    assert 0.0 <= last["val_fcdb_pairs"] <= 100.0
