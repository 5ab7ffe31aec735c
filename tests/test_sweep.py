"""tune/sweep.py: search space sanity, and a smoke sweep that is interrupted, resumed and exported."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import GAICD_DIR, needs_gaicd

from s2cnet.model import S2CNet
from s2cnet.training.train import TrainConfig
from s2cnet.training.train import parse_args as train_parse_args
from tune import sweep


def sample_configs(n: int, seed: int = 0) -> list[dict]:
    """Concrete draws from the search space (grid axis included), as Tune would produce them."""
    from ray.tune.search.variant_generator import generate_variants

    space = {**sweep.search_space(paired=True), "base": {"epochs": 1}}
    out = []
    for i in range(n):
        out += [cfg for _, cfg in generate_variants(space, random_state=seed + i)]
    return out


def test_every_sampled_config_builds_a_model(tmp_path):
    configs = sample_configs(4)
    assert {c["edge_strategy"] for c in configs} == {"disdrop", "disemb", "none"}
    for c in configs:
        c["base"] = {"data": str(GAICD_DIR), "threads": 1}
        cfg = sweep.trial_config(c, tmp_path / "t")
        assert cfg.out == str(tmp_path / "t")
        assert (cfg.lr, cfg.rank_weight) == (c["lr"], c["rank_weight"])
        assert cfg.model.edge_strategy == c["edge_strategy"] and cfg.model.max_objects == c["max_objects"]
        model = S2CNet(cfg.model)  # raises if heads do not divide the node width, or the strategy is unknown
        crops = torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 96.0, 96.0]])
        objects = torch.tensor([[8.0, 8.0, 40.0, 40.0]] * 12)
        with torch.no_grad():
            assert model.eval()(torch.zeros(1, 3, 128, 128), crops, objects).shape == (2,)


def test_export_config_is_accepted_by_train_cli(tmp_path):
    c = sample_configs(1, seed=3)[0]
    c["base"] = {"data": "/some/gaicd", "init": "/some/saliency.pt", "epochs": 2, "limit": 10, "val_size": 5, "threads": 1}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(sweep.export_config(c)))
    cfg = train_parse_args(["--config", str(path)])
    assert (cfg.data, cfg.init, cfg.lr, cfg.rank_weight) == ("/some/gaicd", "/some/saliency.pt", c["lr"], c["rank_weight"])
    assert {k: getattr(cfg.model, k) for k in sweep.MODEL_KEYS} == {k: c[k] for k in sweep.MODEL_KEYS}
    # sweep-only sizes go back to full-training defaults
    assert (cfg.epochs, cfg.limit, cfg.val_size) == (TrainConfig().epochs, None, TrainConfig().val_size)


def test_leaderboard_lists_trials_that_reported_or_failed_best_first():
    import pandas as pd

    config = {"edge_strategy": "disemb", "distance_threshold": 0.3, "num_layers": 1, "num_heads": 4,
              "max_objects": 5, "use_gate": True, "lr": 1e-3, "rank_weight": 1.0}

    def result(trial: str, srcc: float | None, error: Exception | None = None, started: bool = True):
        epochs = [] if srcc is None else [{"epoch": 1, "SRCC": srcc, "Acc5": 10.0, "trial_id": trial}]
        return SimpleNamespace(config=config if started else None, error=error, path=f"/x/{trial}",
                               metrics=epochs[-1] if epochs else {}, metrics_dataframe=pd.DataFrame(epochs))

    grid = [result("a", 0.5), result("b", 0.7), result("silent", None), result("unborn", None, started=False),
            result("crashed", None, error=RuntimeError("out of memory"))]
    rows = sweep.leaderboard(grid)
    assert [r["trial"] for r in rows] == ["b", "a", "crashed"]  # a trial that has said nothing yet is only unfinished
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[2]["status"] == "ERROR" and math.isnan(rows[2]["SRCC"])


def test_edge_summary_pairs_draws_by_their_other_hyperparameters():
    base = {"distance_threshold": 0.3, "num_layers": 1, "num_heads": 4, "max_objects": 5, "use_gate": True,
            "lr": 1e-3, "rank_weight": 1.0, "epochs": 2}
    rows = []
    for draw, (a, b, c) in enumerate([(0.5, 0.4, 0.1), (0.7, 0.5, 0.2)]):
        for s, v in zip(("disdrop", "disemb", "none"), (a, b, c)):
            rows.append({**base, "num_layers": draw + 1, "edge_strategy": s, "SRCC": v, "SRCC_e1": v, "Acc5_e1": 10 * v,
                         "srcc_by_epoch": {1: v}})
    rows[0]["srcc_by_epoch"] = {1: 0.5, 2: 0.6}  # draw 0: DisDrop went on to epoch 2, DisEmb was stopped at 1
    rows[1]["srcc_by_epoch"] = {1: 0.4}
    summary = {r["edge_strategy"]: r for r in sweep.edge_summary(rows)}
    assert summary["disdrop"]["pairs"] == 2
    assert math.isclose(summary["disdrop"]["paired_gap_e1_vs_disemb"], 0.15)
    assert math.isclose(summary["none"]["paired_gap_e1_vs_disemb"], -0.3)
    assert math.isclose(summary["disdrop"]["paired_gap_last_vs_disemb"], 0.15)  # compared at epoch 1, both reached it
    assert math.isclose(summary["disdrop"]["gap_last_se"], math.sqrt(((0.1 - 0.15) ** 2 + (0.2 - 0.15) ** 2) / 1 / 2))
    assert math.isclose(summary["disemb"]["best_SRCC"], 0.5)


def interrupt_after_first_result(experiment: Path, stop: threading.Event) -> None:
    """Sends Tune's stop signal (SIGUSR1, same handling as Ctrl+C) once a trial has logged an epoch."""
    while not stop.is_set():
        if any(p.stat().st_size > 0 for p in experiment.glob("*/result.json")):
            time.sleep(1.0)  # let the driver register that epoch's checkpoint
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        time.sleep(0.1)


