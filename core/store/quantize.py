"""int8 tokens (`extract --token-dtype int8`): float tokens in, int8 tokens and a float16 scale per token out.

The Zarr writer quantizes a clip's "tokens" on the way in; both backends dequantize on the way out, so
training reads float16 whichever way they were stored. Pure numpy: no store file is touched here.
"""

from __future__ import annotations

import numpy as np

from mmfer.core.store.layout import TOKEN_SCALE, ArraySpec


def quantize_tokens(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float tokens (..., D) -> int8 tokens and a float16 scale (...,) per token: x ~ q * scale, |q| <= 127."""
    scale = (np.abs(tokens).max(axis=-1) / 127.0).astype(np.float16)
    safe = np.where(scale > 0, scale, 1).astype(np.float32)[..., None]
    return np.clip(np.rint(tokens / safe), -127, 127).astype(np.int8), scale


def dequantize_tokens(quantized: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 tokens and their scale -> float16 tokens, as training reads them."""
    return (quantized.astype(np.float32) * scale.astype(np.float32)[..., None]).astype(np.float16)


def is_quantized(specs: dict[str, ArraySpec]) -> bool:
    """An entry whose tokens are stored as int8 with a per-token scale."""
    return TOKEN_SCALE in specs


def quantize_clip(arrays: dict[str, np.ndarray], specs: dict[str, ArraySpec]) -> dict[str, np.ndarray]:
    """A clip's arrays as a quantized entry stores them: float "tokens" replaced by int8 ones and their scale
    (unchanged when the entry is not quantized or the caller quantized already)."""
    if not is_quantized(specs) or TOKEN_SCALE in arrays or "tokens" not in arrays:
        return arrays
    arrays = dict(arrays)
    arrays["tokens"], arrays[TOKEN_SCALE] = quantize_tokens(np.asarray(arrays["tokens"], dtype=np.float32))
    return arrays


def dequantize_clip(out: dict[str, np.ndarray], names) -> dict[str, np.ndarray]:
    """A quantized clip as read (int8 tokens, their scale) -> float16 tokens; the scale stays only when
    `names` asked for it (None: every array was asked for)."""
    if TOKEN_SCALE in out and "tokens" in out:
        out["tokens"] = dequantize_tokens(out["tokens"], out[TOKEN_SCALE])
        if names and TOKEN_SCALE not in names:
            del out[TOKEN_SCALE]
    return out
