"""`extract` end to end on real demo mp4 files with the tiny encoders: what lands in the store is the
encoders' real output, reruns skip, bad files fail alone, another preprocessing never mixes in."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from extract_helpers import extract_config

from mmfer.data.ravdess import scan_ravdess
from mmfer.extract.encoders.parakeet import load_audio_encoder
from mmfer.extract.decode import decode_clip
from mmfer.extract.facecrop import crop_faces
from mmfer.extract.run import Decoding, _decoding_for, _likely_todo, decode_jobs, extract_all
from mmfer.extract.encoders.siglip import load_image_processor, load_visual_encoder
from mmfer.core.store import ClipStatus, StoreError, open_store


def test_shapes_dtypes_and_timestamps(demo_cache):
    store = open_store(demo_cache)
    video, audio = store.entry("video"), store.entry("audio")
    assert (video.statuses() == ClipStatus.DONE).all() and (audio.statuses() == ClipStatus.DONE).all()
    clip = video.read_clip(store.clip_ids[0])
    assert clip["tokens"].shape == (16, 196, 64) and clip["tokens"].dtype == np.float16
    assert clip["pooled"].shape == (16, 64) and clip["boxes"].shape == (16, 4)
    ts = clip["timestamps_s"]
    assert ts.dtype == np.float32 and np.all(np.diff(ts) > 0) and 0 <= ts[0] and ts[-1] <= 1.5
    sound = audio.read_clip(store.clip_ids[0])
    length = int(sound["length"])
    assert abs(length - 1.5 / 0.08) <= 2, length                    # 80 ms per encoder frame
    assert np.abs(sound["tokens"][:length]).sum() > 0 and not sound["tokens"][length:].any()
    assert video.attrs["encoder"]["weights_sha256"] and video.attrs["face_crop"] == "center"


def test_cache_holds_the_real_encoder_output(demo_cache, demo_root, tiny_models):
    store = open_store(demo_cache)
    clip_id = store.clip_ids[5]
    path = store.clip_table.set_index("clip_id").loc[clip_id, "path"]
    cfg = extract_config(demo_root, demo_cache, tiny_models)
    decoded = decode_clip(path, num_frames=cfg.num_frames, sample_rate_hz=cfg.sample_rate_hz,
                          timeout_s=cfg.decode_timeout_s, max_audio_s=cfg.max_audio_s)
    visual = load_visual_encoder(str(tiny_models / "tiny-siglip-vision"))
    tokens, pooled = visual.encode(crop_faces(decoded.frames, "center").crops)
    cached = store.entry("video").read_clip(clip_id)
    diff = np.abs(cached["tokens"].astype(np.float32) - tokens.numpy())
    assert diff.max() < 2e-2, f"max diff {diff.max():.4g}, mean {diff.mean():.4g}"
    np.testing.assert_allclose(cached["pooled"].astype(np.float32), pooled.numpy(), atol=2e-2)
    audio_encoder = load_audio_encoder(str(tiny_models / "tiny-fastconformer-ctc"))
    (frames,) = audio_encoder.encode([decoded.audio])
    sound = store.entry("audio").read_clip(clip_id)
    got = sound["tokens"][: int(sound["length"])].astype(np.float32)
    diff = np.abs(got - frames)
    assert got.shape == frames.shape and diff.max() < 2e-2, f"max diff {diff.max():.4g}, mean {diff.mean():.4g}"


def test_rerun_skips_everything(demo_cache, demo_root, tiny_models):
    summary = extract_all(extract_config(demo_root, demo_cache, tiny_models), scan_ravdess(demo_root))
    assert summary.num_skipped == 32 and summary.num_done == 0 and summary.num_failed == 0


def test_early_decoding_follows_the_guess_then_the_real_clips_to_do(tmp_path, demo_root, demo_cache, tiny_models):
    """extract starts decoding before the encoders load, on a guess: all clips for a new store, none for a
    finished one; when the clips to do turn out otherwise, it decodes those instead of the guessed ones."""
    clips = scan_ravdess(demo_root)
    assert len(_likely_todo(extract_config(demo_root, tmp_path / "new", tiny_models), clips)) == len(clips)
    assert len(_likely_todo(extract_config(demo_root, demo_cache, tiny_models), clips)) == 0
    cfg = extract_config(demo_root, tmp_path / "new", tiny_models, batch_size=2)
    processor = load_image_processor(str(tiny_models / "tiny-siglip-vision"), revision=None)
    guessed, real = decode_jobs(clips.head(3), cfg), decode_jobs(clips.iloc[3:6], cfg)
    right = Decoding(real, processor, cfg)   # the guess was right: its batches are the ones read
    with _decoding_for(real, right, processor, cfg) as batches:
        assert batches is right.batches
    wrong = Decoding(guessed, processor, cfg)   # the guess was wrong: the real clips are decoded afresh
    with _decoding_for(real, wrong, processor, cfg) as batches:
        assert [item.clip_id for batch in batches for item in batch] == list(clips["clip_id"][3:6])


@pytest.mark.slow
def test_partial_run_then_rerun_equals_one_run(tmp_path, demo_root, demo_cache, tiny_models):
    out = tmp_path / "cache"
    manifest = scan_ravdess(demo_root)
    first = extract_all(extract_config(demo_root, out, tiny_models, limit=9), manifest)
    assert first.num_done == 9
    second = extract_all(extract_config(demo_root, out, tiny_models), manifest)
    assert second.num_skipped == 9 and second.num_done == 23
    ours, reference = open_store(out), open_store(demo_cache)
    for modality in ("video", "audio"):
        a, b = ours.entry(modality), reference.entry(modality)
        assert a.fingerprint == b.fingerprint
        for clip_id in ours.clip_ids:
            for name, value in a.read_clip(clip_id).items():
                np.testing.assert_allclose(value.astype(np.float32), b.read_clip(clip_id)[name].astype(np.float32),
                                           atol=2e-3, err_msg=f"{modality}/{name} of {clip_id}")


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_bad_file_fails_alone_and_other_preprocessing_is_refused(tmp_path, demo_root, tiny_models):
    root = tmp_path / "data"
    shutil.copytree(demo_root / "Actor_01", root / "Actor_01")
    bad = root / "Actor_01" / "01-01-08-02-02-02-01.mp4"
    bad.write_bytes(os.urandom(5000))
    manifest = scan_ravdess(root)
    out = tmp_path / "cache"
    summary = extract_all(extract_config(root, out, tiny_models), manifest)
    assert summary.num_failed == 1 and summary.num_done == len(manifest) - 1
    (clip_id, path, reason), = summary.failures
    assert clip_id == bad.stem and "ffmpeg-error" in reason and str(bad) in reason
    statuses = open_store(out).entry("video").statuses()
    assert sorted(statuses.tolist()).count(ClipStatus.FAILED) == 1
    with pytest.raises(StoreError, match="--overwrite"):
        extract_all(extract_config(root, out, tiny_models, face_crop="none"), manifest)
    replaced = extract_all(extract_config(root, out, tiny_models, face_crop="none", overwrite=True, limit=2), manifest)
    assert replaced.num_done == 2
    assert open_store(out).entry("video").attrs["face_crop"] == "none"


@pytest.mark.slow
def test_tiny_preset_runs_with_the_network_blocked(tmp_path, demo_root, tiny_models):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(textwrap.dedent("""
        import socket
        def _blocked(*args, **kwargs):
            raise OSError("network blocked by the test")
        socket.socket.connect = _blocked
        socket.create_connection = _blocked
    """))
    env = {**os.environ, "PYTHONPATH": str(guard), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mmfer.pipeline.cli", "extract", "--root", str(demo_root), "--out", str(tmp_path / "c"),
         "--preset", "tiny", "--models-dir", str(tmp_path / "fresh_models"), "--limit", "2", "--num-workers", "0"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 done" in result.stdout


def test_the_stores_clip_table_is_the_manifest(demo_root, demo_cache):
    """One column list (data/manifest.py): what `build_manifest` returns is what the store keeps."""
    from mmfer.data.datasets import build_manifest
    from mmfer.data.manifest import MANIFEST_COLUMNS
    from mmfer.core.config import ExtractConfig
    from mmfer.core.store import open_store

    manifest = build_manifest(ExtractConfig(root=str(demo_root)))
    table = open_store(demo_cache).clip_table
    assert tuple(manifest.columns) == MANIFEST_COLUMNS == tuple(table.columns)
    # a missing value is missing on both sides (pandas 2 reads the stored table's nulls as None, 3 as NaN)
    assert table.fillna("").astype(str).equals(manifest.fillna("").astype(str))


def test_same_weights_in_another_models_dir_resume_and_a_refusal_names_the_setting(tmp_path, demo_root, tiny_models):
    manifest = scan_ravdess(demo_root)
    out = tmp_path / "cache"
    assert extract_all(extract_config(demo_root, out, tiny_models, limit=2), manifest).num_done == 2
    moved = tmp_path / "moved_models"
    shutil.copytree(tiny_models, moved)
    again = extract_all(extract_config(demo_root, out, moved, limit=3), manifest)
    assert again.num_skipped == 2 and again.num_done == 1
    assert open_store(out).entry("video").attrs["encoder"]["name"] == str(tiny_models / "tiny-siglip-vision")
    with pytest.raises(StoreError, match=r"face_crop \(--face-crop\): 'center' -> 'none'.*--overwrite"):
        extract_all(extract_config(demo_root, out, moved, limit=3, face_crop="none"), manifest)


def test_entries_record_the_extractor_version_sampling_rule_and_detector_constants(demo_cache, tmp_path):
    from mmfer.extract.decode import AUDIO_MIX, FRAME_SAMPLING
    from mmfer.extract.facecrop import MIN_FACE_PX, SMOOTH_WINDOW
    from mmfer.extract.run import EXTRACTOR_VERSION, decode_params, fingerprint

    store = open_store(demo_cache)
    video, audio = store.entry("video"), store.entry("audio")
    assert video.attrs["extractor_version"] == audio.attrs["extractor_version"] == EXTRACTOR_VERSION
    assert video.attrs["frame_sampling"] == FRAME_SAMPLING and audio.attrs["audio_mix"] == AUDIO_MIX
    assert "face_detector" not in video.attrs   # the demo cache is center-cropped: no detector in play
    assert fingerprint({k: v for k, v in video.attrs.items() if k not in ("modality", "fingerprint", "arrays")}) \
        == video.fingerprint
    detect = decode_params("video", extract_config(tmp_path, tmp_path / "c", tmp_path, face_crop="detect"))
    assert detect["face_detector"]["min_face_px"] == MIN_FACE_PX
    assert detect["face_detector"]["smooth_window"] == SMOOTH_WINDOW
    assert fingerprint({**detect, "extractor_version": EXTRACTOR_VERSION + 1}) != fingerprint(detect)


@pytest.mark.slow
def test_stored_features_do_not_depend_on_batch_size_or_thread_count(tmp_path, tiny_models):
    """Clips of different lengths give the same bytes at batch size 1 and 4 (audio is never padded to
    a batch-mate's length), and with 1 or 2 intra-op threads in the process (extract encodes with
    ENCODE_THREADS, recorded in each entry)."""
    import torch
    from extract_helpers import assert_same_store, write_varied_manifest

    from mmfer.data.datasets import build_manifest

    manifest = write_varied_manifest(tmp_path / "clips")
    before = torch.get_num_threads()
    stores = {}
    try:
        for name, batch_size, threads in (("bs1-t1", 1, 1), ("bs4-t1", 4, 1), ("bs1-t2", 1, 2)):
            torch.set_num_threads(threads)
            cfg = extract_config("", tmp_path / name, tiny_models, dataset="manifest", manifest=str(manifest),
                                 batch_size=batch_size)
            assert extract_all(cfg, build_manifest(cfg)).num_done == 6
            assert torch.get_num_threads() == threads   # restored after encoding
            stores[name] = tmp_path / name
    finally:
        torch.set_num_threads(before)
    store = open_store(stores["bs1-t1"])
    lengths = [int(store.entry("audio").read_clip(c, ("length",))["length"]) for c in store.clip_ids]
    assert len(set(lengths)) == 6, lengths   # six different audio lengths
    assert_same_store(stores["bs4-t1"], stores["bs1-t1"])
    assert_same_store(stores["bs1-t2"], stores["bs1-t1"])
    from mmfer.extract.run import ENCODE_THREADS
    assert store.entry("audio").attrs["encode_threads"] == store.entry("video").attrs["encode_threads"] == ENCODE_THREADS
