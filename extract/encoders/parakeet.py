"""Frozen FastConformer through transformers (ParakeetEncoder): 16 kHz mono waves in, time-first frame tokens out.

The same encoder as the NeMo kind (nemo_fastconformer.py) without NeMo: a transformers folder (config.json of a
`parakeet_encoder` or `parakeet_ctc` model, weights, preprocessor_config.json), read with `from_pretrained`;
`mmfer convert-encoder` writes one from a .nemo file (nemo_convert.py). `AudioEncoder.encode` runs `WaveEncoder`
(parakeet_wave.py): the folder's ParakeetFeatureExtractor settings and mel filters computed in torch ops (NeMo's
inference preprocessing, exportable to ONNX), then the encoder, on a padded batch; one float32 (Ta, Da) array per
clip, cut to its valid frames: the NeMo kind's outputs, within 1e-4 (tests/test_parakeet.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmfer.extract.encoders.common import (AUDIO_FRAME_SHIFT_S, AUDIO_SAMPLE_RATE_HZ, EncoderLoadError,
                                           offline_advice, pad_waves, walk)

if TYPE_CHECKING:   # torch is imported where a model runs: predict's onnxruntime path never imports it
    import torch

log = logging.getLogger(__name__)

# This kind's entry in the encoder registry (extract/encoders/__init__.py)
KIND = "parakeet"
MODALITY = "audio"
BACKEND = "transformers"

_MODEL_TYPES = {"parakeet_encoder", "parakeet_ctc"}   # an encoder alone, or a CTC model whose .encoder we use


class AudioEncoder:
    """A loaded, frozen ParakeetEncoder and its feature extractor's settings (the NeMo kind's AudioEncoder interface)."""

    def __init__(self, model: torch.nn.Module, feature_extractor: Any, *, device: torch.device,
                 frame_shift_s: float, identity: dict, preprocessing: dict) -> None:
        self.model = model
        from mmfer.extract.encoders.parakeet_wave import WaveEncoder

        self.feature_extractor = feature_extractor
        self.graph = WaveEncoder(model, feature_extractor).to(device).eval()
        self.device = device
        self.frame_shift_s = frame_shift_s
        self.identity = identity
        self.preprocessing = preprocessing

    def _batch(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(signal float32 (B, S_max) zero-padded, lengths long (B,)) on the encoder's device."""
        import torch

        signal, lengths = pad_waves(waves)
        return torch.from_numpy(signal).to(self.device), torch.from_numpy(lengths).to(self.device)

    def features(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features of a zero-padded batch, NeMo's layout: waves float32 (S_i,) at 16 kHz ->
        (features float32 (B, 80, T_mel), zero past each clip's valid frames; valid frames long (B,))."""
        import torch

        with torch.inference_mode():
            feats, num_frames = self.graph.features(*self._batch(waves))
        return feats.cpu(), num_frames.cpu()

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Encode a batch of clips.

        waves: list of float32 (S_i,) mono at 16 kHz
        returns list of float32 (Ta_i, Da), Ta_i = the encoder's own output length for clip i
        (about S_i / 16000 / frame_shift_s)
        """
        if not waves:
            return []
        import torch

        with torch.inference_mode():
            encoded, enc_lengths = self.graph(*self._batch(waves))   # (B, Ta, Da): time-first already
        encoded = encoded.float().cpu()
        return [encoded[i, : int(n)].numpy().copy() for i, n in enumerate(enc_lengths.cpu())]


def _model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") if config.is_file() else None
    except (OSError, ValueError):
        return None


def claims(name_or_path: str) -> bool:
    """A local folder whose config.json names a Parakeet (FastConformer) model; hub ids are the default kind's."""
    return _model_type(Path(name_or_path)) in _MODEL_TYPES


def load(name_or_path: str, *, revision: str | None, device: torch.device, dtype_policy: str = "auto",
         processor: Any = None) -> AudioEncoder:
    """The registry's entry point: `load_audio_encoder` (fp32, as the NeMo kind)."""
    return load_audio_encoder(name_or_path, revision=revision, device=device)


def is_complete(path: Path) -> bool:
    """A folder `write_random` or `convert_nemo` finished (both rename it into place last)."""
    return all((path / name).is_file() for name in ("config.json", "model.safetensors", "preprocessor_config.json"))


def find_local(record: dict, folder: Path) -> Path | None:
    """A Parakeet folder under `folder` whose weights hash is the recorded one (same-named folders first)."""
    name = Path(str(record.get("name", ""))).name
    folders = sorted({p.parent for p in walk(folder) if p.name == "config.json" and claims(str(p.parent))},
                     key=lambda p: p.name != name)
    return next((p for p in folders if _weights_sha256(p) == record.get("weights_sha256")), None)


def cached_copy(name: str, revision: str | None) -> Path | None:
    """A hub id's snapshot folder in the local HF cache, or None."""
    from transformers.utils import cached_file

    try:
        return Path(cached_file(name, "config.json", revision=revision, local_files_only=True)).parent
    except OSError:
        return None


def _weights_sha256(folder: Path) -> str | None:
    """sha256 of the folder's weight files, in name order (the same files give the same hash)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_audio_encoder(name_or_path: str, *, revision: str | None = None,
                       device: str | torch.device = "cpu") -> AudioEncoder:
    """Load a transformers FastConformer folder (or a cached hub id) as a frozen, deterministic encoder.

    Raises:
        EncoderLoadError: not a Parakeet folder, not cached and not downloadable, or not a 16 kHz model.
    """
    import torch
    from transformers import ParakeetEncoder, ParakeetFeatureExtractor, ParakeetForCTC

    device = torch.device(device)
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        folder = cached_copy(name_or_path, revision)
        if folder is None:
            raise EncoderLoadError(f"{name_or_path}: no such transformers FastConformer folder and not in the local "
                                   f"HF cache. To fix it, {offline_advice(name_or_path)}; or convert a .nemo file "
                                   "with `mmfer convert-encoder FILE.nemo --out DIR`")
    model_type = _model_type(folder)
    if model_type not in _MODEL_TYPES:
        raise EncoderLoadError(f"{folder}: config.json model_type is {model_type!r}, not a Parakeet FastConformer "
                               f"({sorted(_MODEL_TYPES)}); convert a .nemo file with `mmfer convert-encoder`")
    try:
        if model_type == "parakeet_ctc":
            model = ParakeetForCTC.from_pretrained(folder).encoder
        else:
            model = ParakeetEncoder.from_pretrained(folder)
        feature_extractor = ParakeetFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise EncoderLoadError(f"{folder}: cannot load this transformers FastConformer ({err}); is it complete?") from err
    model.to(device).eval().requires_grad_(False)
    fe = feature_extractor
    if fe.sampling_rate != AUDIO_SAMPLE_RATE_HZ:
        raise EncoderLoadError(f"{folder}: model expects {fe.sampling_rate} Hz audio, this pipeline decodes at "
                               f"{AUDIO_SAMPLE_RATE_HZ} Hz; pick a 16 kHz model")
    cfg = model.config
    frame_shift_s = round(fe.hop_length / fe.sampling_rate * cfg.subsampling_factor, 6)
    if abs(frame_shift_s - AUDIO_FRAME_SHIFT_S) > 1e-9:
        log.warning("%s: audio frame shift %.3f s, not the FastConformer %.2f s; audio_mask steps change",
                    name_or_path, frame_shift_s, AUDIO_FRAME_SHIFT_S)
    identity = {
        "name": name_or_path,
        "model_class": type(model).__name__,
        "weights_sha256": _weights_sha256(folder),
        "encoder_class": type(model).__name__,
        "d_model": int(cfg.hidden_size),
        "n_layers": int(cfg.num_hidden_layers),
        "subsampling_factor": int(cfg.subsampling_factor),
    }
    preprocessing = {
        "preprocessor_class": type(fe).__name__,
        "sample_rate_hz": int(fe.sampling_rate),
        "window_size_s": fe.win_length / fe.sampling_rate,
        "window_stride_s": fe.hop_length / fe.sampling_rate,
        "window": "hann",
        "n_fft": int(fe.n_fft),
        "features": int(fe.feature_size),
        "normalize": "per_feature",
        "log": True,
        "preemph": fe.preemphasis,
        "dither": 0.0,
        "frame_shift_s": frame_shift_s,
        "batching": "zero-padded batch with lengths; features and normalization masked per clip",
    }
    log.info("audio encoder %s (%s via transformers, Da=%d, %d layers, %.3f s/frame) on %s", name_or_path,
             type(model).__name__, identity["d_model"], identity["n_layers"], frame_shift_s, device)
    return AudioEncoder(model, feature_extractor, device=device, frame_shift_s=frame_shift_s, identity=identity,
                        preprocessing=preprocessing)


def write_random(folder: Path, widths: dict, *, seed: int) -> None:
    """A random FastConformer of encoder `widths` (NeMo ConformerEncoder fields, the NeMo kind's random config) as
    a transformers folder, saved with `save_pretrained`; no NeMo needed (via a temporary folder, so a crash leaves
    no half model). The NeMo kind's random .nemo takes these weights (random_encoders.ensure_nemo_audio)."""
    import torch
    from transformers import ParakeetEncoder, ParakeetEncoderConfig, ParakeetFeatureExtractor

    from mmfer.extract.encoders.nemo_convert import encoder_config, feature_config
    from mmfer.extract.encoders.nemo_fastconformer import random_model_config

    config = random_model_config(widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ParakeetEncoder(ParakeetEncoderConfig(**encoder_config(config))).eval()
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        ParakeetFeatureExtractor(**feature_config(config)).save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote random FastConformer (%s) as a transformers folder to %s", widths, folder)
