"""What `mmfer bench` measures on: demo clips, the frozen encoders and the trainable model, at full or tiny size.

Full size without downloads: a random SigLIP-base/16 vision tower and a random FastConformer-large-like NeMo
model are written with the libraries' own savers and read back through extract's loaders, and LFM2 is built
from its built-in config with random weights. The stages are imported inside functions (pipeline/ may use both).
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

from mmfer.pipeline.config import DemoConfig, ExtractConfig, TrainConfig, train_config_with_preset
from mmfer.pipeline.device import resolve_device

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
    """The EncoderPair extract would use, loaded through extract's own loaders."""
    from mmfer.extract.audio import load_audio_encoder
    from mmfer.extract.encoders import EncoderPair
    from mmfer.extract.visual import load_visual_encoder

    device = torch.device(resolve_device_name(setup.device))
    return EncoderPair(load_visual_encoder(str(setup.visual_path), device=device),
                       load_audio_encoder(str(setup.audio_path), device=device))


def resolve_device_name(name: str) -> str:
    return str(resolve_device(name))


def decode_jobs(setup: BenchSetup, manifest: pd.DataFrame | None = None) -> list:
    """extract's DecodeJobs for the bench clips, with extract's default decode settings."""
    from mmfer.extract.worker import DecodeJob

    cfg = setup.extract_cfg
    table = setup.manifest if manifest is None else manifest
    return [DecodeJob(r.clip_id, r.path, r.source, cfg.num_frames, cfg.sample_rate_hz, cfg.max_audio_s,
                      cfg.decode_timeout_s, cfg.face_crop) for r in table.itertuples()]


class DecodeDataset(torch.utils.data.Dataset):
    """decode_job per clip, as extract's worker processes run it (picklable for spawned workers)."""

    def __init__(self, jobs: list, processor) -> None:
        self.jobs = jobs
        self.processor = processor

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int):
        from mmfer.extract.worker import decode_job

        return decode_job(self.jobs[i], self.processor)


def decode_loader(jobs: list, processor, cfg: ExtractConfig, *, batch_size: int, persistent: bool):
    """The DataLoader setup of extract/run.py (spawned workers, prefetch 4, collate to a list)."""
    workers = cfg.num_workers
    return torch.utils.data.DataLoader(
        DecodeDataset(jobs, processor), batch_size=batch_size, shuffle=False, collate_fn=list, num_workers=workers,
        multiprocessing_context="spawn" if workers else None, prefetch_factor=4 if workers else None,
        persistent_workers=persistent and workers > 0)


@dataclass
class Trainer:
    """The trainable model and its step state, built as train/loop.py's train_fold builds them."""

    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    cfg: TrainConfig


def build_trainer(cfg: TrainConfig, *, video_shape: tuple, audio_dim: int, labels: np.ndarray) -> Trainer:
    """Model, loss, AdamW groups and AMP scaler exactly as train_fold sets them up (no schedule needed)."""
    from mmfer.train.loop import autocast_dtype
    from mmfer.train.losses import ContrastiveLoss, MultimodalLoss, resolve_class_weights
    from mmfer.train.model.builder import build_model, param_groups
    from mmfer.train.schedule import build_optimizer

    t = cfg.training
    device = resolve_device(cfg.device)
    torch.manual_seed(BENCH_SEED)
    _, num_patches, video_dim = video_shape
    model = build_model(cfg.model, video_dim=video_dim, num_patches=num_patches, audio_dim=audio_dim, dropout=t.dropout)
    if t.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    contrastive = None
    if t.contrastive_weight > 0 and cfg.model.is_fused:
        contrastive = ContrastiveLoss(cfg.model.audio.feature_dim, cfg.model.visual.out_dim, t.contrastive_temperature)
    criterion = MultimodalLoss(
        label_smoothing=t.label_smoothing, class_weights=resolve_class_weights(t.class_weights, labels, cfg.model.num_classes),
        alpha_fusion=t.loss_weight_fusion, alpha_audio=t.loss_weight_audio, alpha_visual=t.loss_weight_visual,
        contrastive=contrastive, contrastive_weight=t.contrastive_weight)
    model.to(device)
    criterion.to(device)
    groups = param_groups(model)
    groups["classifier"] += list(criterion.parameters())
    optimizer = build_optimizer(groups, lr_branches=t.lr_branches, lr_fusion=t.lr_fusion, lr=t.lr,
                                weight_decay=t.weight_decay, betas=t.betas)
    amp_dtype = autocast_dtype(device, t.mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return Trainer(model, criterion, optimizer, scaler, device, amp_dtype, cfg)


def make_work_dir(parent: str | None) -> Path:
    return Path(tempfile.mkdtemp(prefix="mmfer-bench-", dir=parent))


def remove_work_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    log.debug("removed %s", path)


def child_env() -> dict[str, str]:
    """Environment of measured subprocesses: offline, with the bench's own import path."""
    return {**os.environ, "HF_HUB_OFFLINE": "1"}
