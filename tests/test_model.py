"""S2CNet network: shapes, gradient flow, edge strategies, and the RoIAlign/RoDAlign operators."""

from __future__ import annotations

import pytest
import torch

from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.roi import box_coverage, rod_features, roi_features

H, W = 64, 96  # small input: a 4x6 stride-16 map
CROPS = torch.tensor([[0.0, 0.0, 40.0, 40.0], [8.0, 4.0, 96.0, 60.0], [20.0, 10.0, 80.0, 64.0]])
OBJECTS = torch.tensor([[10.0, 10.0, 40.0, 30.0], [60.0, 30.0, 90.0, 60.0], [0.0, 0.0, 96.0, 64.0]])

CONFIGS = {
    "disdrop": S2CNetConfig(edge_strategy="disdrop", node_dim=64, num_heads=4),
    "disemb": S2CNetConfig(edge_strategy="disemb", node_dim=64, num_heads=4),
    "none": S2CNetConfig(edge_strategy="none", node_dim=64, num_heads=4),
    "no_graph": S2CNetConfig(use_graph=False, node_dim=64),
}


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _model(cfg: S2CNetConfig, seed: int = 0) -> S2CNet:
    torch.manual_seed(seed)
    return S2CNet(cfg)


def _has_grad(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("with_objects", [True, False])
def test_shapes_and_gradients(name: str, with_objects: bool) -> None:
    cfg = CONFIGS[name]
    model = _model(cfg).train()
    objects = OBJECTS if with_objects else torch.zeros(0, 4)
    scores = model(_image(), CROPS, objects)
    assert scores.shape == (len(CROPS),)
    assert torch.isfinite(scores).all()
    scores.pow(2).sum().backward()

    bb = model.backbone
    for stage in (bb.stage8, bb.stage16, bb.stage32, bb.reduce):
        assert _has_grad(stage), f"{name}: no gradient reaches backbone stage {stage.__class__.__name__}"
    assert _has_grad(model.nodes) and _has_grad(model.readout)
    if not cfg.use_graph:
        assert not hasattr(model, "layers")
        return
    for mod in (model.gate, model.norm, *model.layers):
        assert _has_grad(mod), f"{name}: no gradient reaches {mod.__class__.__name__}"
    if with_objects:
        # With object nodes the edges matter: both edge modules must learn (except strategy 'none').
        assert _has_grad(model.semantic)
        assert model.type_embed.grad[1].abs().sum() > 0
        assert _has_grad(model.spatial) == (name != "none")


def test_scores_do_not_depend_on_other_candidates() -> None:
    """The Cropper scores every ratio's candidates in one call: a crop's score must not depend on its batch."""
    model = _model(CONFIGS["disemb"]).eval()
    with torch.no_grad():
        feat = model.features(_image())
        together = model.score_crops(feat, CROPS, OBJECTS, W, H)
        alone = torch.stack([model.score_crops(feat, c[None], OBJECTS, W, H)[0] for c in CROPS])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_objects_none_equals_no_objects_and_max_objects_truncates() -> None:
    model = _model(S2CNetConfig(node_dim=64, max_objects=2)).eval()
    with torch.no_grad():
        feat = model.features(_image())
        none = model.score_crops(feat, CROPS, None, W, H)
        empty = model.score_crops(feat, CROPS, torch.zeros(0, 4), W, H)
        three = model.score_crops(feat, CROPS, OBJECTS, W, H)
        two = model.score_crops(feat, CROPS, OBJECTS[:2], W, H)
        one = model.score_crops(feat, CROPS, OBJECTS[:1], W, H)
    torch.testing.assert_close(none, empty)
    torch.testing.assert_close(three, two)  # the third object is beyond max_objects
    assert not torch.allclose(two, one, atol=1e-4)  # ...while the second one does count


def test_degenerate_object_boxes_stay_finite() -> None:
    """GAICD's object files hold zero-width boxes (e.g. ``1 0 1 1``); they must not poison the scores."""
    model = _model(CONFIGS["disemb"]).train()
    objects = torch.tensor([[0.0, 1.0, 1.0, 1.0], [30.0, 20.0, 30.0, 50.0], [10.0, 10.0, 40.0, 30.0]])
    scores = model(_image(), CROPS, objects)
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _score_one(model: S2CNet, feat: torch.Tensor, crop: list[float], objects: list[list[float]]) -> float:
    objs = torch.tensor(objects, dtype=torch.float32).reshape(-1, 4)
    with torch.no_grad():
        return model.score_crops(feat, torch.tensor([crop]), objs, W, H).item()


# Geometry for the DisDrop checks (image diagonal = 115.4 px, threshold 0.3 = 34.6 px):
CROP = [0.0, 0.0, 40.0, 40.0]  # centre (20, 20)
NEAR = [10.0, 10.0, 40.0, 30.0]  # centre (25, 20): 0.04 diagonals from the crop
FAR = [70.0, 40.0, 90.0, 60.0]  # centre (80, 50): >= 0.54 diagonals from the crop and from NEAR
FAR_MOVED = [76.0, 44.0, 96.0, 64.0]  # still far from both, different features and geometry


@pytest.mark.parametrize("seed", [0, 1])
def test_disdrop_hides_far_objects(seed: int) -> None:
    """With DisDrop, an object beyond the threshold shares no edge: no attention, no aggregation."""
    model = _model(S2CNetConfig(edge_strategy="disdrop", distance_threshold=0.3, node_dim=64), seed).eval()
    feat = model.features(_image(seed)).detach()
    alone = _score_one(model, feat, CROP, [])
    assert _score_one(model, feat, CROP, [FAR]) == pytest.approx(alone, abs=1e-5)
    assert _score_one(model, feat, CROP, [FAR_MOVED]) == pytest.approx(alone, abs=1e-5)
    with_near = _score_one(model, feat, CROP, [NEAR])
    assert with_near != pytest.approx(alone, abs=1e-4)  # control: a near object is seen
    # Two hops are closed too: NEAR and FAR are also far from each other.
    assert _score_one(model, feat, CROP, [NEAR, FAR]) == pytest.approx(with_near, abs=1e-5)
    assert _score_one(model, feat, CROP, [NEAR, FAR_MOVED]) == pytest.approx(with_near, abs=1e-5)


@pytest.mark.parametrize("cfg", [S2CNetConfig(edge_strategy="disdrop", distance_threshold=2.0, node_dim=64),
                                 S2CNetConfig(edge_strategy="disemb", node_dim=64),
                                 S2CNetConfig(edge_strategy="none", node_dim=64)],
                         ids=["disdrop-wide", "disemb", "none"])
def test_far_objects_count_without_distance_dropping(cfg: S2CNetConfig) -> None:
    """Control for the test above: the same far object does change the score when edges are kept."""
    model = _model(cfg).eval()
    feat = model.features(_image()).detach()
    alone = _score_one(model, feat, CROP, [])
    far = _score_one(model, feat, CROP, [FAR])
    assert far != pytest.approx(alone, abs=1e-4)
    assert _score_one(model, feat, CROP, [FAR_MOVED]) != pytest.approx(far, abs=1e-5)


def test_bad_edge_strategy_raises() -> None:
    with pytest.raises(ValueError, match="edge strategy"):
        S2CNet(S2CNetConfig(edge_strategy="dropall"))
    with pytest.raises(ValueError, match="unknown S2CNetConfig"):
        S2CNetConfig.from_dict({"node_dims": 3})


# -- RoIAlign / RoDAlign ----------------------------------------------------------------------------

def _feat(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 5, 6, 8, generator=torch.Generator().manual_seed(seed)) + 0.5  # 96 x 128 px


def test_roi_rod_shapes() -> None:
    boxes = torch.tensor([[0.0, 0.0, 128.0, 96.0], [16.0, 16.0, 64.0, 48.0]])
    assert roi_features(_feat(), boxes, 7, 16).shape == (2, 5, 7, 7)
    assert rod_features(_feat(), boxes, 7, 16).shape == (2, 5, 7, 7)


def test_rod_of_full_image_box_is_zero_and_of_empty_box_is_whole_map() -> None:
    feat = _feat()
    full = torch.tensor([[0.0, 0.0, 128.0, 96.0]])
    assert rod_features(feat, full, 9, 16).abs().max() < 1e-6
    assert roi_features(feat, full, 9, 16).abs().min() > 0.4  # the RoI of the same box is everything
    empty = torch.tensor([[40.0, 40.0, 40.0, 40.0]])  # zero area: nothing is discarded
    torch.testing.assert_close(rod_features(feat, empty, 9, 16), roi_features(feat, full, 9, 16))


def test_box_coverage_is_exact() -> None:
    boxes = torch.tensor([[16.0, 16.0, 48.0, 32.0], [8.0, 0.0, 24.0, 16.0], [5.0, 7.0, 101.0, 83.0]])
    cov = box_coverage(boxes, 6, 8, 16)
    assert cov.shape == (3, 6, 8)
    expected = torch.zeros(6, 8)
    expected[1, 1:3] = 1.0  # cell-aligned box: whole cells, nothing else
    torch.testing.assert_close(cov[0], expected)
    assert cov[1, 0, 0] == 0.5 and cov[1, 0, 1] == 0.5 and cov[1].sum() == 1.0  # straddles two cells
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    torch.testing.assert_close(cov.sum((1, 2)) * 256, areas)


def test_roi_sees_only_inside_and_rod_only_outside() -> None:
    """RoI features ignore what lies well outside a box; RoD features ignore what lies inside it."""
    box = torch.tensor([[16.0, 16.0, 80.0, 80.0]])  # feature cells rows 1-4, cols 1-4
    feat = _feat()
    outside, inside = feat.clone(), feat.clone()
    outside[..., :, 7] += 3.0  # column 7: two cells right of the box
    inside[..., 2:4, 2:4] += 3.0
    roi, rod = roi_features(feat, box, 9, 16), rod_features(feat, box, 9, 16)
    torch.testing.assert_close(roi_features(outside, box, 9, 16), roi)
    torch.testing.assert_close(rod_features(inside, box, 9, 16), rod)
    assert not torch.allclose(roi_features(inside, box, 9, 16), roi)
    assert not torch.allclose(rod_features(outside, box, 9, 16), rod)
