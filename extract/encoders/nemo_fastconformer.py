"""Frozen NeMo FastConformer encoder: 16 kHz mono waves in, time-first frame tokens out.

`load_audio_encoder` restores a `.nemo` file or a pretrained name with NeMo's own loaders; `AudioEncoder.encode`
runs the model's own preprocessor (mel, per-feature normalization) and encoder on a padded batch and returns one
float32 (Ta, Da) array per clip, cut to its true length. Randomness (dither, pad_to) is switched off at load.
"""

from __future__ import annotations

import hashlib
import logging
import os
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
KIND = "nemo-fastconformer"
MODALITY = "audio"
BACKEND = "nemo"



class AudioEncoder:
    """A loaded, frozen NeMo ASR model used only up to its encoder output."""

    def __init__(self, model: torch.nn.Module, *, device: torch.device, frame_shift_s: float,
                 identity: dict, preprocessing: dict) -> None:
        self.model = model
        self.device = device
        self.frame_shift_s = frame_shift_s
        self.identity = identity
        self.preprocessing = preprocessing

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """Encode a batch of clips.

        waves: list of float32 (S_i,) mono at 16 kHz
        returns list of float32 (Ta_i, Da), Ta_i = the encoder's own output length for clip i
        (about S_i / 16000 / frame_shift_s)
        """
        if not waves:
            return []
        import torch

        signal, lengths = (torch.from_numpy(a).to(self.device) for a in pad_waves(waves))   # (B, S) zero-padded, (B,)
        with torch.inference_mode():
            feats, feat_lengths = self.model.preprocessor(input_signal=signal, length=lengths)  # (B, 80, T_mel)
            encoded, enc_lengths = self.model.encoder(audio_signal=feats, length=feat_lengths)  # (B, Da, Ta)
        encoded = encoded.float().transpose(1, 2).cpu()  # (B, Ta, Da): time-first from here on
        return [encoded[i, : int(n)].numpy().copy() for i, n in enumerate(enc_lengths.cpu())]


def claims(name_or_path: str) -> bool:
    """A .nemo file (a hub id is the default kind's)."""
    return name_or_path.endswith(".nemo")


def load(name_or_path: str, *, revision: str | None, device: torch.device, dtype_policy: str = "auto",
         processor: Any = None) -> "AudioEncoder":
    """The registry's entry point: `load_audio_encoder` (a .nemo file carries no revision; NeMo runs fp32)."""
    return load_audio_encoder(name_or_path, device=device)


def is_complete(path: Path) -> bool:
    """A file `write_random` finished (it is renamed into place last)."""
    return path.is_file()


def find_local(record: dict, folder: Path) -> Path | None:
    """A .nemo file of the recorded name under `folder` (its weights are checked once loaded)."""
    name = Path(str(record.get("name", ""))).name
    return next((p for p in walk(folder) if p.is_file() and p.suffix == ".nemo" and p.name == name), None)


