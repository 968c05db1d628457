"""Audio branch: cached FastConformer frames -> light transformer -> `num_segments` segment tokens.

(B, Ta, Da) frames + audio_mask -> Linear to feature_dim -> transformer layers with a key padding mask ->
masked mean over S equal spans of each clip's true length -> (B, S, feature_dim). Padding changes nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmfer.train.model.temporal import TransformerBlock, segment_pool


class AudioBranch(nn.Module):
    """Projection + position table + `num_layers` TransformerBlocks + segment pooling."""

    def __init__(
        self, *, audio_dim: int, feature_dim: int, num_layers: int, num_heads: int, num_segments: int,
        max_frames: int, dropout: float,
    ) -> None:
        super().__init__()
        self.audio_dim = audio_dim
        self.feature_dim = feature_dim
        self.num_segments = num_segments
        self.max_frames = max_frames
        self.proj = nn.Linear(audio_dim, feature_dim)
        self.pos_embed = nn.Parameter(torch.randn(max_frames, feature_dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(feature_dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(feature_dim)
        self.gradient_checkpointing = False

    def forward(self, audio_tokens: Tensor, audio_mask: Tensor) -> Tensor:
        """audio_tokens: (B, Ta, Da) float; audio_mask: (B, Ta) bool, True = real 80 ms frame.
        returns (B, S, feature_dim); rows without real frames are zeros (the model swaps in its missing token)."""
        if audio_tokens.dim() != 3 or audio_tokens.shape[-1] != self.audio_dim:
            raise ValueError(f"audio_tokens: want (B, Ta, {self.audio_dim}), got {tuple(audio_tokens.shape)}")
        if audio_mask.shape != audio_tokens.shape[:2]:
            raise ValueError(f"audio_mask {tuple(audio_mask.shape)} does not match audio_tokens {tuple(audio_tokens.shape)}")
        if audio_tokens.shape[1] > self.max_frames:
            raise ValueError(f"{audio_tokens.shape[1]} audio frames > audio.max_frames={self.max_frames}; raise it")
        x = self.proj(audio_tokens) + self.pos_embed[: audio_tokens.shape[1]]   # (B, Ta, feature_dim)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, audio_mask, use_reentrant=False)
            else:
                x = block(x, audio_mask)
        return segment_pool(self.norm(x), audio_mask, self.num_segments)       # (B, S, feature_dim)
