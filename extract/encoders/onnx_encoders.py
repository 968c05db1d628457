"""The frozen encoders as ONNX (`mmfer export --onnx-encoders`) and their onnxruntime stand-ins for predict.

`export_encoder_onnx` writes a loaded encoder: the vision tower takes its image processor's tensors
(pixel_values (N, 3, H, W) float32 [+ NaFlex masks]) and gives tokens (N, P, Dv) and pooled (N, Dv); the audio
encoder takes the wave itself, wave (B, S) float32 zero-padded + length (B,) int64, and runs NeMo's preprocessor
(log-mel, per-feature normalisation; no dither) and encoder in the graph, giving frames (B, Ta, Da) and
frame_lengths (B,). `OnnxVisualEncoder` / `OnnxAudioEncoder` run them with the interface of the registry's
encoders (`encode_inputs`, `encode`), so the featurizer is the same for both runtimes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

VIDEO_FILE, AUDIO_FILE = "video.onnx", "audio.onnx"
IMAGE_PROCESSOR_DIR = "video-processor"   # the vision tower's preprocessor_config.json, beside its graph
MAX_AUDIO_SAMPLES = 16_000 * 3600


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
        graph, args = _VisionGraph(encoder.model.eval(), names), tuple(example[n] for n in names)
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


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class OnnxVisualEncoder:
    """The vision tower's ONNX graph with the registry's visual interface; `record`: its features.json record."""

    def __init__(self, path: Path, record: dict) -> None:
        from mmfer.extract.encoders.siglip import load_image_processor

        self.session = _session(path)
        self.processor = load_image_processor(str(path.parent / IMAGE_PROCESSOR_DIR), revision=None)
        self.identity, self.preprocessing = dict(record["encoder"]), dict(record.get("preprocessing", {}))

    def preprocess(self, frames: np.ndarray) -> dict[str, torch.Tensor]:
        from mmfer.extract.encoders.siglip import preprocess_frames

        return preprocess_frames(self.processor, frames)

    def encode(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_inputs(self.preprocess(frames))

    def encode_inputs(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs: the image processor's tensors -> (tokens float32 (N, P, Dv), pooled float32 (N, Dv))."""
        feeds = {i.name: inputs[i.name].numpy() for i in self.session.get_inputs()}
        tokens, pooled = self.session.run(["tokens", "pooled"], feeds)
        return torch.from_numpy(tokens), torch.from_numpy(pooled)


class OnnxAudioEncoder:
    """The audio encoder's ONNX graph (wave in) with the registry's audio interface."""

    def __init__(self, path: Path, record: dict) -> None:
        self.session = _session(path)
        self.identity, self.preprocessing = dict(record["encoder"]), dict(record.get("preprocessing", {}))
        self.frame_shift_s = float(record.get("frame_shift_s") or self.preprocessing.get("frame_shift_s"))

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """waves: float32 (S_i,) mono at 16 kHz -> float32 (Ta_i, Da) each, as `AudioEncoder.encode`."""
        if not waves:
            return []
        lengths = np.array([len(w) for w in waves], dtype=np.int64)
        signal = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
        for i, wave in enumerate(waves):
            signal[i, : len(wave)] = wave
        frames, frame_lengths = self.session.run(["frames", "frame_lengths"], {"wave": signal, "length": lengths})
        return [frames[i, : int(n)].copy() for i, n in enumerate(frame_lengths)]
