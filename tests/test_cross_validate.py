"""k-fold cross-validation: the folds partition the photos, and the driver runs, resumes and summarises."""

from __future__ import annotations

import json

from s2cnet.training.cross_validate import main, summary
from s2cnet.training.synthetic import write_gaicd
from s2cnet.training.train import split_train_val


def test_folds_partition_the_training_photos(tmp_path):
    write_gaicd(tmp_path, n_images=11, size=(96, 64))
    ids = set(json.loads((tmp_path / "split.json").read_text())["train"])
    vals = []
    for k in range(3):
        train, val = split_train_val(tmp_path, 60, seed=0, folds=3, fold=k)
        assert not set(train) & set(val) and set(train) | set(val) == ids
        vals += val
    assert sorted(vals) == sorted(ids)  # each photo validated exactly once over the folds


def test_two_recipes_two_folds_run_resume_and_summarise(tmp_path, capsys):
    data = tmp_path / "gaicd"
    write_gaicd(data, n_images=6, size=(96, 64))
    argv = ["--data", str(data), "--recipes", "shipped,graph-free", "--folds", "2", "--out", str(tmp_path / "cv"),
            "--epochs", "1", "--threads", "1"]
    main(argv)
    first = capsys.readouterr().out
    assert first.count("== ") == 4  # 2 recipes x 2 folds
    rows = {r["recipe"]: r for r in summary(tmp_path / "cv", 2)}
    assert set(rows) == {"shipped", "graph-free"} and all(r["folds"] == 2 for r in rows.values())
    assert all(-1 <= r["SRCC"] <= 1 and r["SRCC_sd"] >= 0 for r in rows.values())
    main(argv)  # finished folds are skipped
    again = capsys.readouterr().out
    assert "== " not in again and "| shipped | 2 |" in again
    assert json.loads((tmp_path / "cv" / "summary.json").read_text())
