"""`--device auto|cpu|cuda|cuda:N` -> torch.device, the same way for extract, train-fusion, predict and bench."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmfer.core.errors import ConfigError

if TYPE_CHECKING:
    import torch


class DeviceError(ConfigError):
    """A --device this machine cannot give (a misspelt name, or CUDA without a GPU); exit code 2."""


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu.

    Raises:
        DeviceError: not a device name, or a CUDA device was asked for that this machine does not have.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name}: mmfer runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


NATIVE_BF16_CAPABILITY = (8, 0)   # Ampere and later have bf16 tensor cores; older GPUs only emulate it (slowly)


def has_native_bf16(device: torch.device) -> bool:
    """True on a CUDA device of compute capability >= 8.0. Asks the given device, not the current one, and
    ignores `torch.cuda.is_bf16_supported()`, which also counts emulated bf16 (a T4 or V100 would pick it)."""
    import torch

    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= NATIVE_BF16_CAPABILITY
