"""Mixup on standardized cached features: one lambda and one permutation for video, audio and labels alike.

The caller draws (lam, perm) with `sample_mixup` from its own numpy Generator (seeded per epoch, so a
resumed run draws the same numbers) and applies them with `mix_batch` to a batch the model's FeatureNorm
has already standardized (`is_standardized`), where padding is neutral: padded and missing positions are
set to 0 (the training mean) before mixing, never read as -mean/std. Each clip keeps its own masks and
presence flags, so a no-audio clip mixed with an audio clip stays no-audio (its missing embedding) and a
clip's padded frames stay padded; only its real positions take in (1 - lam) of the partner's values.
"""

from __future__ import annotations

import numpy as np
import torch

MIXED_FLOATS = ("video_tokens", "video_pooled", "audio_tokens")


def sample_mixup(rng: np.random.Generator, alpha: float, batch_size: int) -> tuple[float, np.ndarray]:
    """lam ~ Beta(alpha, alpha) and a permutation of the batch; alpha <= 0 gives (1.0, identity)."""
    if alpha <= 0:
        return 1.0, np.arange(batch_size)
    return float(rng.beta(alpha, alpha)), rng.permutation(batch_size)


def real_positions(batch: dict) -> dict[str, torch.Tensor]:
    """Per float tensor a 0/1 multiplier broadcastable to it: 1 at real tokens of a present modality."""
    video = (batch["frame_mask"] & batch["has_video"][:, None]).float()     # (B, Tv)
    audio = (batch["audio_mask"] & batch["has_audio"][:, None]).float()     # (B, Ta)
    return {"video_tokens": video[:, :, None, None], "video_pooled": video[:, :, None], "audio_tokens": audio[:, :, None]}


def mix_batch(batch: dict, lam: float, perm: np.ndarray) -> tuple[dict, torch.Tensor]:
    """lam * x + (1 - lam) * x[perm] for every feature tensor, padding zeroed first; masks and flags kept.

    batch: the collate_clips dict standardized by FeatureNorm (`is_standardized` True; tensors on any
    device). returns (mixed batch, labels_b (B,) long), where labels_b = labels[perm] is the second label
    set for the mixup loss.

    Raises:
        ValueError: the batch was not standardized (raw tokens have no neutral padding value).
    """
    if not batch.get("is_standardized"):
        raise ValueError("mix_batch: standardize the batch first (model.input_norm), so padding is neutral")
    index = torch.as_tensor(perm, dtype=torch.long, device=batch["labels"].device)
    mixed = dict(batch)
    for name, real in real_positions(batch).items():
        x = batch[name] * real                    # padded / missing positions -> 0, the standardized mean
        mixed[name] = lam * x + (1.0 - lam) * x[index]
    return mixed, batch["labels"][index]