def test_smoke_without_gaicd_trains_on_synthetic_data_and_keeps_only_the_tables(ray_session, tmp_path, capsys):
    """A fresh clone has no ../shared/data: --smoke says so, trains on the synthetic GAICD-like set, and
    (without --storage) removes its experiment, checkpoints included, keeping the exported tables."""
    argv = ["--smoke", "--unpaired", "--epochs", "1", "--data", str(tmp_path / "no_gaicd_here"), "--export-dir",
            str(tmp_path / "tables"), "--cpus-per-trial", "0.5", "--verbose", "0"]
    done = sweep.main(argv)
    out = capsys.readouterr().out
    assert f"GAICD not found at {tmp_path / 'no_gaicd_here'}: the smoke run trains on a synthetic" in out
    rows = done["leaderboard"]
    assert done["unfinished"] == 0 and len(rows) == 1 and rows[0]["status"] == "ok" and not math.isnan(rows[0]["SRCC"])
    assert not Path(done["experiment"]).exists()  # the temporary experiment went with its checkpoints
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "best_config.json", "best_trial.json", "edge_summary.csv", "leaderboard.csv"]
    with pytest.raises(SystemExit):  # nothing kept to resume
        sweep.parse_args(["--smoke", "--resume"])
    with pytest.raises(SystemExit, match="--smoke"):  # a real sweep needs the data, and says what to do
        sweep.main(["--data", str(tmp_path / "no_gaicd_here")])


@needs_gaicd()
def test_smoke_sweep_interrupted_resumed_and_exported(ray_session, tmp_path):
    argv = ["--smoke", "--storage", str(tmp_path), "--name", "smoke", "--epochs", "3", "--cpus-per-trial", "0.5",
            "--data", str(GAICD_DIR), "--verbose", "0"]
    stop = threading.Event()
    watcher = threading.Thread(target=interrupt_after_first_result, args=(tmp_path / "smoke", stop), daemon=True)
    watcher.start()
    try:
        first = sweep.main(argv)
    finally:
        stop.set()
    assert first["unfinished"] > 0  # interrupted; a best-so-far config may already be exported
    peek = sweep.main(argv + ["--report-only"])  # reads the saved state, runs nothing
    assert peek["unfinished"] == first["unfinished"]
    assert sorted(r["trial"] for r in peek["leaderboard"]) == sorted(r["trial"] for r in first["leaderboard"])

    with pytest.raises(SystemExit, match="--resume"):  # never silently clobbers an experiment
        sweep.main(argv)

    done = sweep.main(argv + ["--resume"])
    rows = done["leaderboard"]
    assert done["unfinished"] == 0 and len(rows) == 3
    assert {r["edge_strategy"] for r in rows} == {"disdrop", "disemb", "none"}
    assert all(r["status"] == "ok" and 1 <= r["epochs"] <= 3 and not math.isnan(r["SRCC"]) for r in rows)
    assert max(r["epochs"] for r in rows) == 3
    # at least one trial picked up its Tune checkpoint (tune.get_checkpoint -> last.pt) mid-way
    assert any(r["resumed_at"] >= 1 for r in rows)
    assert [r["SRCC"] for r in rows] == sorted((r["SRCC"] for r in rows), reverse=True)
    assert done["leaderboard_csv"].read_text().count("\n") == 4

    assert json.loads((done["best_config"].parent / "best_trial.json").read_text())["complete_sweep"] is True
    cfg = train_parse_args(["--config", str(done["best_config"])])
    best = rows[0]
    assert cfg.model.edge_strategy == best["edge_strategy"] and cfg.lr == best["lr"]
    assert cfg.limit is None and cfg.data == str(GAICD_DIR.resolve())


@needs_gaicd()
def test_smoke_sweep_on_s3_storage_restores_from_the_bucket(ray_session, local_s3, tmp_path, monkeypatch):
    """storage s3://... with a custom endpoint goes through a pyarrow S3FileSystem (storage_filesystem)."""
    for k, v in local_s3.env().items():
        monkeypatch.setenv(k, v)
    local_s3.create_bucket("sweeps")
    argv = ["--smoke", "--unpaired", "--epochs", "1", "--storage", "s3://sweeps/tune", "--s3-endpoint",
            local_s3.endpoint_url, "--name", "s3smoke", "--cpus-per-trial", "0.5", "--data", str(GAICD_DIR),
            "--export-dir", str(tmp_path), "--verbose", "0"]
    first = sweep.main(argv)
    assert first["unfinished"] == 0 and len(first["leaderboard"]) == 1
    keys = [o["Key"] for o in local_s3.client().list_objects_v2(Bucket="sweeps", Prefix="tune/s3smoke/")["Contents"]]
    assert any(k.endswith("/checkpoint_000000/last.pt") for k in keys)
    assert any(k.split("/")[-1].startswith("experiment_state") for k in keys)
    again = sweep.main(argv + ["--resume"])  # restored from the bucket: nothing left to run, same result
    assert [r["trial"] for r in again["leaderboard"]] == [r["trial"] for r in first["leaderboard"]]
    assert again["leaderboard"][0]["SRCC"] == first["leaderboard"][0]["SRCC"]
    best = train_parse_args(["--config", str(again["best_config"])])
    assert best.model.edge_strategy == first["leaderboard"][0]["edge_strategy"]
