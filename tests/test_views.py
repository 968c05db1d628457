"""Augmented views at extraction (`extract --views K`) and `training.view_sampling`.

Fast: the view functions on real pixels and a real ffmpeg run, the store's view arrays (write, read,
verify, HDF5 export) and the per-epoch view choice. Slow: a real tiny extraction of demo clips with
`--views 2` (views differ, the same bytes on a rerun at another batch size, the disk estimate) and a real
training run whose batches are recorded with a torch hook (training reads stored views, evaluation clean).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from extract_helpers import extract_config
from synthetic_store import make_store, write_fold_file
from train_helpers import tiny_config, train_recording_inputs

from mmfer.extract.views import PITCH_SEMITONES, SNR_DB, TEMPO, audio_view, video_view
from mmfer.core.errors import ConfigError
from mmfer.core.store import TOKEN_SCALE, ArraySpec, ClipStatus, StoreError, create_store, open_store
from mmfer.core.store.export import export_h5
from mmfer.core.store.verify import verify_store
from mmfer.train.dataset import epoch_views

SR = 16_000


# ----------------------------------------------------------------------------------------- view functions

def test_video_views_are_seeded_per_clip_and_view_and_augment_as_recorded():
    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    first, params = video_view(crops, "clip-a", 1)
    again, params_again = video_view(crops, "clip-a", 1)
    assert np.array_equal(first, again) and params == params_again          # same clip and view: same bytes
    assert first.shape == crops.shape and first.dtype == np.uint8
    for other in (video_view(crops, "clip-a", 2), video_view(crops, "clip-b", 1)):
        assert other[1] != params and not np.array_equal(other[0], first)   # another view or clip: another draw
    x0, y0, x1, y1 = params["crop"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and 0.8 <= x1 - x0 <= 1.0
    assert all(0.8 <= params[k] <= 1.2 for k in ("brightness", "contrast", "saturation"))
    flips = [video_view(crops, f"clip-{i}", 1)[1]["hflip"] for i in range(20)]
    assert any(flips) and not all(flips)
    # left half dark, right half bright: a flipped view has them the other way round (the crop keeps >= 80%)
    halves = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    halves[:, :, 32:] = 200
    for i in range(6):
        out, drawn = video_view(halves, f"clip-{i}", 1)
        left, right = out[:, :, :16].mean(), out[:, :, -16:].mean()
        assert (left > right) == drawn["hflip"], drawn


def _peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / SR)[spectrum.argmax()])


def test_audio_views_change_tempo_pitch_and_noise_as_recorded():
    t = np.arange(2 * SR) / SR
    wave = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    for view in (1, 2, 3):
        out, params = audio_view(wave, "clip-a", view, sample_rate_hz=SR, timeout_s=60, path="test.wav")
        again, _ = audio_view(wave, "clip-a", view, sample_rate_hz=SR, timeout_s=60, path="test.wav")
        assert np.array_equal(out, again) and out.dtype == np.float32   # seeded by (clip, view) alone
        assert abs(params["tempo"] - 1) <= TEMPO and abs(params["pitch_semitones"]) <= PITCH_SEMITONES
        assert SNR_DB[0] <= params["snr_db"] <= SNR_DB[1]
        assert len(out) == pytest.approx(len(wave) / params["tempo"], rel=0.02)                 # tempo
        want_hz = 440.0 * 2 ** (params["pitch_semitones"] / 12)
        assert _peak_hz(out) == pytest.approx(want_hz, abs=6.0), params                        # pitch
        assert not np.array_equal(out, audio_view(wave, "clip-b", view, sample_rate_hz=SR, timeout_s=60,
                                                  path="test.wav")[0])


# ----------------------------------------------------------------------------------------- the store

def _views_store(path, num_views: int = 2):
    table = pd.DataFrame({"clip_id": ["a", "b"], "path": ["a.mp4", "b.mp4"], "source": ["1:1", "2:2"]})
    store = create_store(path, table, {"dataset": "test"})
    own = {"tokens": ArraySpec((2, 3, 4), "float16"), "pooled": ArraySpec((2, 4), "float16")}
    entry = store.ensure_entry("video", "f" * 16, {"views": {"num_views": num_views}},
                               {**own, "timestamps_s": ArraySpec((2,), "float32")}, view_arrays=own)
    return store, entry


def _clip(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"tokens": rng.standard_normal((2, 3, 4)), "pooled": rng.standard_normal((2, 4))}


def test_store_keeps_views_beside_the_clean_clip_and_verify_checks_them(tmp_path):
    store, entry = _views_store(tmp_path / "cache")
    clean = {**_clip(0), "timestamps_s": np.array([0.0, 0.5])}
    views = [_clip(1), _clip(2)]
    params = [{"hflip": True}, {"hflip": False}]
    with pytest.raises(ValueError, match="1 video views"):   # a clip is done only with all its views
        entry.write_clip("a", clean, "1:1", view_data=views[:1], view_params=params[:1])
    assert entry.statuses()[0] == ClipStatus.PENDING
    entry.write_clip("a", clean, "1:1", view_data=views, view_params=params)
    assert entry.num_views == 2 and entry.view_params("a") == params
    for view, want in enumerate([clean, *views]):
        got = entry.read_clip("a", view=view)
        assert np.array_equal(got["tokens"], want["tokens"].astype(np.float16))
        assert np.array_equal(got["timestamps_s"], clean["timestamps_s"])   # a view shares the clean timestamps
    with pytest.raises(StoreError, match="no view 3"):
        entry.read_clip("a", view=3)
    # the HDF5 export carries the views and their parameters
    h5 = export_h5(tmp_path / "cache", tmp_path / "cache.h5")["path"]
    h5_entry = open_store(h5).entry("video")
    assert h5_entry.num_views == 2 and h5_entry.view_params("a") == params
    assert np.array_equal(h5_entry.read_clip("a", view=2)["pooled"], views[1]["pooled"].astype(np.float16))
    assert verify_store(h5).ok
    # verify reads every view's chunk: a flipped byte in view 2 of clip a is named
    assert verify_store(tmp_path / "cache").ok
    chunk = entry.clip_chunk_files(0)[-2]   # view_pooled of view 2 (then view_params)
    assert "view_pooled" in str(chunk) and chunk.exists()
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    report = verify_store(tmp_path / "cache")
    assert [(m, c) for m, c, _ in report.damaged] == [("video", "a")] and "view_pooled" in report.damaged[0][2]


def test_h5_export_copies_int8_tokens_and_their_views_as_stored(tmp_path):
    table = pd.DataFrame({"clip_id": ["a"], "path": ["a.mp4"], "source": ["1:1"]})
    store = create_store(tmp_path / "cache", table, {"dataset": "test"})
    own = {"tokens": ArraySpec((2, 3, 4), "int8"), TOKEN_SCALE: ArraySpec((2, 3), "float16")}
    entry = store.ensure_entry("video", "f" * 16, {"views": {"num_views": 1}}, own, view_arrays=own)
    entry.write_clip("a", {"tokens": _clip(0)["tokens"]}, "1:1", view_data=[{"tokens": _clip(1)["tokens"]}],
                     view_params=[{}])
    h5_entry = open_store(export_h5(tmp_path / "cache", tmp_path / "cache.h5")["path"]).entry("video")
    for view in (0, 1):   # int8 tokens dequantized once, on read, from either store
        want = entry.read_clip("a", ("tokens",), view=view)["tokens"]
        assert np.array_equal(h5_entry.read_clip("a", ("tokens",), view=view)["tokens"], want), view


def test_an_entry_without_views_has_none_and_keeps_its_fingerprint():
    from mmfer.extract.run import decode_params
    from mmfer.core.config import ExtractConfig

    for modality in ("video", "audio"):
        assert "views" not in decode_params(modality, ExtractConfig(views=0))   # existing caches stay valid
        assert decode_params(modality, ExtractConfig(views=2))["views"]["num_views"] == 2
    with pytest.raises(ValueError, match="views must be >= 0"):
        ExtractConfig(views=-1)


# ----------------------------------------------------------------------------------------- view sampling

def test_epoch_views_are_uniform_and_seeded_by_seed_epoch_and_clip():
    clip_ids = [f"clip-{i}" for i in range(300)]
    positions = np.arange(300)
    first = epoch_views(clip_ids, positions, seed=7, epoch=0, num_views=2)
    assert np.array_equal(first, epoch_views(clip_ids, positions, seed=7, epoch=0, num_views=2))
    shuffled = np.random.default_rng(0).permutation(positions)   # the order (or a rank's share) changes nothing
    assert np.array_equal(epoch_views(clip_ids, shuffled, seed=7, epoch=0, num_views=2), first[shuffled])
    assert set(first) == {0, 1, 2} and all(np.bincount(first) > 70)
    assert (first != epoch_views(clip_ids, positions, seed=7, epoch=1, num_views=2)).mean() > 0.4
    assert (first != epoch_views(clip_ids, positions, seed=8, epoch=0, num_views=2)).mean() > 0.4


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_uniform_view_sampling_on_a_cache_without_views_is_refused(tmp_path):
    from mmfer.train.loop import train

    make_store(tmp_path / "cache", repetitions=1)
    write_fold_file(tmp_path / "folds.json")
    cfg = tiny_config(tmp_path / "cache", tmp_path / "folds.json", tmp_path / "run", epochs=1,
                      **{"training.view_sampling": "uniform"})
    with pytest.raises(ConfigError, match=r"view_sampling=uniform .* has none; extract with `mmfer extract --views K`"):
        train(cfg)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------- real extraction

SELECT = "01-01-0[1-3]-*"   # 3 emotions x 4 actors of the demo: 12 clips


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory, demo_root, tiny_models):
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    out = tmp_path_factory.mktemp("views") / "cache"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("mmfer.extract.run")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)   # the disk estimate is an INFO line
    try:
        summary = extract_all(extract_config(demo_root, out, tiny_models, views=2, select=SELECT, batch_size=4),
                              scan_ravdess(demo_root))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert summary.num_done == 12 and summary.num_failed == 0, summary.format()
    return out, [r.getMessage() for r in records]


def _done(store) -> list[str]:
    statuses = store.entry("video").statuses()
    return [c for c, s in zip(store.clip_ids, statuses) if s == ClipStatus.DONE]


@pytest.mark.slow   # a tiny extraction of 12 clips x 3 versions, then 4 of them again (~60 s on 2 shared cores)
def test_extract_views_differ_reproduce_at_another_batch_size_and_count_in_the_estimate(views_cache, demo_root,
                                                                                         tiny_models, tmp_path):
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    path, messages = views_cache
    store = open_store(path)
    video, audio = store.entry("video"), store.entry("audio")
    assert video.num_views == audio.num_views == 2
    assert video.attrs["views"]["num_views"] == 2 and "random_resized_crop" in video.attrs["views"]
    for clip_id in _done(store):
        for entry, name in ((video, "tokens"), (video, "pooled"), (audio, "tokens")):
            versions = [entry.read_clip(clip_id, (name,), view=v)[name].astype(np.float32) for v in range(3)]
            for i, j in ((0, 1), (0, 2), (1, 2)):   # every view differs from the clean clip and from the other
                assert np.abs(versions[i] - versions[j]).mean() > 1e-3, (clip_id, entry.modality, name, i, j)
        assert len(video.view_params(clip_id)) == 2 and set(audio.view_params(clip_id)[0]) == {"tempo", "pitch_semitones", "snr_db"}
    # the disk estimate counts the views: clean + 2 views of both modalities, per clip
    per_clip = sum(e.raw_bytes_per_clip() + 2 * e.raw_bytes_per_view() for e in (video, audio))
    estimate = next(m for m in messages if m.startswith("cache size estimate"))
    assert f"12 clips x {per_clip / 1e6:.2f} MB/clip" in estimate, estimate
    assert per_clip > 2.5 * sum(e.raw_bytes_per_clip() for e in (video, audio))
    # a rerun with another batch size (and only some of the clips) writes the same bytes
    again = tmp_path / "again"
    extract_all(extract_config(demo_root, again, tiny_models, views=2, select="01-01-01-*", batch_size=1),
                scan_ravdess(demo_root))
    other = open_store(again)
    assert len(_done(other)) == 4
    for modality in ("video", "audio"):
        a, b = store.entry(modality), other.entry(modality)
        assert a.fingerprint == b.fingerprint
        for clip_id in _done(other):
            assert a.view_params(clip_id) == b.view_params(clip_id)
            for view in range(3):
                x, y = a.read_clip(clip_id, view=view), b.read_clip(clip_id, view=view)
                for name in x:
                    assert np.array_equal(x[name], y[name]), (modality, clip_id, view, name,
                                                               float(np.abs(x[name].astype(float) - y[name]).max()))
    # verify re-reads every view; cache-info shows the count
    assert verify_store(path).ok
    info = subprocess.run([sys.executable, "-m", "mmfer.pipeline.cli", "cache-info", str(path), "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(info.stdout)["num_views"] == 2


@pytest.mark.slow   # two tiny training epochs on the extracted views (~30 s)
def test_uniform_view_sampling_trains_on_stored_views_and_evaluates_clean(views_cache, tmp_path):

    path, _ = views_cache
    (tmp_path / "folds.json").write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]}]))
    cfg = tiny_config(path, tmp_path / "folds.json", tmp_path / "run", epochs=2,
                      **{"training.view_sampling": "uniform", "training.mixup_alpha": 0.0, "training.batch_size": 4})
    seen = train_recording_inputs(cfg)
    assert (tmp_path / "run" / "summary.json").exists()
    video = open_store(path).entry("video")
    stored = {}

    def view_of(clip_id: str, tokens: torch.Tensor) -> int:
        for view in range(3):
            if (clip_id, view) not in stored:
                stored[clip_id, view] = torch.from_numpy(video.read_clip(clip_id, ("tokens",), view=view)["tokens"].astype(np.float32))
            if torch.equal(tokens, stored[clip_id, view]):
                return view
        raise AssertionError(f"{clip_id}: the batch's video tokens are none of the stored views")

    train_batches = seen["train"]
    assert len(train_batches) == 4   # 6 training clips (actors 3, 4) / batch 4, 2 epochs
    chosen = [{c: view_of(c, b["video_tokens"][i]) for i, c in enumerate(b["clip_ids"])} for b in train_batches]
    epoch1 = {**chosen[0], **chosen[1]}
    epoch2 = {**chosen[2], **chosen[3]}
    assert set(epoch1) == set(epoch2) and len(epoch1) == 6
    assert epoch1 == dict(zip(epoch1, epoch_views(list(epoch1), np.arange(6), seed=7, epoch=0, num_views=2)))
    assert epoch1 != epoch2 and set(epoch1.values()) | set(epoch2.values()) > {0}   # views change across epochs
    assert seen["eval"]
    for batch in seen["eval"]:   # validation and test: the clean clip only
        assert all(view_of(c, batch["video_tokens"][i]) == 0 for i, c in enumerate(batch["clip_ids"]))


@pytest.mark.slow   # two CLI extractions of one clip (~50 s on 2 shared cores)
def test_a_kill_between_views_leaves_the_clip_pending_and_the_rerun_completes_it(views_cache, demo_root, tiny_models,
                                                                                 tmp_path):
    import os

    clip_id = "01-01-01-01-01-01-01"
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "mmfer.pipeline.cli", "extract", "--root", str(demo_root), "--out", str(out),
               "--preset", "tiny", "--models-dir", str(tiny_models), "--face-crop", "center", "--num-workers", "0",
               "--views", "2", "--select", clip_id]
    killed = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "MMFER_CRASH_AT": "view_written:1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    entry = open_store(out).entry("video")
    index = entry.store.index_of(clip_id)
    assert entry.statuses()[index] == ClipStatus.PENDING   # clean arrays and view 1 written, view 2 not: not done
    assert entry.clip_chunk_files(index)[0].exists()
    rerun = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    reference = open_store(views_cache[0])
    for modality in ("video", "audio"):
        got, want = open_store(out).entry(modality), reference.entry(modality)
        for view in range(3):
            for name, value in want.read_clip(clip_id, view=view).items():
                assert np.array_equal(got.read_clip(clip_id, view=view)[name], value), (modality, view, name)
