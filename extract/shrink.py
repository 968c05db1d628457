"""Cache size control for the visual tokens: `--token-pool k` averages the square patch grid in k x k blocks.

Tokens (..., P, Dv) in, (..., P / k², Dv) out; `pooled_token_count` gives the stored P. The int8 option
(`--token-dtype int8`) is a storage encoding and lives in the store (`quantize_tokens`).
"""

from __future__ import annotations

import math

import numpy as np

from mmfer.core.errors import ConfigError


def grid_side(num_patches: int, pool: int) -> int:
    """The patch grid's side; refuses a P that is no square, or a side that `pool` does not divide.

    Raises:
        ConfigError: the encoder's P cannot be pooled by `pool`.
    """
    side = math.isqrt(num_patches)
    if side * side != num_patches or side % pool:
        raise ConfigError(f"--token-pool {pool}: the visual encoder gives P={num_patches} tokens per frame, "
                          f"not a square grid whose side divides by {pool}; use --token-pool 1 or another divisor")
    return side


def pooled_token_count(num_patches: int, pool: int) -> int:
    """P stored per frame with `--token-pool pool` (196 -> 49 for pool 2)."""
    return (grid_side(num_patches, pool) // pool) ** 2 if pool > 1 else num_patches


def pool_tokens(tokens: np.ndarray, pool: int) -> np.ndarray:
    """(..., P, Dv) -> (..., P / pool², Dv): the mean of each pool x pool block of the row-major patch grid."""
    if pool == 1:
        return tokens
    *lead, num_patches, dim = tokens.shape
    side = grid_side(num_patches, pool)
    grid = tokens.reshape(*lead, side // pool, pool, side // pool, pool, dim)
    return grid.mean(axis=(-4, -2), dtype=np.float32).reshape(*lead, (side // pool) ** 2, dim)


def unpool_tokens(pooled: np.ndarray, pool: int) -> np.ndarray:
    """The inverse the bench measures pooling's reconstruction error with: each block's mean repeated."""
    if pool == 1:
        return pooled
    *lead, num_blocks, dim = pooled.shape
    side = math.isqrt(num_blocks)
    grid = pooled.reshape(*lead, side, 1, side, 1, dim)
    grid = np.broadcast_to(grid, (*lead, side, pool, side, pool, dim))
    return grid.reshape(*lead, (side * pool) ** 2, dim)
