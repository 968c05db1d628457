"""Cache size control: the estimate before extracting, `--token-pool 2` and `--token-dtype int8`."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from extract_helpers import extract_config

from mmfer.extract.run import decode_params
from mmfer.extract.shrink import pool_tokens, pooled_token_count, unpool_tokens
from mmfer.core.config import ExtractConfig
from mmfer.core.errors import ConfigError
from mmfer.core.labels import EMOTIONS
from mmfer.core.store import dequantize_tokens, open_store, quantize_tokens
from mmfer.train.dataset import ClipDataset, collate_clips, open_cache


def test_pooling_averages_2x2_blocks_of_the_patch_grid():
    grid = np.arange(196, dtype=np.float32).reshape(1, 196, 1)   # 14 x 14, row-major
    pooled = pool_tokens(grid, 2)
    assert pooled.shape == (1, 49, 1) and pooled_token_count(196, 2) == 49
    assert pooled[0, 0, 0] == np.mean([0, 1, 14, 15]) and pooled[0, 1, 0] == np.mean([2, 3, 16, 17])
    assert unpool_tokens(pooled, 2).shape == grid.shape
    with pytest.raises(ConfigError, match="--token-pool 3"):
        pool_tokens(grid, 3)


def test_int8_round_trip_keeps_each_token_within_its_scale():
    tokens = np.random.default_rng(0).normal(0, 3, (4, 49, 64)).astype(np.float32)
    quantized, scale = quantize_tokens(tokens)
    assert quantized.dtype == np.int8 and scale.shape == (4, 49) and scale.dtype == np.float16
    restored = dequantize_tokens(quantized, scale)
    assert restored.dtype == np.float16
    assert np.linalg.norm(restored - tokens) / np.linalg.norm(tokens) < 0.01
    assert not dequantize_tokens(*quantize_tokens(np.zeros((2, 3), np.float32))).any()


def test_default_settings_keep_the_fingerprinted_keys_of_earlier_stores():
    params = decode_params("video", ExtractConfig(root="r", out="o"))
    assert "token_pool" not in params and "token_dtype" not in params
    shrunk = decode_params("video", ExtractConfig(root="r", out="o", token_pool=2, token_dtype="int8"))
    assert shrunk["token_pool"] == 2 and shrunk["token_dtype"] == "int8"


def test_pooled_int8_cache_is_smaller_recorded_and_read_transparently(demo_root, tiny_models, tmp_path, caplog):
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    manifest = scan_ravdess(demo_root)
    caplog.set_level(logging.INFO, logger="mmfer.extract.run")
    extract_all(extract_config(demo_root, tmp_path / "full", tiny_models, limit=2), manifest)
    assert "cache size estimate: 2 clips x" in caplog.text and "MB free" in caplog.text
    extract_all(extract_config(demo_root, tmp_path / "small", tiny_models, limit=2, token_pool=2, token_dtype="int8"), manifest)
    full, small = open_store(tmp_path / "full").entry("video"), open_store(tmp_path / "small").entry("video")
    tv, p, dv = full.array_specs["tokens"].shape
    assert small.array_specs["tokens"].shape == (tv, p // 4, dv) and small.array_specs["tokens"].dtype == "int8"
    assert small.attrs["token_pool"] == 2 and small.attrs["token_dtype"] == "int8"
    assert small.fingerprint != full.fingerprint
    assert small.raw_bytes_per_clip() < full.raw_bytes_per_clip() / 4
    for clip_id in full.store.clip_ids[:2]:
        want = pool_tokens(full.read_clip(clip_id, ("tokens",))["tokens"].astype(np.float32), 2)
        got = small.read_clip(clip_id, ("tokens",))
        assert set(got) == {"tokens"} and got["tokens"].dtype == np.float16
        assert np.linalg.norm(got["tokens"] - want) / np.linalg.norm(want) < 0.02

    cache = open_cache(str(tmp_path / "small"), use_video=True, use_audio=True)   # training's reader
    assert cache.video_shape == (tv, p // 4, dv)
    dataset = ClipDataset(cache, list(cache.clips["clip_id"]))
    batch = collate_clips([dataset[0], dataset[1]], video_shape=dataset.video_shape, audio_dim=dataset.audio_shape[1])
    assert batch["video_tokens"].shape == (2, tv, p // 4, dv) and batch["video_tokens"].abs().sum() > 0


def test_predict_features_are_pooled_and_quantized_like_the_cache(demo_root, tiny_models, tmp_path):
    """predict re-extracts a clip the way its run's cache holds it: pooled grid, int8 round trip."""
    import dataclasses

    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all
    from mmfer.pipeline.bundle import ModelBundle, feature_records
    from mmfer.pipeline.predictor import Predictor
    from mmfer.core.config import train_config_with_preset
    from mmfer.train.model.builder import build_model_from_spec, model_spec

    out = tmp_path / "small"
    extract_all(extract_config(demo_root, out, tiny_models, limit=2, token_pool=2, token_dtype="int8"),
                scan_ravdess(demo_root))
    store = open_store(out)
    video, audio = store.entry("video"), store.entry("audio")
    cfg = train_config_with_preset({"cache": str(out), "preset": "tiny", "device": "cpu"})
    tv, p, dv = video.array_specs["tokens"].shape
    spec = model_spec(cfg.model, video_dim=dv, num_patches=p, audio_dim=audio.array_specs["tokens"].shape[1],
                      dropout=cfg.training.dropout)
    bundle = ModelBundle(source="test", config=dataclasses.asdict(cfg),
                         features=feature_records(out, {"video": video.fingerprint, "audio": audio.fingerprint}),
                         fold_names=["fold1"], states=[build_model_from_spec(spec).state_dict()], model_spec=spec)
    predictor = Predictor(bundle, device="cpu")
    for clip_id in store.clip_ids[:2]:
        path = next(demo_root.rglob(f"{clip_id}.mp4"))
        item = predictor.features(path, clip_id)
        cached = video.read_clip(clip_id, ("tokens", "token_scale"))
        assert item["video_tokens"].shape == (tv, p, dv) and item["video_tokens"].dtype == np.float16
        # extract encoded 2 clips per batch, predict one: float32 noise may move a value by one int8 step
        step = cached["token_scale"].astype(np.float32)[..., None] * 1.01 + 1e-3
        assert (np.abs(item["video_tokens"].astype(np.float32) - cached["tokens"].astype(np.float32)) <= step).all()
        assert predictor.predict([item]).shape == (1, len(EMOTIONS))
