"""Visual branch: ROI compression per frame, temporal transformer, pooling into Lv time segments.

(B, Tv, P, Dv) cached patch tokens + frame_mask -> (B, Lv, out_dim) visual features; padded frames change
nothing. Compression lives in compress.py, the transformer in temporal.py.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmfer.train.model.compress import TokenCompressor
from mmfer.train.model.temporal import TemporalEncoder, segment_pool


class VisualBranch(nn.Module):
    """TokenCompressor -> TemporalEncoder -> segment_pool."""

    def __init__(
        self, *, video_dim: int, num_patches: int, num_keep_tokens: int, roi_dim: int, out_dim: int,
        temporal_depth: int, num_heads: int, max_frames: int, num_segments: int, dropout: float,
    ) -> None:
        super().__init__()
        self.video_dim, self.num_patches = video_dim, num_patches
        self.out_dim = out_dim
        self.num_segments = num_segments
        self.compress = TokenCompressor(
            video_dim, num_patches, roi_dim, num_keep_tokens, num_heads, out_dim, dropout
        )
        self.temporal = TemporalEncoder(out_dim, temporal_depth, num_heads, max_frames, dropout)

    def forward(self, video_tokens: Tensor, frame_mask: Tensor) -> Tensor:
        """video_tokens: (B, Tv, P, Dv) float; frame_mask: (B, Tv) bool, True = real frame.
        returns (B, Lv, out_dim); rows without real frames are zeros (the model swaps in its missing token)."""
        if frame_mask.shape != video_tokens.shape[:2]:
            raise ValueError(f"frame_mask {tuple(frame_mask.shape)} does not match video_tokens {tuple(video_tokens.shape)}")
        x = self.compress(video_tokens)                     # (B, Tv, out_dim)
        x = self.temporal(x, frame_mask)
        return segment_pool(x, frame_mask, self.num_segments)
