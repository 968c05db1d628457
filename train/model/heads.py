"""Classifier heads: an MLP over the fused clip vector and linear auxiliaries over pooled branch features.

(B, D) -> (B, C) logits. The auxiliary heads read mean-pooled branch features, (B, L, D') -> (B, C),
as the design guide's Linear(512, 8) and Linear(768, 8). Losses and their weights live in the trainer.
"""

from __future__ import annotations

from torch import Tensor, nn


class EmotionHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or min(512, in_dim)
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, fused: Tensor) -> Tensor:
        """fused: (B, D) -> (B, C) logits."""
        return self.net(fused)


class AuxHead(nn.Module):
    """Mean over the sequence, then one Linear layer (the design guide's auxiliary classifiers)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """features: (B, L, D') segment tokens (all real: the branches pool padding away) -> (B, C)."""
        return self.linear(features.mean(dim=1))
