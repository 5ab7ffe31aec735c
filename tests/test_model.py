"""S2CNet network: shapes, gradient flow, edge strategies, and the RoIAlign/RoDAlign operators."""

from __future__ import annotations

import copy

import pytest
import torch

from s2cnet.backbone import FusedMobileNetV2
from s2cnet.cropper import inference_copy
from s2cnet.graph import AggregationGate, SemanticEdges, SpatialSemanticAttention, graph_tokens, pair_geometry, small_matmul
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
    for mod in (model.graph.gate, model.graph.norm, *model.graph.layers):
        assert _has_grad(mod), f"{name}: no gradient reaches {mod.__class__.__name__}"
    if with_objects:
        # With object nodes the edges matter: both edge modules must learn (except strategy 'none').
        assert _has_grad(model.graph.semantic)
        assert model.graph.type_embed.grad[1].abs().sum() > 0
        assert _has_grad(model.graph.spatial) == (name != "none")


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


# -- exact fast paths: per-distinct-token gate/edges, crop-node-only last layer, folded BatchNorm ----

def _tokens(n: int, m: int, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)


@pytest.mark.parametrize("m", [3, 0])
def test_aggregation_gate_equals_direct_form_on_expanded_tokens(m: int) -> None:
    """The gate runs its linears once per distinct token; it must equal x + g * W(A x) on the full graphs."""
    torch.manual_seed(0)
    gate = AggregationGate(64).eval()
    crops, objects = _tokens(5, m)
    k = m + 1
    adjacency = torch.rand(5, k, k, generator=torch.Generator().manual_seed(1))
    adjacency[1, 0] = 0.0  # an isolated row: normalisation falls back to the clamp
    adjacency[2] *= 5.0  # rows do not sum to one
    with torch.no_grad():
        got = gate(crops, objects, adjacency)
        x = graph_tokens(crops, objects)
        a = adjacency / adjacency.sum(-1, keepdim=True).clamp(min=1e-6)
        agg = a @ x
        want = x + torch.sigmoid(gate.gate(torch.cat([x, agg], dim=-1))) * gate.msg(agg)
    assert got.shape == (5, k, 64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_semantic_edges_equal_cosine_similarity_on_expanded_tokens() -> None:
    torch.manual_seed(0)
    sem = SemanticEdges(64, heads=4)
    with torch.no_grad():
        sem.scale.copy_(torch.tensor([0.5, -1.0, 2.0, 3.0]))  # per-head scales, not all ones
        crops, objects = _tokens(4, 3)
        bias, adj = sem(crops, objects)
        z = torch.nn.functional.normalize(sem.proj(graph_tokens(crops, objects)), dim=-1)
        sim = z @ z.transpose(1, 2)
    assert bias.shape == (4, 4, 4, 4) and adj.shape == (4, 4, 4)
    torch.testing.assert_close(bias, sem.scale[None, :, None, None] * sim[:, None], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adj, sim.clamp(min=0), rtol=1e-5, atol=1e-5)
    assert (adj < 1e-6).any() and (adj > 0.1).any()  # control: the clamp is exercised on both sides


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "keep-mask"])
def test_attention_first_only_is_row_zero_of_the_full_layer(masked: bool) -> None:
    torch.manual_seed(0)
    layer = SpatialSemanticAttention(64, heads=4, mlp_ratio=2.0, dropout=0.1).eval()
    g = torch.Generator().manual_seed(2)
    n, k = 6, 4
    x = torch.randn(n, k, 64, generator=g)
    bias = torch.randn(n, 4, k, k, generator=g)
    keep = None
    if masked:  # a different mask per row and per graph; the diagonal always stays
        keep = (torch.rand(n, k, k, generator=g) > 0.5) | torch.eye(k, dtype=torch.bool)
        keep[:, 0] = torch.tensor([True, False, True, False])  # crop row sees some objects, not others
    with torch.no_grad():
        full = layer(x, bias, keep)
        first = layer(x, bias, keep, first_only=True)
        if masked:  # control: the mask of row 0 really changes row 0
            assert not torch.allclose(layer(x, bias, None, first_only=True), first, atol=1e-4)
    assert full.shape == (n, k, 64) and first.shape == (n, 1, 64)
    torch.testing.assert_close(first, full[:, :1], rtol=1e-5, atol=1e-5)