def cached_copy(name: str, revision: str | None) -> Path | None:
    """A hub id's .nemo file in the local HF cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, f"{name.split('/')[-1]}.nemo")
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def load_audio_encoder(name_or_path: str, *,
                       device: str | torch.device = "cpu") -> AudioEncoder:
    """Load a NeMo ASR model (FastConformer CTC by default) as a frozen, deterministic encoder.

    Args:
        name_or_path: a local `.nemo` file, or a pretrained name (HF hub id such as
            nvidia/stt_en_fastconformer_ctc_large, read from the HF cache when it is there).
        device: where the model runs (fp32).

    Raises:
        EncoderLoadError: the file is missing, or the name is not cached and cannot be downloaded.
    """
    path = Path(name_or_path).expanduser()
    if not path.is_file() and (name_or_path.endswith(".nemo") or os.path.isabs(name_or_path)
                               or name_or_path.startswith(".")):
        raise EncoderLoadError(f"{name_or_path}: no such .nemo file; check the path")
    import torch

    ASRModel = _nemo_asr_model(name_or_path)
    device = torch.device(device)
    nemo_path = _resolve_nemo_file(name_or_path, ASRModel)
    try:
        model = ASRModel.restore_from(str(nemo_path), map_location=device)
    except (OSError, RuntimeError, KeyError) as err:
        raise EncoderLoadError(f"{nemo_path}: cannot restore this .nemo file ({err}); is it a NeMo ASR model "
                               "and complete? Download it again") from err
    model.eval().requires_grad_(False)

    featurizer = model.preprocessor.featurizer
    before = {"dither": featurizer.dither, "pad_to": featurizer.pad_to,
              "nb_augmentation_prob": featurizer.nb_augmentation_prob}
    featurizer.dither = 0.0  # dither adds random noise to every sample
    featurizer.pad_to = 0  # padding to a multiple of 16 frames would only add masked frames
    featurizer.nb_augmentation_prob = 0.0  # random narrow-band augmentation
    if hasattr(model.encoder, "sync_max_audio_length"):
        # else every forward all-reduces its length over a torchrun group: ranks encoding different numbers
        # of clips would wait on each other forever (only the positional table's size depends on it)
        model.encoder.sync_max_audio_length = False

    pre_cfg, enc_cfg = model.cfg.preprocessor, model.cfg.encoder
    sample_rate_hz = int(pre_cfg.get("sample_rate", featurizer.sample_rate))
    if sample_rate_hz != AUDIO_SAMPLE_RATE_HZ:
        raise EncoderLoadError(f"{name_or_path}: model expects {sample_rate_hz} Hz audio, this pipeline "
                               f"decodes at {AUDIO_SAMPLE_RATE_HZ} Hz; pick a 16 kHz model")
    window_stride_s = float(pre_cfg.window_stride)
    hop_s = featurizer.hop_length / sample_rate_hz
    if abs(hop_s - window_stride_s) > 1e-9:
        raise EncoderLoadError(f"{name_or_path}: config window_stride {window_stride_s} s but featurizer hop "
                               f"{hop_s} s; the .nemo config is inconsistent")
    subsampling_factor = int(enc_cfg.get("subsampling_factor", 1))
    frame_shift_s = round(window_stride_s * subsampling_factor, 6)
    if abs(frame_shift_s - AUDIO_FRAME_SHIFT_S) > 1e-9:
        log.warning("%s: audio frame shift %.3f s, not the FastConformer %.2f s; audio_mask steps change",
                    name_or_path, frame_shift_s, AUDIO_FRAME_SHIFT_S)

    identity = {
        "name": name_or_path,
        "model_class": type(model).__name__,
        "weights_sha256": _state_dict_sha256(model),
        "encoder_class": type(model.encoder).__name__,
        "d_model": int(enc_cfg.d_model),
        "n_layers": int(enc_cfg.n_layers),
        "subsampling": enc_cfg.get("subsampling"),
        "subsampling_factor": subsampling_factor,
    }
    preprocessing = {
        "preprocessor_class": type(model.preprocessor).__name__,
        "sample_rate_hz": sample_rate_hz,
        "window_size_s": float(pre_cfg.window_size),
        "window_stride_s": window_stride_s,
        "window": pre_cfg.get("window"),
        "n_fft": featurizer.n_fft,
        "features": int(pre_cfg.features),
        "normalize": pre_cfg.get("normalize"),
        "log": pre_cfg.get("log"),
        "preemph": featurizer.preemph,
        "dither": 0.0,
        "pad_to": 0,
        "nb_augmentation_prob": 0.0,
        "config_before_override": before,
        "frame_shift_s": frame_shift_s,
        "batching": "zero-padded batch with lengths; features and normalization masked per clip",
    }
    log.info("audio encoder %s (%s, Da=%d, %d layers, %.3f s/frame) on %s", name_or_path,
             type(model.encoder).__name__, identity["d_model"], identity["n_layers"], frame_shift_s, device)
    return AudioEncoder(model, device=device, frame_shift_s=frame_shift_s, identity=identity,
                        preprocessing=preprocessing)


def _nemo_asr_model(name_or_path: str):
    """NeMo's ASRModel class.

    Raises:
        EncoderLoadError: NeMo is not installed (it is the `nemo` extra); the message gives both ways on.
    """
    try:
        from nemo.collections.asr.models import ASRModel
    except ImportError as err:
        raise EncoderLoadError(f"{name_or_path}: reading a .nemo with NeMo needs nemo_toolkit, which is not installed "
                               f"({err}); pip install 'mmfer[nemo]', or convert it once with `mmfer convert-encoder "
                               f"{name_or_path} --out DIR` and pass --audio-encoder DIR (no NeMo needed)") from err
    return ASRModel


def _resolve_nemo_file(name_or_path: str, asr_model_class: Any) -> Path:
    """A local .nemo path as is; a pretrained name -> its cached (or freshly downloaded) .nemo file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if name_or_path.endswith(".nemo") or os.path.isabs(name_or_path) or name_or_path.startswith("."):
        raise EncoderLoadError(f"{name_or_path}: no such .nemo file; check the path")
    if "/" in name_or_path:  # HF hub id: use the cached file without touching the network when it is there
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, f"{name_or_path.split('/')[-1]}.nemo")
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
    advice = offline_advice(name_or_path)
    try:
        model_file = asr_model_class.from_pretrained(name_or_path, return_model_file=True)
    except Exception as err:  # hub and NGC raise OSError, httpx or requests errors, FileNotFoundError...
        raise EncoderLoadError(f"{name_or_path}: cannot fetch the NeMo audio encoder "
                               f"({type(err).__name__}: {err}). To fix it, {advice}") from err
    if not Path(model_file).is_file():
        raise EncoderLoadError(f"{name_or_path}: NeMo returned {model_file}, not a .nemo file. To fix it, {advice}")
    return Path(model_file)


