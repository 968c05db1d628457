"""Standardize cached encoder features with statistics of the fold's training clips.

Frozen-encoder tokens carry large constant offsets per channel (and, for SigLIP, per patch position)
with small clip-to-clip variation; a pre-norm transformer then sees nearly identical inputs for every
clip and learns slowly. The statistics live in buffers of the model, so checkpoints, `predict` and
`export` apply exactly the normalization the model was trained with. Only training clips are used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

STD_FLOOR = 1e-4   # channels that never vary stay finite (and stay ~0 after centring)


class FeatureNorm(nn.Module):
    """(x - mean) / std per video patch position and channel, and per audio channel.

    video_shape: (P, Dv) or None; audio_dim: Da or None. Starts as the identity until `set_statistics`.
    """

    def __init__(self, video_shape: tuple[int, int] | None, audio_dim: int | None) -> None:
        super().__init__()
        self.has_video, self.has_audio = video_shape is not None, audio_dim is not None
        video_shape = video_shape or (1, 1)
        audio_dim = audio_dim or 1
        self.register_buffer("video_mean", torch.zeros(video_shape))
        self.register_buffer("video_std", torch.ones(video_shape))
        self.register_buffer("audio_mean", torch.zeros(audio_dim))
        self.register_buffer("audio_std", torch.ones(audio_dim))

    def set_statistics(self, stats: dict[str, np.ndarray]) -> None:
        for name, value in stats.items():
            buffer = getattr(self, name)
            buffer.copy_(torch.as_tensor(value, dtype=buffer.dtype).reshape(buffer.shape))

    def forward(self, batch: dict) -> dict:
        """Returns a shallow copy of `batch` with video_tokens (B, Tv, P, Dv) and audio_tokens (B, Ta, Da)
        standardized and `is_standardized` True; masks are untouched (padded positions stay ignored
        downstream). A batch already standardized (mixup mixes after this step) passes through."""
        if batch.get("is_standardized"):
            return batch
        batch = dict(batch, is_standardized=True)
        if self.has_video and "video_tokens" in batch:
            batch["video_tokens"] = (batch["video_tokens"] - self.video_mean) / self.video_std
        if self.has_audio and "audio_tokens" in batch:
            batch["audio_tokens"] = (batch["audio_tokens"] - self.audio_mean) / self.audio_std
        return batch


def feature_statistics(items) -> dict[str, np.ndarray]:
    """Mean and std over training clips, from dataset items (fp16 arrays as stored).

    Video: per (P, Dv) over frames and clips; audio: per Da over the real frames of every clip.
    Clips without a modality do not count for it.
    """
    sums: dict[str, np.ndarray] = {}
    counts = {"video": 0, "audio": 0}

    def add(key: str, values: np.ndarray, axis: int | tuple) -> None:
        values = values.astype(np.float64)
        sums[key] = sums.get(key, 0.0) + values.sum(axis=axis)
        sums[key + "_sq"] = sums.get(key + "_sq", 0.0) + np.square(values).sum(axis=axis)

    for item in items:
        if item.get("has_video") and "video_tokens" in item:
            add("video", item["video_tokens"], axis=0)               # (Tv, P, Dv) -> (P, Dv)
            counts["video"] += item["video_tokens"].shape[0]
        if item.get("has_audio") and "audio_tokens" in item:
            add("audio", item["audio_tokens"], axis=0)               # (Ta, Da) -> (Da,)
            counts["audio"] += item["audio_tokens"].shape[0]
    stats = {}
    for key in ("video", "audio"):
        if counts[key]:
            mean = sums[key] / counts[key]
            var = np.maximum(sums[key + "_sq"] / counts[key] - np.square(mean), 0.0)
            stats[f"{key}_mean"], stats[f"{key}_std"] = mean, np.maximum(np.sqrt(var), STD_FLOOR)
    return stats
