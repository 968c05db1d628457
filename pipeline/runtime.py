"""What runs predict's fold models: PyTorch (`TorchRuntime`) or onnxruntime (`OnnxRuntime`, `--runtime onnx`).

Both take one-clip batches of numpy arrays (train's `stack_clips`) and return their probabilities (N, C) float64,
the mean over the bundle's fold models. Decoding, the featurizer and the encoders are the Predictor's, the same
for both. Only `TorchRuntime` imports torch: a deployment of an `--onnx-encoders` export runs without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:   # torch is imported where the PyTorch runtime runs, never for onnxruntime
    import torch


class TorchRuntime:
    """One FusionModel; each fold's weights loaded in turn (once per call), every batch run under autocast."""

    def __init__(self, model: torch.nn.Module, states: list[dict], device: torch.device, amp_dtype) -> None:
        self.model, self.states, self.device, self.amp_dtype = model, states, device, amp_dtype
        if len(states) == 1:
            self.model.load_state_dict(states[0])

    def __call__(self, batches: list[dict]) -> np.ndarray:
        import torch

        from mmfer.train.dataset import batch_tensors, to_device

        total = None
        for state in self.states:
            if len(self.states) > 1:
                self.model.load_state_dict(state)
            for i, batch in enumerate(batches):
                with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                                            enabled=self.amp_dtype is not None):
                    probs = self.model(to_device(batch_tensors(batch), self.device))["probabilities"].float().cpu().numpy()
                total = np.zeros((len(batches), probs.shape[1])) if total is None else total
                total[i] += probs[0]
        return total / len(self.states)


class OnnxRuntime:
    """One onnxruntime session per fold model's ONNX file (written by `mmfer export --onnx`), on the CPU."""

    def __init__(self, paths: list[Path]) -> None:
        ort = require_onnx("--runtime onnx", "onnxruntime")
        self.sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]

    def __call__(self, batches: list[dict]) -> np.ndarray:
        total = None
        for session in self.sessions:
            names = [i.name for i in session.get_inputs()]
            for i, batch in enumerate(batches):
                (probs,) = session.run(["probabilities"], {n: onnx_array(batch[n]) for n in names})
                total = np.zeros((len(batches), probs.shape[1])) if total is None else total
                total[i] += probs[0]
        return total / len(self.sessions)


def onnx_array(array: np.ndarray) -> np.ndarray:
    """A batch array as the ONNX graph takes it: tokens float32 (as `to_device` casts them), masks bool."""
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def require_onnx(what: str, module: str):
    """`module` imported, or a one-line ConfigError naming the extra that installs it."""
    import importlib

    from mmfer.core.errors import ConfigError

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"{what} needs {module}, which is not installed: pip install 'mmfer[onnx]'") from err
