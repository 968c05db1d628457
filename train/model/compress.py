"""ROI compression: each frame's P cached patch tokens -> K position-aware tokens -> one frame vector.

The patch tokens are projected to a narrow `roi_dim` and given a learned 2-D patch position embedding
(pooling without position throws the face signal away), then K learned queries attend over them. The K
query outputs keep their slot order and are flattened into one vector per frame, so the temporal
encoder and LFM2 see Tv tokens, not Tv x K (the trainable stage's budget of ~20 GFLOP per clip).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TokenCompressor(nn.Module):
    """(B, Tv, P, Dv) patch tokens -> (B, Tv, out_dim) frame vectors through K learned queries."""

    def __init__(
        self, in_dim: int, num_patches: int, roi_dim: int, num_keep_tokens: int, num_heads: int, out_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if roi_dim % num_heads != 0:
            raise ValueError(f"visual.roi_dim {roi_dim} is not divisible by num_heads {num_heads}")
        self.in_dim = in_dim
        self.num_patches = num_patches
        self.num_heads = num_heads
        self.proj = nn.Linear(in_dim, roi_dim)
        self.pos_embed = nn.Parameter(_grid_position_embedding(num_patches, roi_dim))
        self.norm = nn.LayerNorm(roi_dim)
        self.queries = nn.Parameter(torch.randn(num_keep_tokens, roi_dim) * roi_dim**-0.5)
        self.kv = nn.Linear(roi_dim, 2 * roi_dim)
        self.q = nn.Linear(roi_dim, roi_dim)
        self.slot_norm = nn.LayerNorm(roi_dim)
        self.out = nn.Linear(num_keep_tokens * roi_dim, out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        """Squeeze each frame's patch tokens into K query tokens, then into one frame vector.

        tokens: (B, Tv, P, Dv) float, SigLIP2 patch tokens read from the store
        returns (B, Tv, out_dim); padded frames give garbage rows the temporal mask ignores.
        """
        if tokens.dim() != 4 or tokens.shape[-2:] != (self.num_patches, self.in_dim):
            raise ValueError(f"video_tokens: want (B, Tv, {self.num_patches}, {self.in_dim}), got {tuple(tokens.shape)}")
        b, t, p, _ = tokens.shape
        x = self.norm(self.proj(tokens.flatten(0, 1)) + self.pos_embed)        # (B*Tv, P, roi)
        k, v = self.kv(x).chunk(2, dim=-1)
        q = self.q(self.queries).expand(b * t, -1, -1)                           # (B*Tv, K, roi)
        heads = lambda z: z.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
        slots = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))    # (B*Tv, h, K, roi/h)
        slots = self.slot_norm(slots.transpose(1, 2).flatten(2) + self.queries)  # (B*Tv, K, roi)
        return self.drop(self.out(slots.flatten(1))).unflatten(0, (b, t))       # (B, Tv, out_dim)


def _grid_position_embedding(num_patches: int, dim: int) -> Tensor:
    """2-D sine-cosine start values for the learned patch position table (row and column halves)."""
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        return torch.randn(num_patches, dim) * 0.02
    quarter = dim // 4
    freq = 1.0 / (10_000 ** (torch.arange(quarter) / max(quarter, 1)))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    parts = [f(pos.flatten()[:, None].float() * freq) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, dim=1)
    return F.pad(table, (0, dim - table.shape[1])) * 0.1
