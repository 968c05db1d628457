"""The encoder registry: one module per encoder kind, loaded here and nowhere else.

Each kind module (siglip.py, nemo_fastconformer.py, parakeet.py) has the same small interface:

    KIND, MODALITY, BACKEND     its registry key, "video" or "audio", the library that runs it
    claims(name) -> bool        whether a local checkpoint is of this kind (hub ids go to the modality's default)
    load(name, *, revision, device, dtype_policy, processor) -> encoder
                                a frozen encoder with `.identity` and `.preprocessing` (recorded in the store);
                                video: `.encode_inputs(pixel inputs)` and `.processor`; audio: `.encode(waves)`
                                and `.frame_shift_s`
    write_random(path, widths, *, seed), is_complete(path)
                                a random model of the real classes, saved with the library's own saver
    find_local(record, folder), cached_copy(name, revision)
                                where a recorded encoder is under a models folder / in the local hub cache

A new encoder is one module and one line in REGISTRY. `load_encoder` is the one place any of them is loaded:
extract (`load_encoders`), predict and evaluate (from a FeatureSpec's records) and the bench go through it.
`--preset tiny` writes small random encoders once (extract/random_encoders.py) and loads them the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmfer.core.config import ExtractConfig
from mmfer.core.feature_spec import EncoderSpec
from mmfer.extract.encoders import nemo_fastconformer, parakeet, siglip
from mmfer.extract.encoders.common import EncoderLoadError
from mmfer.extract.encoders.nemo_fastconformer import AudioEncoder
from mmfer.extract.encoders.siglip import VisualEncoder

if TYPE_CHECKING:   # kind modules import torch where a model loads or runs, never at import (predict's onnxruntime path)
    import torch

log = logging.getLogger(__name__)

REGISTRY = {kind.KIND: kind for kind in (   # one line per encoder kind
    siglip,
    nemo_fastconformer,
    parakeet,
)}
DEFAULT_KINDS = {"video": siglip.KIND, "audio": nemo_fastconformer.KIND}   # for hub ids no local file claims


def kind_of(modality: str, name: str) -> str:
    """The registry kind that reads `name` for `modality`: the one whose `claims` says so, else the default."""
    for kind, module in REGISTRY.items():
        if module.MODALITY == modality and module.claims(name):
            return kind
    return DEFAULT_KINDS[modality]


def kind_module(record: dict, modality: str):
    """The registry module of a recorded `modality` encoder: its `kind`, for older records the one its model class
    says, else the modality's default.

    Raises:
        EncoderLoadError: no registered kind reads it.
    """
    kind = EncoderSpec.from_record(record).kind or DEFAULT_KINDS[modality]
    if kind not in REGISTRY:
        raise EncoderLoadError(f"{record.get('name')}: encoder kind {kind!r} is not known to this mmfer "
                               f"(it knows {sorted(REGISTRY)}); upgrade mmfer or re-extract")
    return REGISTRY[kind]


def load_encoder(modality: str, name: str, *, device: torch.device, kind: str | None = None,
                 revision: str | None = None, dtype_policy: str = "auto", processor: Any = None):
    """Load one frozen encoder through its kind's module (`kind`: a recorded one; None: `kind_of`).

    Raises:
        EncoderLoadError: the checkpoint cannot be found or read, or `kind` is not registered.
    """
    module = kind_module({"name": name, "kind": kind or kind_of(modality, name)}, modality)
    encoder = module.load(name, revision=revision, device=device, dtype_policy=dtype_policy, processor=processor)
    # recorded beside the identity (not fingerprinted: the identity says what the weights are)
    encoder.kind_record = {"kind": module.KIND, "backend": module.BACKEND}
    return encoder


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

    def encode_visual(self, pixel_inputs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Encode the frames of several clips in one batch.

        pixel_inputs: per clip, the image processor's arrays for its Tv frames
        returns (tokens float32 [N, Tv, P, Dv], pooled float32 [N, Tv, Dv])
        """
        num_frames = [next(iter(p.values())).shape[0] for p in pixel_inputs]
        joined = {key: np.concatenate([p[key] for p in pixel_inputs]) for key in pixel_inputs[0]}
        tokens, pooled = self.visual.encode_inputs(joined)
        splits = np.cumsum(num_frames)[:-1]
        # a torch encoder gives CPU tensors, an ONNX graph arrays: both read as arrays without a copy
        return (np.stack(np.split(np.asarray(tokens), splits)), np.stack(np.split(np.asarray(pooled), splits)))

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
    return EncoderPair(load_encoder("video", visual_name, revision=revision, device=device, processor=processor),
                       load_encoder("audio", audio_name, device=device))
