"""Progress without a terminal: when stderr is not a TTY (as under pytest), extract's
clip loop and training's batch and epoch loops log "done/total, rate, time left" lines through the one helper
in core/progress.py, at most one per PROGRESS_INTERVAL_S (set to 0 here: a line at every update)."""

from __future__ import annotations

import logging
import re

import pytest
from extract_helpers import extract_config
from synthetic_store import make_store, write_fold_file

import mmfer.core.progress as progress_module
from mmfer.core.progress import Progress

LINE = re.compile(r"^(?P<desc>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\), [\d.]+ \w+/s, .+ left")


@pytest.fixture
def every_update(monkeypatch):
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL_S", 0.0)


def progress_lines(caplog, logger: str) -> list[str]:
    """Progress lines of `logger` and its children (training logs from train/fold.py and train/steps.py)."""
    return [r.getMessage() for r in caplog.records
            if (r.name == logger or r.name.startswith(logger + ".")) and LINE.match(r.getMessage())]


def test_the_helper_logs_done_rate_and_time_left_at_most_once_per_interval(caplog, monkeypatch):
    log = logging.getLogger("mmfer.test_progress")
    with caplog.at_level(logging.INFO, logger="mmfer.test_progress"):
        with Progress(10, desc="work", unit="batch", logger=log) as progress:   # the 30 s interval: nothing yet
            progress.update(3)
        assert progress_lines(caplog, "mmfer.test_progress") == []
        monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL_S", 0.0)
        with Progress(4, desc="work", unit="batch", logger=log) as progress:
            for _ in range(4):
                progress.update(1, loss="0.5")
    lines = progress_lines(caplog, "mmfer.test_progress")
    assert [line.split(",")[0] for line in lines] == ["work: 1/4 batches (25%)", "work: 2/4 batches (50%)",
                                                       "work: 3/4 batches (75%)"], lines   # none at the end
    assert all(line.endswith("left, loss 0.5") for line in lines), lines


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_extract_logs_progress_lines_for_its_clips(demo_root, tiny_models, tmp_path, caplog, every_update):
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    cfg = extract_config(demo_root, tmp_path / "cache", tiny_models, limit=8, batch_size=4)
    with caplog.at_level(logging.INFO, logger="mmfer.extract.run"):
        summary = extract_all(cfg, scan_ravdess(demo_root))
    assert summary.num_done == 8, summary.format()
    lines = progress_lines(caplog, "mmfer.extract.run")
    assert [line.split(",")[0] for line in lines] == ["extract: 4/8 clips (50%)"], lines


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_training_logs_progress_lines_for_batches_and_epochs(tmp_path, caplog, every_update):
    from train_helpers import tiny_config
    from mmfer.train.cross_validation import train

    cache, folds = make_store(tmp_path / "cache", repetitions=1), write_fold_file(tmp_path / "folds.json")
    cfg = tiny_config(cache, folds, tmp_path / "run", batch_size=16, **{"training.gradient_accumulation_steps": 1})
    with caplog.at_level(logging.INFO, logger="mmfer.train"):
        train(cfg)
    lines = progress_lines(caplog, "mmfer.train")
    batch_lines = [line for line in lines if line.startswith("fold1 epoch 1/2: ")]
    assert batch_lines and " batches (" in batch_lines[0] and "loss " in batch_lines[0], lines
    assert [line.split(",")[0] for line in lines if line.startswith("fold1: ")] == ["fold1: 1/2 epochs (50%)"], lines
