"""`--device auto|cpu|cuda|cuda:N` -> torch.device, the same way for extract, train-fusion, predict and bench."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu.

    Raises:
        RuntimeError: a CUDA device was asked for on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device
