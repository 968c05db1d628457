"""`mmfer tune` resumes a study only under the base settings it was started with.

A one-trial study on a small synthetic store; the same command again with another base setting is refused
through the CLI's handler with one line naming the setting, and no trial runs under the new settings.
"""

from __future__ import annotations

import optuna
import pytest
from synthetic_store import make_store, write_fold_file
from train_helpers import ONE_THREAD_ARG

from mmfer.pipeline.cli import main as mmfer_main


def tune_argv(root, cache, folds, epochs: int, trials: int) -> list[str]:
    return ["tune", "--cache", str(cache), "--preset", "tiny", "--variant", "early", "--epochs", str(epochs),
            "--device", "cpu", "--seed", "7", "--batch-size", "8", "--trials", str(trials),
            "--study-dir", str(root / "tune"), "split.protocol=file", f"split.fold_file={folds}",
            "model.visual.num_keep_tokens=8", "training.warmup_epochs=0", ONE_THREAD_ARG]


@pytest.mark.slow   # two tuning runs: ~8 s
def test_resume_with_other_base_settings_is_refused_by_name(tmp_path, capsys):
    cache, folds = make_store(tmp_path / "cache", repetitions=1), write_fold_file(tmp_path / "folds.json")
    assert mmfer_main(tune_argv(tmp_path, cache, folds, epochs=1, trials=1)) == 0
    storage = f"sqlite:///{tmp_path / 'tune' / 'study.db'}"
    assert len(optuna.load_study(study_name="mmfer-fold1", storage=storage).trials) == 1
    capsys.readouterr()

    assert mmfer_main(tune_argv(tmp_path, cache, folds, epochs=2, trials=2)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "training.max_epochs 1 -> 2" in err and "study.db" in err, err
    assert len(optuna.load_study(study_name="mmfer-fold1", storage=storage).trials) == 1
