"""The user's two commands on the demo: `extract --preset tiny` then `train-fusion --cache` with no --preset.

The cache records the preset its encoders came from; train-fusion takes it as its default (one log line
says so), so the second command trains the tiny model offline instead of looking for LFM2-700M.
"""

from __future__ import annotations

import json
import logging

from train_helpers import ONE_THREAD_ARG

from mmfer.pipeline.cli import main
from mmfer.core.store import open_store


def test_train_fusion_takes_the_caches_preset(demo_cache, tmp_path, caplog):
    assert open_store(demo_cache).attrs["preset"] == "tiny"
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]}]))
    argv = ["train-fusion", "--cache", str(demo_cache), "--out", str(tmp_path / "run"), "--device", "cpu",
            "--epochs", "1", "split.protocol=file", f"split.fold_file={folds}", ONE_THREAD_ARG]
    with caplog.at_level(logging.INFO, logger="mmfer"):
        assert main(argv) == 0
    assert any("preset tiny" in r.getMessage() and "extracted with" in r.getMessage() for r in caplog.records)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["folds"]["fold1"]["f1_macro"] >= 0


def test_an_explicit_preset_wins_over_the_caches(demo_cache, tmp_path, capsys):
    """--preset full on a tiny cache is honoured: it asks for the pretrained LFM2-700M, which is not here."""
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]}]))
    argv = ["train-fusion", "--cache", str(demo_cache), "--out", str(tmp_path / "run"), "--device", "cpu",
            "--preset", "full", "--epochs", "1", "split.protocol=file", f"split.fold_file={folds}"]
    assert main(argv) == 2
    assert "LFM2" in capsys.readouterr().err
