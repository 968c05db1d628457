"""The finished studies under benchmarks/, run as a user runs them: a script on a real extracted store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import tiny_config

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_token_size_study_measures_each_option(demo_cache, tmp_path):
    out = tmp_path / "sizes.json"
    printed = run_script("token_size_study.py", "--store", demo_cache, "--clips", 4, "--json", out)
    options = {row["option"]: row for row in json.loads(out.read_text())}
    full, pooled = options["--token-pool 1 --token-dtype float"], options["--token-pool 2 --token-dtype float"]
    assert full["relative_error"] == 0 and pooled["token_bytes_per_clip"] * 4 == full["token_bytes_per_clip"]
    assert 0 < options["--token-pool 1 --token-dtype int8"]["relative_error"] < 0.01 and 0 < pooled["relative_error"] < 1
    assert all(option in printed for option in options)


def test_reader_comparison_reads_zarr_and_its_hdf5_export(demo_cache, tmp_path):
    out = tmp_path / "readers.json"
    printed = run_script("reader_comparison.py", "--store", demo_cache, "--clips", 4, "--work-dir", tmp_path,
                         "--json", out)
    rows = json.loads(out.read_text())
    readers = ("zarr-python", "hdf5 (h5py)")
    assert {(r["reader"], r["readers"], r["cache"]) for r in rows} == {
        (name, n, cache) for name in readers for n in (1, 2) for cache in ("cold", "warm")}
    assert all(r["mb_per_s"] > 0 and r["clips_per_s"] > 0 for r in rows)
    lines = printed.strip().splitlines()
    assert len(lines) == 5 and lines[1].split()[:2] == ["zarr-python", "1"]


@pytest.mark.slow   # a tiny training and three predict processes: ~40 s on 2 cores
def test_stream_memory_measures_a_run_named_by_a_relative_folder(demo_cache, tmp_path):
    """The script's predict children run in a temporary folder of their own: a relative --run (as a user types
    it from where they trained) must still name the run, and each file gets its line and the ratio is printed."""
    from mmfer.train.loop import train

    fold_file = tmp_path / "folds.json"
    fold_file.write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]}]))
    train(tiny_config(demo_cache, fold_file, tmp_path / "run", variant=None, seed=0, epochs=1, warmup=1, batch_size=4))
    done = subprocess.run([sys.executable, str(BENCHMARKS / "stream_memory.py"), "--run", "run", "--fold", "1",
                           "--minutes", "0.1", "0.2", "--window", "2", "--hop", "2", "--window-file"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["stream 0.1 min", "stream 0.2 min", "peak RSS ratio 0.2 min / 0.1 min",
                                                     "--window FILE 0.1 min"], lines
    assert lines[0].split(": ")[1].startswith("3 windows") and lines[1].split(": ")[1].startswith("6 windows"), lines
