"""Tiny model configs and random batches of the batch contract, shared by the model and dry-run tests."""

from __future__ import annotations

import dataclasses

import torch

from mmfer.core.config import ModelConfig, train_config_with_preset
from mmfer.train.model.builder import build_model

DV, P, DA, TV, TA, B = 32, 49, 24, 6, 20, 4  # P = 7 x 7 patches keeps the tests fast


def tiny_config(**fusion: object) -> ModelConfig:
    """ModelConfig with the tiny preset applied (and `fusion` field overrides)."""
    cfg = train_config_with_preset({"preset": "tiny"}).model
    return dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, **fusion))


def make_model(variant: str = "lfm2", dropout: float = 0.0, **fusion: object):
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_config(**fusion), variant=variant)
    return build_model(cfg, video_dim=DV, num_patches=P, audio_dim=DA, dropout=dropout)


def make_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frame_mask = torch.ones(B, TV, dtype=torch.bool)   # True = real frame
    frame_mask[1, 4:] = False
    audio_mask = torch.ones(B, TA, dtype=torch.bool)   # True = real audio frame
    audio_mask[0, 13:] = False
    audio_mask[2, 5:] = False                          # fewer real frames than segments
    return {
        "video_tokens": torch.randn(B, TV, P, DV, generator=g), "video_pooled": torch.randn(B, TV, DV, generator=g),
        "frame_mask": frame_mask, "has_video": torch.ones(B, dtype=torch.bool),
        "audio_tokens": torch.randn(B, TA, DA, generator=g), "audio_mask": audio_mask,
        "has_audio": torch.ones(B, dtype=torch.bool), "labels": torch.arange(B),
    }