def _direct_score_crops(model: S2CNet, feat: torch.Tensor, crops: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """The graph head written out on explicitly expanded [N, 1+M, D] tokens, every layer on every node."""
    n, m = len(crops), len(objects)
    ct = model.nodes(feat, crops, W, H)
    ot = model.nodes(feat, objects, W, H)
    x = torch.cat([(ct + model.graph.type_embed[0])[:, None], (ot + model.graph.type_embed[1])[None].expand(n, m, -1)], dim=1)
    geometry, dist = pair_geometry(crops, objects, W, H)
    bias, adjacency, keep = model.graph.spatial(geometry, dist)
    z = torch.nn.functional.normalize(model.graph.semantic.proj(x), dim=-1)
    sim = z @ z.transpose(1, 2)
    bias, adjacency = bias + model.graph.semantic.scale[None, :, None, None] * sim[:, None], (adjacency + sim.clamp(min=0)) / 2
    if keep is not None:
        adjacency = adjacency * keep
    a = adjacency / adjacency.sum(-1, keepdim=True).clamp(min=1e-6)
    agg = a @ x
    x = x + torch.sigmoid(model.graph.gate.gate(torch.cat([x, agg], dim=-1))) * model.graph.gate.msg(agg)
    for layer in model.graph.layers:
        x = layer(x, bias, keep)  # all K rows, every layer
    return model.readout(model.graph.norm(x[:, 0])).squeeze(-1)


@pytest.mark.parametrize("name", ["disemb", "disdrop"])
def test_score_crops_equals_direct_graph_computation(name: str) -> None:
    model = _model(S2CNetConfig(edge_strategy=name, distance_threshold=0.3, node_dim=64, num_heads=4,
                                num_layers=3)).eval()
    with torch.no_grad():
        feat = model.features(_image())
        got = model.score_crops(feat, CROPS, OBJECTS, W, H)
        want = _direct_score_crops(model, feat, CROPS, OBJECTS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> int:
    g = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
                count += 1
    return count


def _batchnorms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


def test_fold_batchnorm_keeps_outputs_and_removes_every_batchnorm() -> None:
    torch.manual_seed(0)
    bb = FusedMobileNetV2(16).eval()
    assert _randomise_batchnorm(bb) > 30  # MobileNetV2 has one after every conv
    x = _image()
    with torch.no_grad():
        want_fused, want = bb.fused(x), bb(x)
        folded = copy.deepcopy(bb).fold_batchnorm()
        got_fused, got = folded.fused(x), folded(x)
    assert _batchnorms(folded) == 0
    convs = [m for m in bb.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len([m for m in folded.modules() if isinstance(m, torch.nn.Conv2d)]) == len(convs)
    torch.testing.assert_close(got_fused, want_fused, rtol=0, atol=1e-4 * float(want_fused.abs().max()))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))


def test_inference_copy_leaves_the_model_alone_and_matches_its_features() -> None:
    model = _model(CONFIGS["disemb"]).train()
    _randomise_batchnorm(model.backbone, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = _batchnorms(model)
    fast = inference_copy(model)
    assert model.training and not fast.training
    assert _batchnorms(model) == n_bn > 0 and _batchnorms(fast) == 0
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert fast.backbone.reduce[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.eval()
    x = _image(1)
    with torch.no_grad():
        want = model.features(x)
        got = fast.features(x.contiguous(memory_format=torch.channels_last))
        scores_want = model.score_crops(want, CROPS, OBJECTS, W, H)
        scores_got = fast.score_crops(got, CROPS, OBJECTS, W, H)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
    torch.testing.assert_close(scores_got, scores_want, rtol=1e-4, atol=1e-4)


def test_same_padding_matches_explicit_tf_padding_and_keeps_the_state_dict() -> None:
    torch.manual_seed(0)
    plain, same = FusedMobileNetV2(16), FusedMobileNetV2(16, tf_padding=True)
    assert list(same.state_dict()) == list(plain.state_dict())
    same.load_state_dict(plain.state_dict())
    strided = [m for m in same.modules() if isinstance(m, torch.nn.Conv2d) and m.stride != (1, 1)]
    assert len(strided) == 5 and all(type(m).__name__ == "SamePadConv2d" and m.padding == (0, 0) for m in strided)
    conv = plain.stage8[0][0]  # the stem: stride 2, torchvision pads 1 on every side
    x = _image()
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, None, 2, 0)
    torch.testing.assert_close(same.stage8[0][0](x), want)
    with torch.no_grad():
        assert same.eval()(x).shape == plain.eval()(x).shape == (1, 16, H // 16, W // 16)
        assert not torch.allclose(same(x), plain(x))  # the alignment really differs
        folded = copy.deepcopy(same).fold_batchnorm()  # folding keeps the padding
        torch.testing.assert_close(folded(x), same(x), rtol=0, atol=1e-4 * float(same(x).abs().max()))


@pytest.mark.parametrize("size", [(32, 48), (33, 47), (31, 31)])
def test_same_padding_without_a_padded_copy_equals_padding_the_input(size: tuple[int, int]) -> None:
    """Every strided conv (the stem and the depthwise ones), on even and odd inputs, channels-last too:
    the zero-tap kernel reads exactly what TF's one-sided pad feeds the plain conv."""
    torch.manual_seed(1)
    same = FusedMobileNetV2(16, tf_padding=True).eval()
    for conv in [m for m in same.modules() if type(m).__name__ == "SamePadConv2d"]:
        x = torch.randn(1, conv.in_channels, *size)
        ph, pw = (max((-n) % 2 + 1, 0) for n in size)  # TF "SAME" for a 3x3 kernel at stride 2
        want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)),
                                          conv.weight, conv.bias, 2, 0, 1, conv.groups)
        with torch.no_grad():
            torch.testing.assert_close(conv(x), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-5, atol=1e-5)


