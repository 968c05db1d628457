"""Transformer layers over time with padding masks, and masked pooling of a sequence into segments.

`TemporalEncoder` turns per-frame visual vectors (B, Tv, D) into contextual ones; `TransformerBlock` is
shared with the audio branch; `segment_pool` splits each clip's true length into S equal spans and
averages each, so padded positions never reach the output (masks: True = real).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block; padded keys are masked out of attention."""

    def __init__(self, dim: int, num_heads: int, dropout: float, mlp_ratio: int = 4) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_ratio * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D); mask: (B, T) bool, True = real. Rows with no real token attend to everything
        (their output is garbage the caller ignores) so attention never sees an empty row."""
        b, t, d = x.shape
        key_mask = mask | ~mask.any(dim=1, keepdim=True)
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(attn.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TemporalEncoder(nn.Module):
    """Learned time embeddings + `num_layers` transformer blocks over frames."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, max_frames: int, dropout: float) -> None:
        super().__init__()
        self.max_frames = max_frames
        self.time_embed = nn.Parameter(torch.randn(max_frames, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D) float; mask: (B, T) bool, True = real. Returns (B, T, D)."""
        if x.shape[1] > self.max_frames:
            raise ValueError(f"sequence of {x.shape[1]} steps is longer than max_frames={self.max_frames}; raise it")
        x = x + self.time_embed[: x.shape[1]]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return self.norm(x)


def segment_pool(x: Tensor, mask: Tensor, num_segments: int) -> Tensor:
    """Split each row's real positions into `num_segments` equal spans and average each span.

    x: (B, T, D) float; mask: (B, T) bool, True = real (need not be a prefix).
    returns (B, S, D); a row with n < S real positions repeats them; a row with none gives zeros
    (the caller replaces it with a learned "missing" embedding).
    """
    mask = mask.bool()
    n = mask.sum(dim=1, keepdim=True)                                       # (B, 1)
    rank = mask.long().cumsum(dim=1) - 1                                    # (B, T) index among real positions
    seg = torch.arange(num_segments, device=x.device)
    start = (seg[None] * n) // num_segments                                 # (B, S)
    end = torch.maximum(((seg[None] + 1) * n) // num_segments, start + 1)
    inside = (rank[:, None, :] >= start[..., None]) & (rank[:, None, :] < end[..., None]) & mask[:, None, :]
    weight = inside.to(x.dtype)                                             # (B, S, T)
    weight = weight / weight.sum(dim=-1, keepdim=True).clamp(min=1.0)
    return weight @ x.masked_fill(~mask[..., None], 0.0)
