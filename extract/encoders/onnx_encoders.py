"""The frozen encoders' ONNX graphs (`mmfer export --onnx-encoders`, written by onnx_graphs.py) run in onnxruntime
for predict, without torch.

The vision graph takes its image processor's arrays (pixel_values (N, 3, H, W) float32 [+ NaFlex masks]) and
gives tokens (N, P, Dv) and pooled (N, Dv); the audio graph takes the wave itself, wave (B, S) float32
zero-padded + length (B,) int64, runs the preprocessing (log-mel, per-feature normalisation; no dither) and the
encoder, and gives frames (B, Ta, Da) and frame_lengths (B,). `OnnxVisualEncoder` / `OnnxAudioEncoder` run them
with the interface of the registry's encoders (`encode_inputs`, `encode`), so the featurizer is the same for
both runtimes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmfer.extract.encoders.common import pad_waves

VIDEO_FILE, AUDIO_FILE = "video.onnx", "audio.onnx"
IMAGE_PROCESSOR_DIR = "video-processor"   # the vision tower's preprocessor_config.json, beside its graph


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

    def preprocess(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        from mmfer.extract.encoders.siglip import preprocess_frames

        return preprocess_frames(self.processor, frames)

    def encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_inputs(self.preprocess(frames))

    def encode_inputs(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """inputs: the image processor's arrays -> (tokens float32 (N, P, Dv), pooled float32 (N, Dv))."""
        tokens, pooled = self.session.run(["tokens", "pooled"], {i.name: inputs[i.name] for i in self.session.get_inputs()})
        return tokens, pooled


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
        signal, lengths = pad_waves(waves)
        frames, frame_lengths = self.session.run(["frames", "frame_lengths"], {"wave": signal, "length": lengths})
        return [frames[i, : int(n)].copy() for i, n in enumerate(frame_lengths)]
