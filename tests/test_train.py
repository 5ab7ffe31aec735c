"""Training on a tiny synthetic GAICD: the loss falls, resuming continues exactly, exported weights load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from s2cnet.cropper import Cropper, load_checkpoint
from s2cnet.data import GAICD
from s2cnet.export import export_model
from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.saliency import SaliencyNet
from s2cnet.train import TrainConfig, load_backbone_init, parse_args, train
from synthetic_gaicd import write_gaicd

SMALL = dict(node_dim=64, num_heads=4)


@pytest.fixture(scope="module")
def gaicd_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gaicd")
    write_gaicd(root, n_images=3, size=(160, 120))  # 1 validation + 2 training photos
    return root


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    model = S2CNetConfig(**{**SMALL, **kw.pop("model", {})})
    return TrainConfig(data=str(data), out=str(out), val_size=1, lr=3e-3, backbone_lr=1e-3, seed=0, model=model, **kw)


@pytest.fixture(scope="module")
def straight_run(gaicd_dir, tmp_path_factory) -> Path:
    """Three uninterrupted epochs; the reference for the resume test and the source for export."""
    out = tmp_path_factory.mktemp("straight")
    train(_cfg(gaicd_dir, out, epochs=3))
    return out


def test_tiny_overfit_loss_falls(gaicd_dir, tmp_path) -> None:
    last = train(_cfg(gaicd_dir, tmp_path, epochs=10, model={"dropout": 0.0}))
    history = torch.load(tmp_path / "final.pt", weights_only=False)["history"]
    assert [row["epoch"] for row in history] == list(range(10))
    first, final = history[0]["loss"], history[-1]["loss"]
    assert final < 0.8 * first, f"loss did not fall clearly: {first:.3f} -> {final:.3f}"
    assert last["epoch"] == 9 and 0.0 <= last["val_Acc5"] <= 100.0
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["epochs"] == 10 and saved["model"]["node_dim"] == 64


class _Crash(RuntimeError):
    pass


def test_resume_continues_epoch_count_and_matches_straight_run(gaicd_dir, straight_run, tmp_path, capsys) -> None:
    def crash_after_epoch_1(epoch, metrics, ckpt_path):
        assert Path(ckpt_path).exists() and "SRCC" in metrics
        if epoch == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train(_cfg(gaicd_dir, tmp_path, epochs=3), report=crash_after_epoch_1)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "final.pt").exists()

    seen = []
    train(_cfg(gaicd_dir, tmp_path, epochs=3), report=lambda epoch, m, p: seen.append(epoch))
    assert "resumed from" in capsys.readouterr().out and seen == [2]  # only the missing epoch ran
    resumed = torch.load(tmp_path / "final.pt", weights_only=False)
    straight = torch.load(straight_run / "final.pt", weights_only=False)
    assert [r["epoch"] for r in resumed["history"]] == [0, 1, 2]
    for k, v in straight["model"].items():  # same data order, dropout RNG and optimiser state
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_export_weights_round_trip(gaicd_dir, straight_run, tmp_path) -> None:
    final = torch.load(straight_run / "final.pt", weights_only=False)
    reference = S2CNet(S2CNetConfig.from_dict(final["config"]))
    reference.load_state_dict(final["model"])
    reference.eval()

    out = tmp_path / "weights" / "s2cnet.pt"
    export_model(straight_run / "final.pt", out, card={"metrics": {"SRCC": 0.5}})
    assert all(v.dtype == torch.float16 for v in torch.load(out, weights_only=True)["model"].values() if v.is_floating_point())
    assert out.stat().st_size < 0.6 * (straight_run / "final.pt").stat().st_size
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["metrics"] == {"SRCC": 0.5} and card["config"]["node_dim"] == 64 and len(card["history"]) == 3

    model, _ = load_checkpoint(out)
    s = GAICD(gaicd_dir, "train")[0]
    with torch.no_grad():
        want = reference(s.image[None], s.crops, s.objects)
        got = model(s.image[None], s.crops, s.objects)
    assert got.shape == want.shape == (len(s.crops),)
    torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)
    assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.999

    # last.pt (a full training checkpoint, model config nested in the train config) exports the same way
    export_model(straight_run / "last.pt", tmp_path / "from_last.pt")
    from_last, _ = load_checkpoint(tmp_path / "from_last.pt")
    assert from_last.cfg == model.cfg
    cropper = Cropper.from_pretrained(out, proposer=None)
    assert cropper.model_version.startswith("s2cnet-") and cropper.model.cfg == model.cfg


@pytest.mark.parametrize("model", [{"edge_strategy": "disdrop", "distance_threshold": 0.3},
                                   {"edge_strategy": "none"}, {"use_graph": False}],
                         ids=["disdrop", "none", "no_graph"])
def test_one_epoch_for_each_variant(gaicd_dir, tmp_path, model: dict) -> None:
    last = train(_cfg(gaicd_dir, tmp_path, epochs=1, limit=1, model=model))
    assert torch.isfinite(torch.tensor(last["loss"])) and last["epoch"] == 0
    loaded, _ = load_checkpoint(tmp_path / "final.pt")
    assert loaded.cfg == S2CNetConfig(**{**SMALL, **model})


def test_backbone_init_from_saliency_checkpoint(tmp_path) -> None:
    torch.manual_seed(1)
    sal = SaliencyNet()
    torch.save(sal.state_dict(), tmp_path / "saliency.pt")
    model = S2CNet(S2CNetConfig(**SMALL))
    reduce_before = model.backbone.reduce[0].weight.clone()
    load_backbone_init(model, tmp_path / "saliency.pt")
    for k, v in sal.backbone.state_dict().items():
        if not k.startswith("reduce"):
            torch.testing.assert_close(model.backbone.state_dict()[k], v, msg=k)
    torch.testing.assert_close(model.backbone.reduce[0].weight, reduce_before)  # head-specific, not copied
    torch.save({"model": {"something.else": torch.zeros(3)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no backbone weights"):
        load_backbone_init(model, tmp_path / "bad.pt")


def test_parse_args_and_config_validation(tmp_path) -> None:
    (tmp_path / "best.json").write_text(json.dumps({"lr": 0.01, "model": {"num_layers": 3}}))
    cfg = parse_args(["--config", str(tmp_path / "best.json"), "--epochs", "2", "--freeze-stage8", "false",
                      "--limit", "5", "--model", "edge_strategy=disdrop", "--model", "distance_threshold=0.25",
                      "--model", "use_gate=false"])
    assert (cfg.lr, cfg.epochs, cfg.freeze_stage8, cfg.limit) == (0.01, 2, False, 5)
    assert (cfg.model.num_layers, cfg.model.edge_strategy, cfg.model.distance_threshold, cfg.model.use_gate) == \
        (3, "disdrop", 0.25, False)
    with pytest.raises(ValueError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"epoch": 3})
