"""What every encoder kind shares: the load error and the advice it gives when a checkpoint is not here, and what
both FastConformer kinds (NeMo, transformers) require of an audio model."""

from __future__ import annotations

from pathlib import Path
import numpy as np

from mmfer.core.errors import MmferError


# The FastConformer audio kinds (nemo_fastconformer.py, parakeet.py) and the .nemo converter: the models' rate
AUDIO_SAMPLE_RATE_HZ = 16_000
AUDIO_FRAME_SHIFT_S = 0.08  # 10 ms mel hop x 8 subsampling (FastConformer); other models are logged


class EncoderLoadError(MmferError, RuntimeError):
    """An encoder checkpoint could not be found or read; the message says what to do."""


def offline_advice(name: str) -> str:
    """The three ways out when a checkpoint is not on this machine."""
    return (
        f"either download it ahead while online (`hf download {name}`, or `huggingface-cli download {name}`), "
        f"pass a local path instead of {name!r}, or use `--preset tiny` for small random stand-in encoders"
    )


MAX_SEARCH_DEPTH = 4   # folders below a models dir that `walk` looks into


def walk(folder: Path) -> list[Path]:
    """Every file and folder up to MAX_SEARCH_DEPTH levels below `folder` (no symlinked folders), level by level."""
    out, level = [], [folder]
    for _ in range(MAX_SEARCH_DEPTH):
        level = [p for d in level for p in sorted(d.iterdir())] if level else []
        out += level
        level = [p for p in level if p.is_dir() and not p.is_symlink()]
    return out


def pad_waves(waves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """What every audio encoder (both FastConformer kinds, and their ONNX graphs) is fed: waves float32 (S_i,) ->
    (signal float32 (B, S_max) zero-padded, lengths int64 (B,)).

    Raises:
        ValueError: a wave that is not a non-empty 1-D array.
    """
    for i, wave in enumerate(waves):
        if np.ndim(wave) != 1 or len(wave) == 0:
            raise ValueError(f"wave {i}: want a non-empty 1-D float array, got shape {np.shape(wave)}")
    lengths = np.array([len(wave) for wave in waves], dtype=np.int64)
    signal = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
    for i, wave in enumerate(waves):
        signal[i, : len(wave)] = wave
    return signal, lengths
