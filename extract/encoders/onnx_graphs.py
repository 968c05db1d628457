"""The frozen encoders written as ONNX graphs (`mmfer export --onnx-encoders`); onnx_encoders.py runs them.

`export_encoder_onnx` writes a loaded encoder: the vision tower takes its image processor's arrays and gives
tokens and pooled; the audio encoder takes the wave itself (wave (B, S) float32 zero-padded + length (B,) int64)
and runs its preprocessing (log-mel, per-feature normalisation; no dither) and encoder in the graph, giving
frames (B, Ta, Da) and frame_lengths (B,).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmfer.extract.encoders.onnx_encoders import AUDIO_FILE, IMAGE_PROCESSOR_DIR, VIDEO_FILE

log = logging.getLogger(__name__)

MAX_AUDIO_SAMPLES = 16_000 * 3600   # the audio graph's longest input: an hour at 16 kHz


class _VisionGraph(nn.Module):
    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        out = self.model(**dict(zip(self.names, tensors)))
        return out.last_hidden_state, out.pooler_output


class _AudioGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.preprocessor, self.encoder = model.preprocessor, model.encoder

    def forward(self, wave, length):
        features, feature_lengths = self.preprocessor(input_signal=wave, length=length)   # (B, 80, T_mel)
        encoded, encoded_lengths = self.encoder(audio_signal=features, length=feature_lengths)   # (B, Da, Ta)
        return encoded.transpose(1, 2), encoded_lengths


def export_encoder_onnx(modality: str, encoder, folder: Path) -> Path:
    """Write a loaded (fp32, CPU) encoder of `modality` as ONNX into `folder`; returns the graph's path."""
    from torch.export import Dim

    folder.mkdir(parents=True, exist_ok=True)
    batch = Dim("batch", min=1, max=4096)
    if modality == "video":
        example = encoder.preprocess(np.zeros((2, 224, 224, 3), dtype=np.uint8))
        names = list(example)
        graph, args = _VisionGraph(encoder.model.eval(), names), tuple(torch.from_numpy(example[n]) for n in names)
        shapes, outputs, path = (tuple({0: batch} for _ in names),), ["tokens", "pooled"], folder / VIDEO_FILE
        encoder.processor.save_pretrained(str(folder / IMAGE_PROCESSOR_DIR))
    else:
        # the transformers kind is one wave-in module already (parakeet.WaveEncoder); NeMo's is two, joined here
        graph = encoder.graph if hasattr(encoder, "graph") else _AudioGraph(encoder.model.eval())
        names = ["wave", "length"]
        args = (torch.randn(2, 16_000) * 0.1, torch.tensor([16_000, 12_000]))
        shapes = ({0: batch, 1: Dim("samples", min=1_600, max=MAX_AUDIO_SAMPLES)}, {0: batch})
        outputs, path = ["frames", "frame_lengths"], folder / AUDIO_FILE
    with torch.no_grad():
        program = torch.onnx.export(graph.eval(), args, dynamo=True, dynamic_shapes=shapes, input_names=names,
                                    output_names=outputs, verbose=False)
    program.save(str(path))
    log.info("wrote the %s encoder as %s (%.1f MB)", modality, path, path.stat().st_size / 1e6)
    return path
