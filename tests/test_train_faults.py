"""Faults during `train-fusion`, with real `kill -9`s of a CLI subprocess on a small synthetic store.

One run is killed at five moments in turn (mid-epoch; mid-checkpoint-save before and after the old
`last.pt` is rotated to `last.prev.pt`; a truncated `last.pt`), each followed by `--resume`; the result
equals an uninterrupted run's bit for bit. Hostile pickle files where a checkpoint or branch weights are
read are refused, and their payload never runs. Children run with OMP_NUM_THREADS=1 (CPU matmuls are only
bitwise reproducible for a fixed thread count) and the same flags, so the runs are comparable.
"""

from __future__ import annotations

import json
import os
import re
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from mmfer.pipeline.cli import main as mmfer_main
from mmfer.train.checkpoint import CheckpointError, load_checkpoint
from synthetic_store import make_store, write_fold_file
from train_helpers import ONE_THREAD_ARG

EPOCHS = 3          # 31 training clips, batch 8: 4 batches an epoch
RUN_TIMEOUT_S = 300
TIMING_KEYS = ("epoch_s", "samples_per_s", "wall_s", "epoch_s_mean", "samples_per_s_mean")


def train_cmd(cache: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    store, folds = cache
    return [sys.executable, "-m", "mmfer.pipeline.cli", "train-fusion", "--cache", str(store), "--out", str(out),
            "--preset", "tiny", "--epochs", str(EPOCHS), "--device", "cpu", "--seed", "7", "split.protocol=file",
            f"split.fold_file={folds}", "training.batch_size=8", "training.warmup_epochs=1",
            "model.visual.num_keep_tokens=8", ONE_THREAD_ARG,
            # the design guide's slow rates: validation improves every epoch, so each epoch saves best and last
            # (the kill points below count those saves)
            "training.lr=1e-4", "training.lr_fusion=5e-5", "training.lr_branches=1e-4", *extra]


def run_train(cache, out: Path, *extra: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMFER_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if crash_at:
        env["MMFER_CRASH_AT"] = crash_at
    return subprocess.run(train_cmd(cache, out, *extra), env=env, cwd=out.parent, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def epoch_of(path: Path) -> int | None:
    """The 0-based epoch a checkpoint file holds, or None when the file is absent."""
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"] if path.exists() else None


def checkpoint_files(out: Path) -> dict:
    folder = out / "fold1" / "checkpoints"
    return {"last": epoch_of(folder / "last.pt") if _loads(folder / "last.pt") else "damaged",
            "prev": epoch_of(folder / "last.prev.pt") if _loads(folder / "last.prev.pt") else "damaged",
            "best": epoch_of(folder / "best.pt"), "tmp": sorted(p.name for p in folder.glob(".*.tmp"))}


def _loads(path: Path) -> bool:
    try:
        epoch_of(path)
        return True
    except Exception:   # noqa: BLE001 - any failure here means "not a loadable checkpoint"
        return False


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    return value


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train_faults")
    return make_store(root / "cache", repetitions=1), write_fold_file(root / "folds.json")


@pytest.fixture(scope="module")
def full_run(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    result = run_train(cache, out)
    assert result.returncode == 0, result.stderr[-3000:]
    (out.parent / "stderr.txt").write_text(result.stderr)
    return out


@pytest.mark.slow   # needs full_run: a 3-epoch LFM2 train-fusion CLI run (~100 s on 2 shared cores)
def test_a_fold_keeps_the_best_weights_and_the_last_resumable_state(full_run):
    """best.pt holds the weights alone (no optimizer moments, no RNG), with no previous copy; last.pt is
    the full state resume reads (and last.prev.pt its copy from the epoch before); the disk estimate names them."""
    folder = full_run / "fold1" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.prev.pt", "last.pt"]
    best = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    last = torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
    assert {"optimizer", "rng", "scheduler", "scaler", "early_stopping"} <= set(last)
    assert not {"optimizer", "rng", "scheduler", "scaler", "early_stopping"} & set(best)
    assert {"model", "epoch", "config", "model_spec", "cache_fingerprints"} <= set(best)
    assert (folder / "best.pt").stat().st_size < (folder / "last.pt").stat().st_size / 2
    stderr = (full_run.parent / "stderr.txt").read_text()
    estimate = re.search(r"checkpoint disk estimate: 1 fold\(s\) x \(best.pt ([\d.]+) MB \+ last.pt and last.prev.pt "
                         r"2 x ([\d.]+) MB\) = ([\d.]+) MB", stderr)
    assert estimate, stderr[-3000:]
    best_mb, last_mb, total_mb = map(float, estimate.groups())
    on_disk = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    assert abs(total_mb - on_disk) < 0.1 * on_disk, (total_mb, on_disk)
    assert abs(best_mb - (folder / "best.pt").stat().st_size / 1e6) < 0.1 * best_mb


# (crash point, the checkpoint files right after the kill: proof that the kill landed there). Each step
# resumes the previous step's run folder; epochs are 0-based. Every epoch of this run improves on validation,
# so each epoch saves best.pt then last.pt: checkpoint_* hits 1, 2 are epoch e's, hits 3, 4 epoch e+1's.
KILL_STEPS = [
    # 2nd batch of epoch 1 (6th batch of the run): epoch 0 is on disk, nothing of epoch 1
    ("train_batch:6", {"last": 0, "prev": None, "best": 0, "tmp": []}),
    # resumed at epoch 1; killed while saving its last.pt, after rotating the old one: last.pt is absent
    ("checkpoint_rotated:2", {"last": None, "prev": 0, "best": 1, "tmp": [".last.pt.*.tmp"]}),
    # resumed from last.prev.pt at epoch 1; epoch 1 saved, killed with epoch 2's last.pt in its temp file
    ("checkpoint_write:4", {"last": 1, "prev": 0, "best": 2, "tmp": [".last.pt.*.tmp"]}),
]


@pytest.mark.slow
def test_kill_9_at_each_moment_then_resume_gives_the_uninterrupted_run(cache, full_run, tmp_path):
    out = tmp_path / "run"
    folder = out / "fold1" / "checkpoints"
    for step, (point, expected) in enumerate(KILL_STEPS):
        result = run_train(cache, out, *(["--resume"] if step else []), crash_at=point)
        assert result.returncode == -9, f"{point}: exit {result.returncode}\n{result.stderr[-3000:]}"
        seen = checkpoint_files(out)
        # one temp file at most: the one this kill interrupted (a stale one of the step before is gone)
        assert {**seen, "tmp": len(seen["tmp"])} == {**expected, "tmp": len(expected["tmp"])}, (point, seen)
        assert not (out / "summary.json").exists(), point

    # last.pt (epoch 1) cut in half: resume names it, falls back to last.prev.pt (epoch 0) and replays epoch 1.
    # Kill that resume right after its first last.pt rotation: the damaged file must not replace the good one.
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    result = run_train(cache, out, "--resume", crash_at="checkpoint_rotated:2")
    assert result.returncode == -9, result.stderr[-3000:]
    assert f"{last}: cannot load checkpoint" in result.stderr and f"using the previous good checkpoint {folder / 'last.prev.pt'}" in result.stderr, result.stderr[-3000:]
    assert checkpoint_files(out)["prev"] == 0, checkpoint_files(out)   # still the good epoch 0

    result = run_train(cache, out, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch 1" in result.stderr, result.stderr[-3000:]
    assert not list(folder.glob(".*.tmp")), list(folder.iterdir())
    assert_same_run(full_run, out)


def assert_same_run(full: Path, resumed: Path) -> None:
    """summary.json (less timings), predictions.csv, per-epoch metrics and the best weights: all identical."""
    a, b = (without_timings(json.loads((r / "summary.json").read_text())) for r in (full, resumed))
    assert a["folds"] == b["folds"] and a["mean"] == b["mean"], (a["folds"], b["folds"])
    pa, pb = (pd.read_csv(r / "predictions.csv") for r in (full, resumed))
    diff = (pa.filter(like="prob_") - pb.filter(like="prob_")).abs().to_numpy()
    assert pa.equals(pb), f"predictions differ: max {diff.max()}, mean {diff.mean()}"
    ma, mb = ([without_timings(json.loads(line)) for line in (r / "fold1" / "metrics.jsonl").read_text().splitlines()]
              for r in (full, resumed))
    assert ma == mb and len(ma) == EPOCHS, (ma, mb)
    wa, wb = (torch.load(r / "fold1" / "checkpoints" / "best.pt", weights_only=True)["model"] for r in (full, resumed))
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"best.pt weights differ by up to {worst}"


# ---------------------------------------------------------------------------------------------------
# Hostile pickles: files whose unpickling would run `touch MARKER`
# ---------------------------------------------------------------------------------------------------


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_hostile(path: Path, marker: Path, *, zip_format: bool = True) -> Path:
    """A torch.save zip (the format of a real checkpoint) or a bare pickle, holding the payload next to weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": {"w": torch.zeros(2)}, "epoch": 0, "evil": Payload(marker)}
    if zip_format:
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    return path


def test_the_payload_is_live(tmp_path):
    """Guard: unpickling these files really would create the marker, so its absence below means something."""
    for zip_format in (True, False):
        marker = tmp_path / f"live-{zip_format}"
        path = write_hostile(tmp_path / f"x-{zip_format}.pt", marker, zip_format=zip_format)
        torch.load(path, weights_only=False) if zip_format else pickle.loads(path.read_bytes())  # noqa: S301
        assert marker.exists()


@pytest.mark.slow   # full_run (above) and a resume CLI run
def test_hostile_last_checkpoint_is_refused_on_resume(cache, full_run, tmp_path):
    """Both last.pt and last.prev.pt hostile: the CLI stops with an error naming both; nothing runs."""
    out = tmp_path / "run"
    shutil.copytree(full_run, out, ignore=shutil.ignore_patterns("*.pt", "summary.json"))
    marker = tmp_path / "MARKER"
    folder = out / "fold1" / "checkpoints"
    write_hostile(folder / "last.pt", marker)
    write_hostile(folder / "last.prev.pt", marker, zip_format=False)
    result = run_train(cache, out, "--resume")
    assert result.returncode != 0
    assert "error: no loadable checkpoint" in result.stderr, result.stderr[-3000:]
    assert f"{folder / 'last.pt'}: refused: the file holds Python objects" in result.stderr, result.stderr[-3000:]
    assert f"{folder / 'last.prev.pt'}: refused: the file holds Python objects" in result.stderr, result.stderr[-3000:]
    assert not marker.exists()


@pytest.mark.slow   # full_run (above)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # torch's note on the bare pickle, before it refuses
@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-save-zip", "bare-pickle"])
def test_hostile_best_checkpoint_is_refused_by_predict_and_export(full_run, tmp_path, zip_format, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run, run, ignore=shutil.ignore_patterns("*.pt"))
    marker = tmp_path / "MARKER"
    write_hostile(run / "fold1" / "checkpoints" / "best.pt", marker, zip_format=zip_format)
    (tmp_path / "clip.mp4").write_bytes(b"never decoded: the model is refused first")
    assert mmfer_main(["predict", str(tmp_path / "clip.mp4"), "--run", str(run), "--device", "cpu"]) == 2
    assert "best.pt: refused: the file holds Python objects" in capsys.readouterr().err
    assert mmfer_main(["export", "--run", str(run), "--out", str(tmp_path / "exported")]) == 2
    assert "best.pt: refused: the file holds Python objects" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_checkpoint(run / "fold1" / "checkpoints" / "best.pt")
    assert not marker.exists()


def test_branch_weights_load_only_as_safetensors(cache, tmp_path, capsys):
    """A pickle given as --audio-branch (a file, or <run>/<fold>/audio_branch.safetensors) is refused unread."""
    marker = tmp_path / "MARKER"
    as_file = write_hostile(tmp_path / "branch.pt", marker)
    as_run = tmp_path / "stage1"
    write_hostile(as_run / "fold1" / "audio_branch.safetensors", marker)
    for source in (as_file, as_run):
        argv = train_cmd(cache, tmp_path / f"out-{source.name}", "--audio-branch", str(source))[3:]
        assert mmfer_main(argv) == 2
        assert re.search(r"(audio_branch\.safetensors|branch\.pt): not a safetensors file", capsys.readouterr().err)
    assert not marker.exists()
