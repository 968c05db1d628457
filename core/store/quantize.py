"""A clip's arrays as the store holds them: the write cast (`as_stored`) and int8 tokens (`extract --token-dtype
int8`: float tokens in, int8 tokens and a float16 scale per token out).

The Zarr writer runs `as_stored` on the way in; both backends dequantize on the way out, so training reads
float16 whichever way they were stored. Predict runs `as_stored(..., read_back=True)` on freshly encoded
features, so its inputs are the cache's. Pure numpy: no store file is touched here.
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


def as_stored(clip_id: str, arrays: dict[str, np.ndarray], specs: dict, what: str, *,
              read_back: bool = False) -> dict[str, np.ndarray]:
    """`arrays` checked against `specs` (name -> ArraySpec or (shape, dtype): names, shapes, finite) and cast to the
    stored dtypes, int8 tokens quantized with their scale: what a write puts in the store. `read_back`: as a read
    returns them (int8 tokens dequantized to float16).

    Raises:
        ValueError: names, a shape or NaN/Inf differ from what the store holds; names the clip and array.
    """
    specs = {n: s if isinstance(s, ArraySpec) else ArraySpec(tuple(s[0]), str(s[1])) for n, s in specs.items()}
    if "tokens" in specs and specs["tokens"].dtype == "int8" and TOKEN_SCALE not in specs:
        specs[TOKEN_SCALE] = ArraySpec(specs["tokens"].shape[:-1], "float16")
    arrays = quantize_clip(arrays, specs)
    if set(arrays) != set(specs):
        raise ValueError(f"clip {clip_id}: {what} arrays {sorted(arrays)} != {sorted(specs)}")
    prepared = {}
    for name, value in arrays.items():
        spec = specs[name]
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"clip {clip_id}: {what}/{name} contains NaN or Inf; refusing to store it")
        if value.shape != spec.shape:
            raise ValueError(f"clip {clip_id}: {what}/{name} has shape {value.shape}, the store expects {spec.shape}")
        prepared[name] = value.astype(spec.dtype, copy=False)
    return dequantize_clip(prepared, [n for n in specs if n != TOKEN_SCALE]) if read_back else prepared
