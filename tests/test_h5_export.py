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
from mmfer.core.store.export import export_h5
from mmfer.core.store.verify import verify_store
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


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
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


@pytest.mark.slow   # its module's fixture trains or exports a store: seconds on two shared cores
def test_both_backends_answer_one_reading_interface_and_share_no_class(stores):
    """A Zarr store and its HDF5 export, opened by open_store, each answer every member of the
    reading interface (reading.py's StoreReader, EntryReader); the HDF5 classes no longer subclass the Zarr ones."""
    from mmfer.core.store import EntryReader, FeatureEntry, FeatureStore, StoreReader
    from mmfer.core.store.h5_store import H5Entry, H5Store

    zarr_path, h5_path, _ = stores
    for path, classes in ((zarr_path, (FeatureStore, FeatureEntry)), (h5_path, (H5Store, H5Entry))):
        store = open_store(path)
        entry = store.entry("video", VIDEO_FP)
        assert (type(store), type(entry)) == classes
        for obj, protocol in ((store, StoreReader), (entry, EntryReader)):
            members = {n for n in dir(protocol) if not n.startswith("_")} | set(protocol.__annotations__)
            assert len(members) > 6 and not [n for n in members if not hasattr(obj, n)], (path, protocol)
    assert set(H5Entry.__mro__) & set(FeatureEntry.__mro__) == {object}
    assert set(H5Store.__mro__) & set(FeatureStore.__mro__) == {object}


@pytest.mark.slow   # its module's fixture trains or exports a store: seconds on two shared cores
def test_export_metadata_are_hdf5_attributes_too(stores, tmp_path):
    """h5dump -A and HDFView show an export's metadata: the root's and each entry's attributes
    as HDF5 attributes (strings and numbers as they are, anything else as JSON text), beside the checksummed
    `attrs` datasets the reader trusts; an export made before (the datasets only) still opens alike."""
    import shutil

    import h5py

    def readable(value, stored):   # a string or number as it is, anything else (dict, list, None) as JSON text
        return stored == (value if isinstance(value, (str, int, float)) else json.dumps(value, sort_keys=True))

    zarr_path, h5_path, _ = stores
    source = open_store(zarr_path)
    groups = {"/": source.attrs} | {f"{m}/{fp}": source.entry(m, fp).attrs for m, fp in (("video", VIDEO_FP), ("audio", AUDIO_FP))}
    with h5py.File(h5_path, "r") as handle:
        assert handle.attrs["schema_version"] == 1 and isinstance(handle["video"][VIDEO_FP].attrs["fingerprint"], str)
        for name, attrs in groups.items():
            got = {k: (v.item() if hasattr(v, "item") else v) for k, v in handle[name].attrs.items()}
            assert set(got) == set(attrs) and all(readable(attrs[k], got[k]) for k in attrs), name
        assert json.loads(handle["video"][VIDEO_FP].attrs["arrays"]) == groups[f"video/{VIDEO_FP}"]["arrays"]   # a dict
    old = tmp_path / "before-attributes.h5"   # what cache-export wrote before: the same file without the attributes
    shutil.copy(h5_path, old)
    with h5py.File(old, "r+") as handle:
        for name in groups:
            for key in list(handle[name].attrs):
                del handle[name].attrs[key]
    copy = open_store(old)
    assert copy.attrs == source.attrs and copy.clip_ids == source.clip_ids
    for modality, fp in (("video", VIDEO_FP), ("audio", AUDIO_FP)):
        entry = copy.entry(modality, fp)
        assert entry.attrs == groups[f"{modality}/{fp}"] and (entry.statuses() == source.entry(modality).statuses()).all()
        done = source.clip_ids[int(np.flatnonzero(entry.statuses() == ClipStatus.DONE)[0])]
        assert all(np.array_equal(v, source.entry(modality).read_clip(done)[k]) for k, v in entry.read_clip(done).items())
    assert verify_store(old).ok


def test_a_clip_table_too_long_for_an_attribute_stays_in_the_dataset(tmp_path):
    """A real dataset's clip table (1,440 RAVDESS rows, over 64 KiB of JSON: HDF5's dense attribute storage, which
    older readers lack) is left out of the attributes, whole in the `attrs` dataset; the export reads back every clip."""
    import h5py
    import pandas as pd

    from mmfer.core.store import create_store

    table = pd.DataFrame({"clip_id": [f"clip-{i:05d}" for i in range(1440)], "label": [i % 8 for i in range(1440)],
                          "path": [f"Actor_{i % 24:02d}/clip-{i:05d}.mp4" for i in range(1440)]})
    create_store(tmp_path / "cache", table, {"dataset": "ravdess"})
    export_h5(tmp_path / "cache", tmp_path / "big.h5")
    with h5py.File(tmp_path / "big.h5", "r") as handle:
        assert "clip_table" not in handle.attrs and handle.attrs["dataset"] == "ravdess"
    assert open_store(tmp_path / "big.h5").clip_ids == list(table["clip_id"])


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


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
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
