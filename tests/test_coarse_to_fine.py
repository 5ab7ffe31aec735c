"""Coarse-to-fine scoring: the coarse readout ranks every candidate, the graph head scores the front-runners."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from s2cnet.checkpoint import half, load_checkpoint, widen
from s2cnet.cropper import Cropper
from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.proposals import Proposals
from s2cnet.training.export import attach_coarse_readout

CFG = dict(reduced_dim=8, node_dim=32, num_heads=2)
RATIOS = ["1:1", "16:9", "9:16", "4:5", None]


class FixedProposer:
    """A face and a person at fixed places, so the policy has something to protect."""

    shares_backbone = False

    def prepare(self, image):
        return None

    def propose(self, image, prepared, maps) -> Proposals:
        w, h = image.size
        boxes = np.float32([[0.55, 0.2, 0.7, 0.45], [0.1, 0.1, 0.5, 0.95]]) * np.float32([w, h, w, h])
        return Proposals(boxes, ("face", "person"))


@pytest.fixture(scope="module")
def model() -> S2CNet:
    torch.manual_seed(0)
    return S2CNet(S2CNetConfig(**CFG, coarse_readout=True)).eval()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).resize((400, 300))


def test_score_crops_is_tokens_then_score_tokens(model: S2CNet) -> None:
    x, crops = torch.randn(1, 3, 128, 160), torch.tensor([[0.0, 0.0, 120, 100], [20, 10, 150, 128]])
    objects = torch.tensor([[30.0, 30, 70, 90]])
    with torch.no_grad():
        feat = model.features(x)
        tokens = model.crop_tokens(feat, crops, 160.0, 128.0)
        torch.testing.assert_close(model.score_tokens(feat, tokens, crops, objects, 160.0, 128.0),
                                   model.score_crops(feat, crops, objects, 160.0, 128.0))
        assert model.coarse_scores(tokens).shape == (2,)
    with pytest.raises(ValueError, match="no coarse readout"):
        S2CNet(S2CNetConfig(**CFG)).coarse_scores(tokens)


def with_coarse_bias(model: S2CNet, bias: float) -> S2CNet:
    """The model with its coarse readout shifted: -100 puts every coarse score below every graph score,
    +100 above (a coarse readout that misleads)."""
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.coarse[-1].bias += bias
    return shifted


def test_the_pick_is_graph_scored_and_few_others_are(model: S2CNet, photo: Image.Image) -> None:
    cropper = Cropper(with_coarse_bias(model, -100.0), proposer=FixedProposer(), refine=4)
    assert cropper.coarse_to_fine
    analysis = cropper.analyse(photo, RATIOS)
    full = Cropper(model, proposer=FixedProposer(), refine=None).analyse(photo, RATIOS)
    for crop in analysis.crops:
        boxes, scored = analysis.candidates[crop.ratio], analysis.graph_scored[crop.ratio]
        j = int(np.flatnonzero((boxes == np.array(crop.box)).all(1))[0])
        assert scored[j]  # the chosen crop carries the graph's score
        assert 4 <= scored.sum() < len(boxes)  # each ratio's front-runners (ratios share no candidates)
        np.testing.assert_allclose(analysis.scores[crop.ratio][scored], full.scores[crop.ratio][scored], rtol=1e-4, atol=1e-4)
        assert (analysis.scores[crop.ratio][~scored] < -50).all()  # the rest keep their coarse scores
        assert crop.kept_faces == crop.faces  # the policy's rules hold on the coarse-to-fine path too
    assert all(s.all() for s in full.graph_scored.values())


def test_a_misleading_coarse_score_falls_back_to_the_full_choice(model: S2CNet, photo: Image.Image) -> None:
    # coarse scores above every graph score: each round's pick is a new coarse-scored candidate, until
    # the rounds run out and every admissible candidate goes through the graph
    analysis = Cropper(with_coarse_bias(model, 100.0), proposer=FixedProposer(), refine=4).analyse(photo, RATIOS)
    full = Cropper(model, proposer=FixedProposer(), refine=None).analyse(photo, RATIOS)
    assert [c.box for c in analysis.crops] == [c.box for c in full.crops]
    assert [c.score for c in analysis.crops] == pytest.approx([c.score for c in full.crops], abs=1e-4)


def test_refining_every_candidate_is_the_full_path(model: S2CNet, photo: Image.Image) -> None:
    every = Cropper(model, proposer=FixedProposer(), refine=10_000).analyse(photo, RATIOS)
    full = Cropper(model, proposer=FixedProposer(), refine=None).analyse(photo, RATIOS)
    assert [c.box for c in every.crops] == [c.box for c in full.crops]
    plain = Cropper(S2CNet(S2CNetConfig(**CFG)), proposer=None)  # weights without a coarse readout
    assert not plain.coarse_to_fine and plain.refine is not None
    with pytest.raises(ValueError, match="refine"):
        Cropper(model, refine=0)


def test_the_coarse_readout_ships_inside_the_model_file(tmp_path, model: S2CNet) -> None:
    torch.manual_seed(1)
    plain = S2CNet(S2CNetConfig(**CFG))
    shipped = tmp_path / "m.pt"
    torch.save({"model": half(plain.state_dict()), "config": plain.cfg.to_dict()}, shipped)
    readout = {k.removeprefix("coarse."): v for k, v in model.state_dict().items() if k.startswith("coarse.")}
    torch.save({"state": readout, "history": [], "test": {"top8": 90.0}}, tmp_path / "coarse.pt")
    attach_coarse_readout(shipped, tmp_path / "coarse.pt")
    loaded, _ = load_checkpoint(shipped)
    assert loaded.cfg.coarse_readout
    for k, v in readout.items():
        torch.testing.assert_close(loaded.coarse.state_dict()[k], v.half().float())
    torch.testing.assert_close(loaded.backbone.state_dict(), widen(half(plain.backbone.state_dict())))
