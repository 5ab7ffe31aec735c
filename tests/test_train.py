"""Training on a tiny synthetic GAICD: the loss falls, resuming continues exactly, exported weights load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from s2cnet.backbone import FusedMobileNetV2
from s2cnet.checkpoint import best_run, chosen_checkpoint, load_checkpoint
from s2cnet.cropper import Cropper
from s2cnet.model import S2CNet, S2CNetConfig
from s2cnet.saliency import SaliencyHead, SaliencyNet, load_saliency_head
from s2cnet.training.data import GAICD
from s2cnet.training.export import export_model
from s2cnet.training.synthetic import write_gaicd
from s2cnet.training.train import TrainConfig, load_backbone_init, parse_args, train, update_average
from s2cnet.training.train_saliency import main as saliency_main

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


def test_backbone_init_from_torchvision_checkpoint(tmp_path) -> None:
    """The file torchvision's ImageNet MobileNetV2 ships as (features.*, classifier.*) initialises
    every backbone stage, layer for layer, and nothing else."""
    torch.manual_seed(3)
    tv = torchvision.models.mobilenet_v2()
    torch.save(tv.state_dict(), tmp_path / "mobilenet_v2.pth")
    model = S2CNet(S2CNetConfig(**SMALL))
    reduce_before = model.backbone.reduce[0].weight.clone()
    load_backbone_init(model, tmp_path / "mobilenet_v2.pth")
    own = model.backbone.state_dict()
    copied = [k for k in own if not k.startswith("reduce")]
    assert copied and len(copied) == len([k for k in tv.state_dict() if k.startswith("features.") and int(k.split(".")[1]) < 18])
    for k in copied:
        layer = k.split(".", 1)[1]  # stage16.7.conv... <- features.7.conv...
        torch.testing.assert_close(own[k], tv.state_dict()[f"features.{layer}"], msg=k)
    torch.testing.assert_close(model.backbone.reduce[0].weight, reduce_before)
    bb, x = model.backbone.eval(), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(bb.stage32(bb.stage16(bb.stage8(x))), tv.eval().features[:18](x))
        direct = FusedMobileNetV2(imagenet_weights=tmp_path / "mobilenet_v2.pth").eval()  # the constructor's path
        torch.testing.assert_close(direct.stage32(direct.stage16(direct.stage8(x))), tv.features[:18](x))


def test_init_from_a_whole_s2cnet_loads_every_weight(tmp_path) -> None:
    torch.manual_seed(2)
    trained = S2CNet(S2CNetConfig(**SMALL))
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "last.pt")  # a train.py checkpoint
    model = S2CNet(S2CNetConfig(**SMALL))
    load_backbone_init(model, tmp_path / "last.pt")
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)  # the reduction and the head too


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


# -- weight averaging (SWA), multi-scale training, the shipped saliency head ---------------------------

def test_update_average_is_a_running_mean_and_leaves_integer_buffers() -> None:
    states = [{"w": torch.tensor([1.0, 2.0]) * (i + 1) + i, "b": torch.full((2, 2), float(i * i)),
               "num_batches_tracked": torch.tensor(10 * (i + 1))} for i in range(3)]
    originals = [{k: v.clone() for k, v in s.items()} for s in states]
    avg, count = update_average(None, 0, states[0])
    assert count == 1 and all(torch.equal(avg[k], states[0][k]) for k in avg)
    for s in states[1:]:
        avg, count = update_average(avg, count, s)
    assert count == 3
    for k in ("w", "b"):
        torch.testing.assert_close(avg[k], torch.stack([o[k] for o in originals]).mean(0))
    assert avg["num_batches_tracked"].item() == 10 and avg["num_batches_tracked"].dtype == torch.int64
    for s, o in zip(states, originals):  # the models' own weights are never touched
        assert all(torch.equal(s[k], o[k]) for k in s)


def _weights_after_each_epoch(store: list):
    def report(epoch, metrics, ckpt_path):
        store.append(torch.load(ckpt_path, map_location="cpu", weights_only=False)["model"])
    return report


@pytest.fixture(scope="module")
def swa_run(gaicd_dir, tmp_path_factory) -> tuple[Path, list]:
    """Three epochs averaging the weights of epochs 1 and 2."""
    out = tmp_path_factory.mktemp("swa")
    epoch_weights: list = []
    train(_cfg(gaicd_dir, out, epochs=3, swa_from=1), report=_weights_after_each_epoch(epoch_weights))
    return out, epoch_weights


def test_swa_final_is_the_mean_of_the_averaged_epochs(swa_run) -> None:
    out, epoch_weights = swa_run
    final = torch.load(out / "final.pt", weights_only=False)
    last = torch.load(out / "last.pt", weights_only=False)
    assert len(epoch_weights) == 3 and last["swa_count"] == 2
    moved = 0
    for k, v in final["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (epoch_weights[1][k] + epoch_weights[2][k]) / 2, rtol=1e-5, atol=1e-6, msg=k)
            moved += not torch.allclose(v, last["model"][k])
        else:
            assert torch.equal(v, epoch_weights[1][k]), k
    assert moved > 10  # the average is not the last epoch's weights
    history = final["history"]
    assert "swa_epochs" not in history[0] and [r.get("swa_epochs") for r in history[1:]] == [1, 2]
    assert 0.0 <= history[-1]["swa_val_Acc5"] <= 100.0 and -1.0 <= history[-1]["swa_val_SRCC"] <= 1.0
    assert "swa_val_SRCC" not in history[-2]
    loaded, _ = load_checkpoint(out / "final.pt")  # the average is an ordinary checkpoint
    assert loaded.cfg == S2CNetConfig(**SMALL)


def test_swa_state_survives_a_resume(gaicd_dir, swa_run, tmp_path, capsys) -> None:
    def crash_after_epoch_1(epoch, metrics, ckpt_path):
        if epoch == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train(_cfg(gaicd_dir, tmp_path, epochs=3, swa_from=1), report=crash_after_epoch_1)
    interrupted = torch.load(tmp_path / "last.pt", weights_only=False)
    assert interrupted["swa_count"] == 1 and interrupted["swa"] is not None
    train(_cfg(gaicd_dir, tmp_path, epochs=3, swa_from=1))
    assert "resumed from" in capsys.readouterr().out
    resumed = torch.load(tmp_path / "final.pt", weights_only=False)
    straight = torch.load(swa_run[0] / "final.pt", weights_only=False)
    assert resumed["history"][-1]["swa_epochs"] == 2
    for k, v in straight["model"].items():  # epoch 1 is still in the average after the restart
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_scale_jitter_and_swa_from_on_the_command_line(tmp_path) -> None:
    cfg = parse_args(["--scale-jitter", "224,256", "--swa-from", "3"])
    assert cfg.scale_jitter == [224, 256] and cfg.swa_from == 3
    defaults = parse_args([])
    assert defaults.scale_jitter == [] and defaults.swa_from is None
    (tmp_path / "c.json").write_text(json.dumps({"scale_jitter": [192, 288]}))
    assert parse_args(["--config", str(tmp_path / "c.json")]).scale_jitter == [192, 288]


def test_export_ships_the_saliency_head(straight_run, tmp_path) -> None:
    torch.manual_seed(2)
    head = SaliencyHead()
    torch.save({"head": head.state_dict(), "val_mae": 0.125}, tmp_path / "head.pt")
    out = tmp_path / "s2cnet.pt"
    export_model(straight_run / "final.pt", out, saliency_head=tmp_path / "head.pt")
    shipped = torch.load(out, weights_only=True)
    assert set(shipped["saliency_head"]) == set(head.state_dict())
    for k, v in shipped["saliency_head"].items():
        assert v.dtype == torch.float16, k
        torch.testing.assert_close(v.float(), head.state_dict()[k], rtol=1e-3, atol=1e-3)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["saliency_head_val_mae"] == 0.125 and len(card["history"]) == 3
    cropper = Cropper.from_pretrained(out)
    assert cropper.proposer.shares_backbone
    for k, v in cropper.proposer.head.state_dict().items():
        torch.testing.assert_close(v, shipped["saliency_head"][k].float(), msg=k)
    export_model(straight_run / "final.pt", tmp_path / "plain.pt")  # without a head: no entry, no card field
    assert "saliency_head" not in torch.load(tmp_path / "plain.pt", weights_only=True)
    assert "saliency_head_val_mae" not in json.loads((tmp_path / "plain.json").read_text())


def _write_duts(root: Path, n: int, size: int = 24) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        pixels[y : y + size // 2, x : x + size // 2] = 230
        mask[y : y + size // 2, x : x + size // 2] = 255
        Image.fromarray(pixels).save(root / "images" / f"{i:04d}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"{i:04d}.png")


def test_saliency_head_only_keeps_the_s2cnet_backbone(tmp_path) -> None:
    """``--backbone-from``: the S2CNet backbone is loaded and frozen (BatchNorm statistics too), only the
    head learns, and the output is {'head', 'val_mae'} for export."""
    _write_duts(tmp_path / "duts", 104)  # the first 100 photos are the validation set
    torch.manual_seed(5)
    s2c = S2CNet(S2CNetConfig(**SMALL))
    with torch.no_grad():
        for m in s2c.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    torch.save({"model": s2c.state_dict(), "config": s2c.cfg.to_dict()}, tmp_path / "s2c.pt")
    out = tmp_path / "head.pt"
    saliency_main(["--backbone-from", str(tmp_path / "s2c.pt"), "--data", str(tmp_path / "duts"), "--epochs", "1",
                   "--batch-size", "2", "--size", "32", "--lr", "1e-2", "--out", str(out)])

    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"head", "val_mae"} and 0.0 <= saved["val_mae"] <= 1.0
    torch.manual_seed(0)  # main's seed: the head it started from
    start = SaliencyNet().head.state_dict()
    assert any(not torch.equal(saved["head"][k], start[k]) for k in start)  # the head learned
    load_saliency_head(saved["head"])  # and is what the proposer loads

    net = torch.load(out.with_suffix(".resume.pt"), weights_only=False)["model"]
    reference = {k[len("backbone."):]: v for k, v in s2c.state_dict().items()
                 if k.startswith("backbone.") and not k.startswith("backbone.reduce")}
    assert len(reference) > 100
    for k, v in reference.items():
        assert torch.equal(net[f"backbone.{k}"], v), k


def test_a_run_directory_ships_whichever_of_last_and_average_validated_better(tmp_path) -> None:
    def run(name: str, last_row: dict) -> Path:
        d = tmp_path / name
        d.mkdir()
        torch.save({"model": {}, "config": {}, "history": [{"val_SRCC": 0.1}, last_row]}, d / "final.pt")
        return d

    better_last = run("a", {"val_SRCC": 0.70, "swa_val_SRCC": 0.69})
    better_average = run("b", {"val_SRCC": 0.68, "swa_val_SRCC": 0.69})
    no_average = run("c", {"val_SRCC": 0.70})
    assert chosen_checkpoint(better_last) == better_last / "last.pt"
    assert chosen_checkpoint(better_average) == better_average / "final.pt"
    assert chosen_checkpoint(no_average) == no_average / "final.pt"  # without SWA final.pt is the last epoch
    assert chosen_checkpoint(better_last / "final.pt") == better_last / "final.pt"  # a file is taken as given
    # across runs: each scored by its chosen checkpoint (a: last 0.70; b: average 0.69; c: 0.70 without SWA)
    assert best_run([better_average, better_last]) == better_last
    assert best_run([better_average, run("d", {"val_SRCC": 0.60, "swa_val_SRCC": 0.695})]) == tmp_path / "d"


def test_val_seed_holds_out_the_same_photos_whatever_the_training_seed(tmp_path) -> None:
    data = tmp_path / "gaicd"
    write_gaicd(data, n_images=8, size=(96, 64))

    def held_out(name: str, **kw) -> list[str]:
        cfg = TrainConfig(data=str(data), out=str(tmp_path / name), epochs=1, limit=1, val_size=3, threads=1,
                          progress_every=0, model=S2CNetConfig(**SMALL), **kw)
        train(cfg)
        return json.loads((tmp_path / name / "val_ids.json").read_text())

    seed0, seed1 = held_out("s0", seed=0), held_out("s1", seed=1)
    assert len(seed0) == 3 and seed0 != seed1  # by default the seed also draws the split
    assert held_out("s1v0", seed=1, val_seed=0) == seed0


def test_saliency_on_imagenet_keeps_stage8_and_batchnorm(tmp_path) -> None:
    """``--imagenet``: the backbone starts from a torchvision-layout ImageNet file; the stride-8 stage and
    every BatchNorm (statistics, scale and shift: folded files keep a conv's bias there) stay as the file
    has them, the later stages learn, and the result initialises S2CNet like any saliency checkpoint."""
    _write_duts(tmp_path / "duts", 104)
    torch.manual_seed(3)
    tv = torchvision.models.mobilenet_v2()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0), m.bias.uniform_(-0.1, 0.1)
    torch.save(tv.state_dict(), tmp_path / "imagenet.pth")
    out = tmp_path / "duts_on_imagenet.pt"
    saliency_main(["--imagenet", str(tmp_path / "imagenet.pth"), "--tf-padding", "--data", str(tmp_path / "duts"),
                   "--epochs", "1", "--batch-size", "2", "--size", "32", "--lr", "1e-2", "--out", str(out)])
    saved, source = torch.load(out, weights_only=True), tv.state_dict()
    for k, v in saved.items():
        if k.startswith("backbone.stage8.") or (k.startswith("backbone.") and ("running_" in k or _is_bn(saved, k))):
            tv_key = "features." + k.split(".", 2)[2]
            assert torch.equal(v, source[tv_key]), k
    learned = [k for k in saved if k.startswith("backbone.stage16.") and k.endswith("conv.1.0.weight")]
    assert learned and any(not torch.equal(saved[k], source["features." + k.split(".", 2)[2]]) for k in learned)
    model = S2CNet(S2CNetConfig(tf_padding=True))
    load_backbone_init(model, out)
    key = "8.conv.1.0.weight"
    torch.testing.assert_close(model.backbone.stage16.state_dict()[key], saved[f"backbone.stage16.{key}"])
    with pytest.raises(SystemExit):
        saliency_main(["--imagenet", str(tmp_path / "imagenet.pth"), "--init", str(out), "--out", str(tmp_path / "x.pt")])


def _is_bn(state: dict, key: str) -> bool:
    """A BatchNorm's weight or bias: its module also holds running statistics."""
    module = key.rsplit(".", 1)[0]
    return f"{module}.running_mean" in state
