"""HDF5 export (`mmfer cache-export`): the same store read through the same interface, checksummed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_store import AUDIO_FP, FAILED_VIDEO_CLIP, NO_AUDIO_CLIP, VIDEO_FP, make_store, write_fold_file
from train_helpers import tiny_config

from mmfer.pipeline.bundle import feature_records
from mmfer.core.store import ClipStatus, CorruptClipError, StoreError, open_store
from mmfer.core.store_export import export_h5
from mmfer.core.store_verify import verify_store
from mmfer.train.loop import train


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("h5")
    zarr_path = make_store(root / "cache", repetitions=1)
    h5_path = root / "cache.h5"
    export_h5(zarr_path, h5_path)
    return zarr_path, h5_path, write_fold_file(root / "folds.json")


def mmfer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmfer.pipeline.cli", *map(str, args)], capture_output=True, text=True)


def test_export_holds_the_same_clips_attributes_and_statuses(stores):
    zarr_path, h5_path, _ = stores
    source, copy = open_store(zarr_path), open_store(h5_path)
    assert copy.clip_ids == source.clip_ids and copy.attrs == source.attrs
    for modality, fp in (("video", VIDEO_FP), ("audio", AUDIO_FP)):
        a, b = source.entry(modality), copy.entry(modality, fp)
        assert b.attrs == a.attrs and b.array_specs == a.array_specs
        assert (b.statuses() == a.statuses()).all() and b.reasons() == a.reasons() and b.sources() == a.sources()
        for index, clip_id in enumerate(source.clip_ids):
            if a.statuses()[index] == ClipStatus.DONE:
                x, y = a.read_clip(clip_id), b.read_clip(clip_id)
                assert all(np.array_equal(x[k], y[k]) and x[k].dtype == y[k].dtype for k in x)
    assert copy.entry("video").statuses()[copy.index_of(FAILED_VIDEO_CLIP)] == ClipStatus.FAILED
    assert copy.entry("audio").statuses()[copy.index_of(NO_AUDIO_CLIP)] == ClipStatus.MISSING
    with pytest.raises(StoreError, match="not DONE"):
        copy.entry("video").read_clip(FAILED_VIDEO_CLIP)
    fingerprints = {"video": VIDEO_FP, "audio": AUDIO_FP}   # what `predict --run RUN --cache FILE.h5` reads
    assert feature_records(h5_path, fingerprints) == feature_records(zarr_path, fingerprints)


@pytest.mark.slow   # two short training runs (~40 s on 2 shared cores)
def test_same_training_from_zarr_and_from_its_h5_export(stores, tmp_path):
    zarr_path, h5_path, folds = stores
    summaries = []
    for cache in (zarr_path, h5_path):
        cfg = tiny_config(cache, folds, tmp_path / cache.name, variant=None, seed=3, preload="no", epochs=2, warmup=1)
        summaries.append(train(cfg))
    assert summaries[0]["folds"] == summaries[1]["folds"]
    assert summaries[0]["mean"] == summaries[1]["mean"]
    # the commands that read a run's cache read the .h5 as well: robustness on the run made from it, and
    # cross-corpus evaluation of the Zarr-made run on the .h5 (the same clips: every clip scored)
    done = mmfer("evaluate", "--run", tmp_path / h5_path.name, "--corrupt", "no-audio", "--out", tmp_path / "robust",
                 "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    robust = (tmp_path / "robust" / "robustness.csv").read_text()
    assert "no-audio" in robust and f"fold1,clean,fusion,{summaries[1]['folds']['fold1']['f1_macro']}" in robust
    done = mmfer("evaluate", "--run", tmp_path / zarr_path.name, "--cache", h5_path, "--out", tmp_path / "other",
                 "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "other" / "metrics.json").read_text())["num_left_out"] == 0


@pytest.mark.slow   # export, info and verify CLI processes (~40 s on 2 shared cores)
def test_cli_export_info_and_verify_read_the_h5(stores, tmp_path):
    zarr_path, _, _ = stores
    out = tmp_path / "shared.h5"
    done = mmfer("cache-export", zarr_path, "--h5", out)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    info = mmfer("cache-info", out, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["clips"] == json.loads(mmfer("cache-info", zarr_path, "--json").stdout)["clips"]
    ok = mmfer("verify", out)
    assert ok.returncode == 0 and "0 damaged" in ok.stdout, ok.stdout + ok.stderr
    again = mmfer("cache-export", zarr_path, "--h5", out)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr


def test_a_flipped_byte_in_a_clip_chunk_is_caught(stores, tmp_path):
    import h5py

    zarr_path, _, _ = stores
    path = tmp_path / "flip.h5"
    export_h5(zarr_path, path)
    store = open_store(path)
    clip_id = store.clip_ids[0]
    with h5py.File(path, "r") as handle:
        info = handle["video"][VIDEO_FP]["tokens"].id.get_chunk_info_by_coord((store.index_of(clip_id), 0, 0, 0))
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset + info.size // 2)
        byte = handle.read(1)
        handle.seek(info.byte_offset + info.size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptClipError, match=clip_id):
        open_store(path).entry("video").read_clip(clip_id)
    report = verify_store(path)
    assert not report.ok and report.damaged[0][:2] == ("video", clip_id)
    failed = mmfer("verify", path)
    assert failed.returncode == 1 and clip_id in failed.stdout
