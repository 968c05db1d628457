"""The `gpu` tier: mixed precision on CUDA (fp16 + GradScaler, bf16), extraction under autocast, predict parity.

Every test here is skipped, with that reason, on a machine without CUDA: run `python -m pytest -m gpu` on one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from extract_helpers import extract_config
from synthetic_store import make_store
from train_helpers import tiny_config

from mmfer.core.labels import EMOTIONS
from mmfer.core.store import open_store

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")]

PROBS = [f"prob_{e}" for e in EMOTIONS]


def tiny_train_config(cache: Path, out: Path, device: str, **overrides) -> object:
    return tiny_config(cache, out=out, variant=None, device=device, seed=0, preload="no", epochs=1, warmup=1,
                       **{"split.protocol": "fixed", **overrides})


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=["fp16-gradscaler", "bf16"])
def test_mixed_precision_training_step_on_cuda(amp_dtype, tmp_path):
    from mmfer.train.dataset import ClipDataset, EpochSampler, make_loader, open_cache
    from mmfer.train.loop import setup_fold, train_epoch

    if amp_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cache = open_cache(str(make_store(tmp_path / "cache", repetitions=1)), use_video=True, use_audio=True)
    dataset = ClipDataset(cache, list(cache.clips["clip_id"]))
    sampler = EpochSampler(range(len(dataset)))
    loader = make_loader(dataset, sampler, batch_size=8, num_workers=0, seed=0, pin_memory=True)
    device = torch.device("cuda")
    cfg = tiny_train_config(tmp_path / "cache", tmp_path / "run", "cuda")
    fit = setup_fold(cfg, cache, dataset, np.arange(len(dataset)), device, fold_number=1, fold=None)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    before = [p.detach().clone() for p in fit.model.parameters()]
    stats = train_epoch(fit.model, fit.criterion, fit.optimizer, scaler, loader, device, amp_dtype,
                        np.random.default_rng(0), desc="gpu",
                        training=dataclasses.replace(cfg.training, mixup_alpha=0.0, gradient_accumulation_steps=1,
                                                     gradient_clip=1.0))
    assert np.isfinite(stats["loss"]) and stats["loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, fit.model.parameters())), "no parameter was updated"
    if amp_dtype == torch.float16:
        assert scaler.get_scale() > 0 and scaler.is_enabled()


def test_extraction_under_autocast_matches_the_cpu_features(demo_root, demo_cache, tiny_models, tmp_path):
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    out = tmp_path / "cuda-cache"
    summary = extract_all(extract_config(demo_root, out, tiny_models, device="cuda", limit=4), scan_ravdess(demo_root))
    assert summary.num_done == 4 and summary.num_failed == 0, summary.format()
    gpu, cpu = open_store(out).entry("video"), open_store(demo_cache).entry("video")
    assert gpu.attrs["preprocessing"]["autocast_dtype"] in ("float16", "bfloat16")
    for clip_id in gpu.store.clip_ids[:4]:
        a = gpu.read_clip(clip_id, ("tokens",))["tokens"].astype(np.float32).ravel()
        b = cpu.read_clip(clip_id, ("tokens",))["tokens"].astype(np.float32).ravel()
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cosine > 0.99, f"{clip_id}: cosine {cosine:.4f} between CUDA-autocast and CPU tokens"


def test_predict_on_cuda_matches_predict_on_cpu(demo_root, demo_cache, tmp_path):
    from mmfer.pipeline.cli import main as mmfer_main
    from mmfer.train.loop import train

    fold_file = tmp_path / "folds.json"
    fold_file.write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]}]))
    train(tiny_train_config(demo_cache, tmp_path / "run", "cuda", **{"split.protocol": "file",
                                                                      "split.fold_file": str(fold_file)}))
    clips = sorted((demo_root / "Actor_01").glob("*.mp4"))[:2]
    frames = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.csv"
        assert mmfer_main(["predict", "--run", str(tmp_path / "run"), "--device", device, "--out", str(out),
                           *map(str, clips)]) == 0
        frames[device] = pd.read_csv(out).set_index("clip_id")
    diff = np.abs(frames["cpu"][PROBS].to_numpy(float) - frames["cuda"][PROBS].to_numpy(float))
    assert diff.max() < 2e-2, f"CPU vs CUDA probabilities differ by up to {diff.max():.3e}"
