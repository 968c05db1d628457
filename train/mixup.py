"""Mixup on cached features: one lambda and one permutation for video, audio and labels alike.

The caller draws (lam, perm) with `sample_mixup` from its own numpy Generator (seeded per epoch, so a
resumed run draws the same numbers) and applies them with `mix_batch`. Masks of a mixed clip are the OR
of its two sources' masks, so no real token of either is hidden.
"""

from __future__ import annotations

import numpy as np
import torch

MIXED_FLOATS = ("video_tokens", "video_pooled", "audio_tokens")
MIXED_MASKS = ("frame_mask", "has_video", "audio_mask", "has_audio")


def sample_mixup(rng: np.random.Generator, alpha: float, batch_size: int) -> tuple[float, np.ndarray]:
    """lam ~ Beta(alpha, alpha) and a permutation of the batch; alpha <= 0 gives (1.0, identity)."""
    if alpha <= 0:
        return 1.0, np.arange(batch_size)
    return float(rng.beta(alpha, alpha)), rng.permutation(batch_size)


def mix_batch(batch: dict, lam: float, perm: np.ndarray) -> tuple[dict, torch.Tensor]:
    """lam * x + (1 - lam) * x[perm] for every feature tensor; masks OR-ed.

    batch: the collate_clips dict (tensors on any device). returns (mixed batch, labels_b (B,) long),
    where labels_b = labels[perm] is the second label set for the mixup loss.
    """
    index = torch.as_tensor(perm, dtype=torch.long, device=batch["labels"].device)
    mixed = dict(batch)
    for name in MIXED_FLOATS:
        x = batch[name]
        mixed[name] = lam * x + (1.0 - lam) * x[index]
    for name in MIXED_MASKS:
        mixed[name] = batch[name] | batch[name][index]
    return mixed, batch["labels"][index]
