"""Studies spread over processes: `mmfer tune --storage` on Optuna's journal file, `mmfer ablate` claims.

Two tune commands share one journal file and one study folder, as two machines on a shared filesystem
would: the second sees the first's trial and runs only the rest.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from synthetic_store import make_store, write_fold_file
from train_helpers import ONE_THREAD_ARG

from mmfer.pipeline.cli import main as mmfer_main

BIN = Path(sys.executable).parent


def tune_argv(study_dir, cache, folds, storage, trials: int) -> list[str]:
    return ["tune", "--cache", str(cache), "--preset", "tiny", "--variant", "early", "--epochs", "1",
            "--device", "cpu", "--seed", "7", "--batch-size", "8", "--trials", str(trials),
            "--study-dir", str(study_dir), "--storage", str(storage), "split.protocol=file",
            f"split.fold_file={folds}", "model.visual.num_keep_tokens=8", "training.warmup_epochs=0", ONE_THREAD_ARG]


@pytest.mark.slow   # two tuning processes sharing a journal: ~8 s
def test_tune_shares_trials_through_a_journal_file(tmp_path):
    cache, folds = make_store(tmp_path / "cache", repetitions=1), write_fold_file(tmp_path / "folds.json")
    journal = tmp_path / "shared" / "optuna.log"
    assert mmfer_main(tune_argv(tmp_path / "tune", cache, folds, journal, trials=1)) == 0
    assert journal.is_file() and not (tmp_path / "tune" / "study.db").exists()   # the journal, not SQLite
    assert mmfer_main(tune_argv(tmp_path / "tune", cache, folds, journal, trials=2)) == 0
    study = optuna.load_study(study_name="mmfer-fold1", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]   # the second ran only the missing one


@pytest.mark.slow   # two `mmfer ablate` CLI processes training every job (~140 s on 2 shared cores)
def test_two_ablate_processes_on_one_out_run_every_job_once(tmp_path):
    """`mmfer ablate --workers 2` and a second `mmfer ablate` share one --out: 4 jobs, each trained once, a
    stale claim (its process gone) taken over, every claim released."""
    cache, folds = make_store(tmp_path / "cache", repetitions=1), write_fold_file(tmp_path / "folds.json")
    entries = tmp_path / "entries.yaml"
    entries.write_text(yaml.safe_dump([{"name": "full", "overrides": {"model.variant": "early"}},
                                       {"name": "audio", "overrides": {"model.variant": "audio"}}]))
    out = tmp_path / "ablate"
    gone = subprocess.Popen(["true"])   # its pid is gone once it is reaped
    gone.wait()
    (out / ".claims").mkdir(parents=True)
    stale = out / ".claims" / "audio-seed8.claim"
    stale.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid, "since": 0}))
    argv = [str(BIN / "mmfer"), "ablate", "--cache", str(cache), "--preset", "tiny", "--epochs", "1", "--device", "cpu",
            "--seed", "7", "--batch-size", "8", "--out", str(out), "--seeds", "2", "--entries", str(entries),
            "split.protocol=file", f"split.fold_file={folds}", "model.visual.num_keep_tokens=8",
            "training.warmup_epochs=0", ONE_THREAD_ARG]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*argv, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in (["--workers", "2"], [])]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    trained = [int(re.search(r"(\d+) run\(s\) trained", stdout).group(1)) for stdout, _ in outputs]
    assert sum(trained) == 4, outputs                                    # every job once, over both processes
    run_dirs = sorted(d for d in out.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(run_dirs) == 4
    for run_dir in run_dirs:   # one training each: one epoch line, not two
        assert len((run_dir / "fold1" / "metrics.jsonl").read_text().splitlines()) == 1, run_dir
    assert not list((out / ".claims").iterdir())                       # the stale claim was taken over, all released
    assert (out / "ablation.csv").is_file()
