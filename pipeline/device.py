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


NATIVE_BF16_CAPABILITY = (8, 0)   # Ampere and later have bf16 tensor cores; older GPUs only emulate it (slowly)


def has_native_bf16(device: torch.device) -> bool:
    """True on a CUDA device of compute capability >= 8.0. Asks the given device, not the current one, and
    ignores `torch.cuda.is_bf16_supported()`, which also counts emulated bf16 (a T4 or V100 would pick it)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
