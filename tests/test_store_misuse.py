"""A damaged or mismatched cache, read the way train/ reads it (open_store -> entry -> read_clip): a
clear error naming the problem and the clip, never silent garbage. Each test damages a copy of the
real demo cache (conftest.demo_cache)."""

import json
import shutil

import numpy as np
import pytest
from extract_helpers import extract_config

from mmfer.data.ravdess import scan_ravdess
from mmfer.extract.run import extract_all
from mmfer.core.store import ClipStatus, CorruptClipError, StoreError, open_store
from mmfer.core.store.verify import verify_store


@pytest.fixture
def cache(tmp_path, demo_cache):
    copy = tmp_path / "cache"
    shutil.copytree(demo_cache, copy)
    return copy


def flip_byte(path, at=None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_other_schema_version_is_refused(cache):
    meta = json.loads((cache / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 2
    (cache / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"schema v2, this code reads v1; re-run extract"):
        open_store(cache)


def test_mixed_fingerprints_must_be_chosen(cache):
    store = open_store(cache)
    (fp,) = store.fingerprints("video")
    shutil.copytree(cache / "video" / fp, cache / "video" / "0123456789abcdef")
    store = open_store(cache)
    with pytest.raises(StoreError, match=rf"2 \(0123456789abcdef, {fp}\); choose one with --video-entry"):
        store.entry("video")
    clip_id = store.clip_ids[0]
    assert store.entry("video", fp).read_clip(clip_id)["tokens"].shape == (16, 196, 64)
    with pytest.raises(StoreError, match="no video entry with fingerprint ffffffffffffffff"):
        store.entry("video", "ffffffffffffffff")


def test_missing_array_is_named(cache):
    (fp,) = open_store(cache).fingerprints("video")
    shutil.rmtree(cache / "video" / fp / "pooled")
    with pytest.raises(StoreError, match=rf"video/{fp}.*pooled"):
        open_store(cache).entry("video")


def test_broken_metadata_file_is_named(cache):
    (fp,) = open_store(cache).fingerprints("audio")
    (cache / "audio" / fp / "zarr.json").write_text('{"zarr_format": 3, "node_')
    with pytest.raises(StoreError, match=rf"audio/{fp}/zarr.json"):
        open_store(cache).entry("audio")


def test_done_clip_without_its_chunk_is_caught_repaired_and_redone(cache, demo_root, tiny_models):
    store = open_store(cache)
    clip_id = store.clip_ids[3]
    audio = store.entry("audio")
    audio.clip_chunk_files(3)[0].unlink()
    with pytest.raises(CorruptClipError, match=rf"clip {clip_id}: marked done but audio/tokens has no data chunk"):
        audio.read_clip(clip_id)
    report = verify_store(cache, repair=True)
    assert [(m, c) for m, c, _ in report.damaged] == [("audio", clip_id)], report.format()
    assert open_store(cache).entry("audio").statuses()[3] == ClipStatus.FAILED
    summary = extract_all(extract_config(demo_root, cache, tiny_models), scan_ravdess(demo_root))
    assert summary.num_done == 1 and summary.num_skipped == 31, summary.format()
    assert verify_store(cache).ok


@pytest.mark.parametrize("modality, array", [("video", "tokens"), ("video", "boxes"), ("audio", "length")])
def test_flipped_byte_in_a_chunk_is_caught(cache, modality, array):
    store = open_store(cache)
    clip_id = store.clip_ids[7]
    entry = store.entry(modality)
    names = list(entry.array_specs)
    flip_byte(entry.clip_chunk_files(7)[names.index(array)])
    with pytest.raises(CorruptClipError, match=rf"clip {clip_id}: {modality}/{array} is damaged"):
        open_store(cache).entry(modality).read_clip(clip_id)
    report = verify_store(cache)
    assert [(m, c) for m, c, _ in report.damaged] == [(modality, clip_id)], report.format()


def test_empty_chunk_file_is_caught(cache):
    store = open_store(cache)
    clip_id = store.clip_ids[2]
    store.entry("video").clip_chunk_files(2)[1].write_bytes(b"")
    with pytest.raises(CorruptClipError, match=rf"clip {clip_id}: video/pooled is damaged"):
        open_store(cache).entry("video").read_clip(clip_id)


def test_flipped_byte_in_a_status_chunk_is_named(cache):
    """The status of one clip is its own chunk: damage there must name that clip, and other clips still read."""
    store = open_store(cache)
    clip_id = store.clip_ids[5]
    (fp,) = store.fingerprints("video")
    flip_byte(cache / "video" / fp / "status" / "c" / "5", at=0)
    video = open_store(cache).entry("video")
    with pytest.raises(CorruptClipError, match=rf"clip {clip_id}: video/status is damaged"):
        video.read_clip(clip_id)
    assert np.isfinite(video.read_clip(store.clip_ids[4])["pooled"].astype(np.float32)).all()
    report = verify_store(cache)
    assert [(m, c) for m, c, _ in report.damaged] == [("video", clip_id)], report.format()
