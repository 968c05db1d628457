"""What `mmfer bench` measures on: demo clips, the frozen encoders and the trainable model, at full or tiny size.

Full size without downloads: a random SigLIP-base/16 vision tower and a random FastConformer-large-like NeMo
model are written with the libraries' own savers and read back through extract's loaders, and LFM2 is built
from its built-in config with random weights. The stages are imported inside functions (pipeline/ may use
both). Decode jobs, the decode loader and the trainer's set-up are the stages' own (extract/run.py,
train/loop.py): this file only points them at the bench's clips.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmfer.core.config import ExtractConfig, TrainConfig, train_config_with_preset
from mmfer.pipeline.command_config import DemoConfig
from mmfer.core.device import resolve_device

log = logging.getLogger(__name__)

BENCH_CLIP_S = 3.5          # RAVDESS speech clips are 3-4 s
BENCH_SEED = 0
@dataclass
class BenchSetup:
    """Everything the parts share: the temp folder, clips, encoder paths and the configs of both stages."""

    work_dir: Path
    demo_root: Path
    manifest: pd.DataFrame          # the first num_clips clips, in clip_id order (what extract --limit takes)
    visual_path: Path
    audio_path: Path
    extract_cfg: ExtractConfig      # default settings, pointed at the bench's encoders and demo
    train_cfg: TrainConfig          # default (or tiny preset) settings, LFM2 random, preload off
    preset: str
    device: str


def make_setup(work_dir: Path, *, num_clips: int, preset: str, device: str) -> BenchSetup:
    """Write the demo clips and the encoders into work_dir and resolve both stages' configs."""
    from mmfer.data.demo import make_demo

    demo_root = work_dir / "demo"
    num_actors = min(24, math.ceil(num_clips / 8))
    per_emotion = min(4, math.ceil(num_clips / (8 * num_actors)))
    manifest = make_demo(demo_root, seed=BENCH_SEED, num_actors=num_actors, clips_per_emotion=per_emotion,
                         size_px=DemoConfig().size_px, duration_s=BENCH_CLIP_S, overwrite=False)
    if len(manifest) < num_clips:
        raise ValueError(f"--clips {num_clips}: the demo generator makes at most {len(manifest)} clips")
    visual_path, audio_path = write_encoders(work_dir / "models", preset)
    extract_cfg = ExtractConfig(root=str(demo_root), out=str(work_dir / "cache"), visual_encoder=str(visual_path),
                                audio_encoder=str(audio_path), device=device)
    return BenchSetup(work_dir, demo_root, manifest.head(num_clips).reset_index(drop=True), visual_path, audio_path,
                      extract_cfg, bench_train_config(preset, device), preset, device)


def bench_train_config(preset: str, device: str) -> TrainConfig:
    """train-fusion's defaults (or the tiny preset), LFM2 with random weights, the cache read from disk."""
    cfg = train_config_with_preset({"preset": preset, "device": device, "preload": "no"})
    fusion = dataclasses.replace(cfg.model.fusion, use_pretrained=False)   # built-in LFM2-700M config, no download
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fusion=fusion))


def write_encoders(models_dir: Path, preset: str) -> tuple[Path, Path]:
    """The random encoders of the preset's size, written by extract's one writer of stand-in encoders."""
    from mmfer.extract.random_encoders import ensure_random_encoders

    return ensure_random_encoders(models_dir, size=preset)


def load_encoder_pair(setup: BenchSetup):
    """The EncoderPair extract would use, loaded through the encoder registry as extract loads it."""
    from mmfer.extract.encoders import EncoderPair, load_encoder

    device = torch.device(resolve_device_name(setup.device))
    return EncoderPair(load_encoder("video", str(setup.visual_path), device=device),
                       load_encoder("audio", str(setup.audio_path), device=device))


def resolve_device_name(name: str) -> str:
    return str(resolve_device(name))


def bench_decode_jobs(setup: BenchSetup, clip_ids: list[str] | None = None) -> list:
    """extract's own DecodeJobs (extract/run.py `decode_jobs`) for the bench clips, or for clip_ids (repeats allowed)."""
    from mmfer.extract.run import decode_jobs

    jobs = decode_jobs(setup.manifest, setup.extract_cfg)
    if clip_ids is None:
        return jobs
    by_id = {job.clip_id: job for job in jobs}
    return [by_id[c] for c in clip_ids]


def bench_decode_loader(jobs: list, processor, cfg: ExtractConfig, *, batch_size: int):
    """extract's own decode loader (extract/run.py `decode_loader`), its workers kept between passes."""
    from mmfer.extract.run import decode_loader

    return decode_loader(jobs, processor, num_workers=cfg.num_workers, batch_size=batch_size, persistent_workers=True)


@dataclass
class Trainer:
    """train's own per-fold set-up (train/loop.py `setup_fold`) with every bench clip as a training clip."""

    fold: object                    # train.loop.FoldSetup: model, criterion, optimizer, schedule, scaler, amp_dtype
    device: torch.device
    cfg: TrainConfig


def build_trainer(cfg: TrainConfig, cache, dataset) -> Trainer:
    """setup_fold over all clips of `dataset` (input standardization from their statistics), as fold 1 of train."""
    from mmfer.train.loop import setup_fold

    device = resolve_device(cfg.device)
    fold = setup_fold(cfg, cache, dataset, np.arange(len(dataset)), device, fold_number=1, fold=None)
    return Trainer(fold, device, cfg)


def make_work_dir(parent: str | None) -> Path:
    return Path(tempfile.mkdtemp(prefix="mmfer-bench-", dir=parent))


def remove_work_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    log.debug("removed %s", path)


def child_env() -> dict[str, str]:
    """Environment of measured subprocesses: offline, with the bench's own import path."""
    return {**os.environ, "HF_HUB_OFFLINE": "1"}
