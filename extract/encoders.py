"""The pair of frozen encoders one extract run uses, chosen by preset, with batched encode calls.

`--preset tiny` writes small random encoders of the real classes once (extract/random_encoders.py) and loads
them through exactly the same loaders as pretrained checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmfer.extract.audio import AudioEncoder, load_audio_encoder
from mmfer.extract.visual import VisualEncoder, load_visual_encoder
from mmfer.core.config import ExtractConfig

log = logging.getLogger(__name__)


@dataclass
class EncoderPair:
    visual: VisualEncoder
    audio: AudioEncoder

    def visual_token_shape(self) -> tuple[int, int]:
        """(P, Dv) of one frame, from a real forward pass on one blank frame."""
        tokens, _ = self.visual.encode(np.zeros((1, 224, 224, 3), dtype=np.uint8))
        return int(tokens.shape[1]), int(tokens.shape[2])

    def audio_token_shape(self, max_audio_s: float, sample_rate_hz: int) -> tuple[int, int]:
        """(Ta_max, Da): encoder frames of the longest audio a clip may have, from a real forward pass."""
        (frames,) = self.audio.encode([np.zeros(int(round(max_audio_s * sample_rate_hz)), dtype=np.float32)])
        return int(frames.shape[0]), int(frames.shape[1])

    def encode_visual(self, pixel_inputs: list[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """Encode the frames of several clips in one batch.

        pixel_inputs: per clip, the image processor's tensors for its Tv frames
        returns (tokens float32 [N, Tv, P, Dv], pooled float32 [N, Tv, Dv])
        """
        num_frames = [next(iter(p.values())).shape[0] for p in pixel_inputs]
        joined = {key: torch.cat([p[key] for p in pixel_inputs]) for key in pixel_inputs[0]}
        tokens, pooled = self.visual.encode_inputs(joined)
        splits = np.cumsum(num_frames)[:-1]
        return (np.stack(np.split(tokens.numpy(), splits)), np.stack(np.split(pooled.numpy(), splits)))

    def encode_audio(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """waves: per clip float32 [S] at 16 kHz -> per clip float32 [Ta, Da] (time-first, true length)."""
        if not waves:
            return []
        return [np.asarray(frames, dtype=np.float32) for frames in self.audio.encode(waves)]


def encoder_names(cfg: ExtractConfig) -> tuple[str, str, str | None]:
    """(visual name or folder, audio name or .nemo file, visual hub revision) of the run's encoders; for
    --preset tiny the tiny ones in models_dir, written there first if absent."""
    if cfg.preset == "tiny":
        from mmfer.extract.random_encoders import ensure_tiny_encoders

        visual_path, audio_path = ensure_tiny_encoders(cfg.models_dir)
        return str(visual_path), str(audio_path), None
    return cfg.visual_encoder, cfg.audio_encoder, cfg.visual_revision


def load_encoders(cfg: ExtractConfig, device: torch.device, *, processor: Any = None) -> EncoderPair:
    """The run's encoders (`encoder_names`); `processor`: the visual one's `load_image_processor`, when the caller
    loaded it first (extract does, to start its decode workers before the weights load)."""
    visual_name, audio_name, revision = encoder_names(cfg)
    visual = load_visual_encoder(visual_name, revision=revision, device=device, processor=processor)
    audio = load_audio_encoder(audio_name, device=device)
    return EncoderPair(visual, audio)