def test_model_config_selects_the_padding() -> None:
    model = S2CNet(S2CNetConfig(node_dim=64, tf_padding=True))
    assert model.backbone.tf_padding
    assert any(type(m).__name__ == "SamePadConv2d" for m in model.backbone.modules())


def test_graph_head_is_one_named_part_and_old_files_still_load() -> None:
    model = _model(CONFIGS["disemb"]).eval()
    assert model.graph is not None and _model(CONFIGS["no_graph"]).graph is None
    old_layout = {k.removeprefix("graph."): v for k, v in model.state_dict().items()}  # keys before the head had a name
    assert any(k.startswith("layers.") for k in old_layout)
    again = _model(CONFIGS["disemb"], seed=5).eval()
    again.load_state_dict(old_layout)
    with torch.no_grad():
        torch.testing.assert_close(again(_image(), CROPS, OBJECTS), model(_image(), CROPS, OBJECTS))


def test_small_matmul_stays_float32_under_bf16_autocast() -> None:
    a, b = torch.randn(5, 4, 3, 8), torch.randn(5, 4, 8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = small_matmul(a.bfloat16(), b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, a.bfloat16().float() @ b)


@pytest.mark.parametrize("chunk", [1, 2, 3, 64])
def test_graph_in_chunks_gives_the_same_scores(chunk: int) -> None:
    model = _model(CONFIGS["disemb"]).eval()
    with torch.no_grad():
        feat = model.features(_image())
        whole = model.score_crops(feat, CROPS, OBJECTS, W, H)
        torch.testing.assert_close(model.score_crops(feat, CROPS, OBJECTS, W, H, chunk=chunk), whole, rtol=1e-5, atol=1e-5)
        assert model.score_crops(feat, CROPS[:0], OBJECTS, W, H, chunk=chunk).shape == (0,)


def test_base_readout_adds_a_graph_free_score() -> None:
    """``base_readout``: the score is the graph's plus a GAIC readout of the same crop token, so with the
    graph's readout silenced the model scores exactly as a graph-free one with the same weights."""
    torch.manual_seed(0)
    cfg = dict(reduced_dim=8, node_dim=32, num_heads=2)
    both, plain = S2CNet(S2CNetConfig(**cfg, base_readout=True)).eval(), S2CNet(S2CNetConfig(**cfg, use_graph=False)).eval()
    assert S2CNet(S2CNetConfig(**cfg, use_graph=False, base_readout=True)).base_readout is None
    plain.backbone.load_state_dict(both.backbone.state_dict())
    plain.nodes.load_state_dict(both.nodes.state_dict())
    plain.readout.load_state_dict(both.base_readout.state_dict())
    x, crops = torch.randn(1, 3, 128, 160), torch.tensor([[0.0, 0.0, 120, 100], [20, 10, 150, 128], [5, 5, 80, 60]])
    objects = torch.tensor([[30.0, 30, 70, 90]])
    with torch.no_grad():
        graph_part = both(x, crops, objects) - plain(x, crops)
        assert graph_part.abs().max() > 1e-4  # the graph contributes
        both.readout[-1].weight.zero_(), both.readout[-1].bias.zero_()
        torch.testing.assert_close(both(x, crops, objects), plain(x, crops))