def _state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: the same weights give the same hash,
    whatever .nemo packaging (tar mtimes) they came in."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        shape = tensor.shape
        tensor = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed as bytes
        digest.update(f"{name}:{tensor.dtype}:{tuple(shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


RANDOM_CHAR_LABELS = [" ", "a", "e", "i", "o", "u", "n", "s", "t", "'"]   # a random model's CTC vocabulary


def random_model_config(widths: dict) -> dict:
    """NeMo config of a random CTC model: FastConformer layout (dw_striding x8, kernel 9), encoder `widths`."""
    config = {
        "sample_rate": 16_000,
        "labels": RANDOM_CHAR_LABELS,
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
        "optim": None,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16_000,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": 80,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 0.0,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 80,
            "feat_out": -1,
            "n_layers": 2,
            "d_model": 64,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": 32,
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": 2,
            "att_context_size": [-1, -1],
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "batch_norm",
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": 64,
            "num_classes": len(RANDOM_CHAR_LABELS),
            "vocabulary": RANDOM_CHAR_LABELS,
        },
    }
    config["encoder"].update(widths)
    config["decoder"]["feat_in"] = widths["d_model"]
    return config


def write_random(audio_nemo: Path, widths: dict, *, seed: int, encoder_weights: dict | None = None) -> None:
    """A random FastConformer CTC model of encoder `widths`, saved with NeMo's own `save_to` as `audio_nemo`
    (via a temporary file, so a crash leaves no half model). `encoder_weights`: the encoder's weights under NeMo
    names (the transformers stand-in's, so both backends hold the same model); None: NeMo's random ones."""
    import torch
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(random_model_config(widths))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncDecCTCModel(cfg=cfg).eval()
    if encoder_weights is not None:
        model.encoder.load_state_dict(encoder_weights, strict=True)
    fd, tmp_name = tempfile.mkstemp(prefix=audio_nemo.name + ".tmp-", suffix=".nemo", dir=audio_nemo.parent)
    os.close(fd)
    try:
        model.save_to(tmp_name)
        os.replace(tmp_name, audio_nemo)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("wrote random FastConformer CTC model (%s) to %s", widths, audio_nemo)
