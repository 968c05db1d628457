"""A FastConformer `.nemo` file -> a transformers folder (ParakeetEncoder + ParakeetFeatureExtractor), without NeMo.

A `.nemo` is a tar of `model_config.yaml` and `model_weights.ckpt` (a plain state dict), so `convert_nemo` reads it
with tarfile, yaml and torch.load, checks that every setting the encoder or its preprocessor uses is one the
transformers classes compute the same way (else `UnconvertibleNemoError`, one line naming the file and the
setting), renames the encoder's weights and saves both with transformers' own `save_pretrained`.
The parakeet kind (parakeet.py) reads the result; `mmfer convert-encoder` and the random writer call this.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tarfile
import uuid
from pathlib import Path

import torch

from mmfer.core.errors import BadInputError
from mmfer.extract.encoders.common import AUDIO_SAMPLE_RATE_HZ, EncoderLoadError, offline_advice

log = logging.getLogger(__name__)

PROVENANCE_FILE = "converted_from.json"   # what convert_nemo read: file name, size, config; not read back

# What the transformers classes implement, NeMo's name and default for each setting (the ConformerEncoder and
# AudioToMelSpectrogramPreprocessor signatures of nemo_toolkit 3.0): a .nemo that sets anything else is refused.
ENCODER_FIXED = {
    "subsampling": ("dw_striding", "striding"),   # ParakeetEncoderSubsamplingConv2D: depthwise-separable 3x3/2 convs
    "causal_downsampling": (False, False),
    "self_attention_model": ("rel_pos", "rel_pos"),  # Transformer-XL relative positions, sin/cos table
    "att_context_size": ([-1, -1], None),         # the whole clip; limited context would need its chunk masks
    "att_context_style": ("regular", "regular"),
    "conv_norm_type": ("batch_norm", "batch_norm"),
    "conv_context_size": (None, None),            # None: symmetric (kernel-1)/2 padding, as ParakeetEncoder pads
    "untie_biases": (True, True),                 # per-layer pos_bias_u/v (ParakeetEncoderAttention.bias_u/v)
    "reduction": (None, None),                    # no time reduction inside the layers
    "global_tokens": (0, 0),                      # no Longformer global tokens
    "feat_out": (-1, -1),                         # no projection after the last layer
}
ENCODER_DEFAULTS = {"subsampling_factor": 4, "subsampling_conv_channels": -1, "ff_expansion_factor": 4,
                    "n_heads": 4, "conv_kernel_size": 31, "xscaling": True, "use_bias": True, "pos_emb_max_len": 5000}
PREPROCESSOR_CLASS = "AudioToMelSpectrogramPreprocessor"
PREPROCESSOR_FIXED = {                            # ParakeetFeatureExtractor's fixed choices
    "sample_rate": (AUDIO_SAMPLE_RATE_HZ, 16000),
    "window": ("hann", "hann"),
    "normalize": ("per_feature", "per_feature"),
    "log": (True, True),
    "log_zero_guard_type": ("add", "add"),
    "log_zero_guard_value": (2 ** -24, 2 ** -24),
    "frame_splicing": (1, 1),
    "exact_pad": (False, False),
    "mag_power": (2.0, 2.0),
    "lowfreq": (0, 0),
    "mel_norm": ("slaney", "slaney"),
    "pad_value": (0, 0),
}
PREPROCESSOR_DEFAULTS = {"window_size": 0.02, "window_stride": 0.01, "n_fft": None, "preemph": 0.97, "features": 64,
                         "highfreq": None}


class UnconvertibleNemoError(BadInputError, EncoderLoadError):
    """The .nemo sets something the transformers FastConformer classes do not compute; the message names it."""


def resolve_nemo(name_or_path: str) -> Path:
    """A local .nemo file as is; a hub id (nvidia/stt_en_fastconformer_ctc_large) -> its .nemo in the local HF cache.

    Raises:
        FileNotFoundError: neither; the message says how to get it.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if name_or_path.count("/") == 1 and not name_or_path.endswith(".nemo") and not path.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, f"{name_or_path.split('/')[-1]}.nemo")
        if isinstance(cached, str) and Path(cached).is_file():
            return Path(cached)
        raise FileNotFoundError(f"{name_or_path}: not a .nemo file here and not in the local HF cache; "
                                f"{offline_advice(name_or_path)}")
    raise FileNotFoundError(f"{path}: no such .nemo file; check the path")


def read_nemo(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of a .nemo file, read with tarfile + yaml + torch.load (no NeMo, no extraction to disk).

    Raises:
        FileNotFoundError: no such file. EncoderLoadError: not a tar, or no model_config.yaml / model_weights.ckpt.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such .nemo file; check the path")
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in ("model_config.yaml", "model_weights.ckpt") if n not in members]
            if missing:
                raise EncoderLoadError(f"{path}: no {' or '.join(missing)} inside; is it a NeMo model file?")
            config = yaml.safe_load(tar.extractfile(members["model_config.yaml"]).read().decode())
            weights = io.BytesIO(tar.extractfile(members["model_weights.ckpt"]).read())
    except (tarfile.TarError, EOFError) as err:
        raise EncoderLoadError(f"{path}: not a readable .nemo (tar) file ({err}); download it again") from err
    state = torch.load(weights, map_location="cpu", weights_only=True)
    return _resolved(config, config), state.get("state_dict", state)


def _resolved(value, root: dict):
    """`value` with OmegaConf-style whole-value references (`${model.preprocessor.features}`, as NeMo's saved
    configs keep them) replaced by what they point at in `root` (the model's config); other text is left as is."""
    if isinstance(value, dict):
        return {k: _resolved(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, root) for v in value]
    if isinstance(value, str) and value.startswith("${") and value.endswith("}") and ":" not in value:
        node = root
        for part in value[2:-1].removeprefix("model.").split("."):
            if not isinstance(node, dict) or part not in node:
                return value
            node = node[part]
        return _resolved(node, root)
    return value


def _value(section: dict, key: str, default):
    value = section.get(key, default)
    return list(value) if isinstance(value, tuple) else value


def check_convertible(path: str | os.PathLike, config: dict) -> None:
    """Refuse, in one line naming the file and the setting, what the transformers classes cannot represent.

    Raises:
        UnconvertibleNemoError: the first such setting.
    """
    enc, pre = config.get("encoder") or {}, config.get("preprocessor") or {}
    if not str(enc.get("_target_", "")).endswith("ConformerEncoder"):
        raise UnconvertibleNemoError(f"{path}: encoder._target_ is {enc.get('_target_')!r}, not a ConformerEncoder "
                                     "(FastConformer); only those convert")
    for key, (wanted, default) in ENCODER_FIXED.items():
        found = _value(enc, key, default)
        if key == "att_context_size" and found is not None and found != [-1, -1]:
            raise UnconvertibleNemoError(f"{path}: encoder.att_context_size is {found} (limited attention context); "
                                         "transformers' ParakeetEncoder attends to the whole clip, so converting "
                                         "would change the outputs. Only [-1, -1] converts")
        if found != wanted and not (key == "att_context_size" and found is None):
            raise UnconvertibleNemoError(f"{path}: encoder.{key} is {found!r}; transformers' ParakeetEncoder "
                                         f"implements only {wanted!r}, so this model cannot be converted")
    factor = int(_value(enc, "subsampling_factor", ENCODER_DEFAULTS["subsampling_factor"]))
    if factor < 2 or factor & (factor - 1):
        raise UnconvertibleNemoError(f"{path}: encoder.subsampling_factor is {factor}; ParakeetEncoder subsamples "
                                     "by a power of two only")
    if int(_value(enc, "conv_kernel_size", ENCODER_DEFAULTS["conv_kernel_size"])) % 2 == 0:
        raise UnconvertibleNemoError(f"{path}: encoder.conv_kernel_size is even; ParakeetEncoder pads odd kernels only")
    if not str(pre.get("_target_", "")).endswith(PREPROCESSOR_CLASS):
        raise UnconvertibleNemoError(f"{path}: preprocessor._target_ is {pre.get('_target_')!r}; only NeMo's "
                                     f"{PREPROCESSOR_CLASS} has a transformers twin (ParakeetFeatureExtractor)")
    for key, (wanted, default) in PREPROCESSOR_FIXED.items():
        found = _value(pre, key, default)
        if found != wanted:
            raise UnconvertibleNemoError(f"{path}: preprocessor.{key} is {found!r}; ParakeetFeatureExtractor "
                                         f"computes only {wanted!r}, so this model cannot be converted")
    sample_rate_hz = int(pre.get("sample_rate", AUDIO_SAMPLE_RATE_HZ))
    highfreq = pre.get("highfreq")
    if highfreq is not None and float(highfreq) != sample_rate_hz / 2:
        raise UnconvertibleNemoError(f"{path}: preprocessor.highfreq is {highfreq}; ParakeetFeatureExtractor's mel "
                                     f"filters end at {sample_rate_hz / 2} Hz")
    for key in ("n_window_size", "n_window_stride"):
        if pre.get(key) is not None:
            raise UnconvertibleNemoError(f"{path}: preprocessor.{key} is set; give window_size/window_stride in "
                                         "seconds (the settings this converter maps)")


def encoder_config(config: dict) -> dict:
    """ParakeetEncoderConfig fields of a checked NeMo config (dropouts off: the encoder is frozen)."""
    enc = config["encoder"]
    get = lambda key: _value(enc, key, ENCODER_DEFAULTS.get(key))  # noqa: E731
    d_model = int(enc["d_model"])
    channels = int(get("subsampling_conv_channels"))
    return {
        "hidden_size": d_model,
        "num_hidden_layers": int(enc["n_layers"]),
        "num_attention_heads": int(get("n_heads")),
        "intermediate_size": int(d_model * get("ff_expansion_factor")),
        "hidden_act": "silu",                      # NeMo's Swish in the feed-forward and conv modules
        "attention_bias": bool(get("use_bias")),
        "convolution_bias": bool(get("use_bias")),
        "conv_kernel_size": int(get("conv_kernel_size")),
        "subsampling_factor": int(get("subsampling_factor")),
        "subsampling_conv_channels": d_model if channels == -1 else channels,
        "subsampling_conv_kernel_size": 3,         # NeMo's dw_striding: 3x3 kernels, stride 2
        "subsampling_conv_stride": 2,
        "num_mel_bins": int(enc["feat_in"]),
        "max_position_embeddings": int(get("pos_emb_max_len")),
        "scale_input": bool(get("xscaling")),
        "dropout": 0.0, "dropout_positions": 0.0, "layerdrop": 0.0, "activation_dropout": 0.0,
        "attention_dropout": 0.0,
    }


def feature_config(config: dict) -> dict:
    """ParakeetFeatureExtractor arguments of a checked NeMo preprocessor config."""
    pre = config["preprocessor"]
    get = lambda key: pre.get(key, PREPROCESSOR_DEFAULTS.get(key))  # noqa: E731
    sample_rate_hz = int(pre.get("sample_rate", AUDIO_SAMPLE_RATE_HZ))
    win_length = int(get("window_size") * sample_rate_hz)   # NeMo's own int(), not round()
    hop_length = int(get("window_stride") * sample_rate_hz)
    return {
        "feature_size": int(get("features")),
        "sampling_rate": sample_rate_hz,
        "hop_length": hop_length,
        "win_length": win_length,
        "n_fft": int(get("n_fft") or 2 ** math.ceil(math.log2(win_length))),
        "preemphasis": get("preemph"),
        "padding_value": 0.0,
    }


# NeMo ConformerEncoder weight names -> ParakeetEncoder's (the rest of each name is the same in both)
_RENAMES = (("pre_encode.conv.", "subsampling.layers."), ("pre_encode.out.", "subsampling.linear."),
            ("self_attn.linear_q.", "self_attn.q_proj."), ("self_attn.linear_k.", "self_attn.k_proj."),
            ("self_attn.linear_v.", "self_attn.v_proj."), ("self_attn.linear_out.", "self_attn.o_proj."),
            ("self_attn.linear_pos.", "self_attn.relative_k_proj."), ("self_attn.pos_bias_u", "self_attn.bias_u"),
            ("self_attn.pos_bias_v", "self_attn.bias_v"), ("conv.batch_norm.", "conv.norm."))


def encoder_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A .nemo's encoder weights under ParakeetEncoder names (the preprocessor's and the decoder's are left out)."""
    out = {}
    for key, value in state.items():
        if key.startswith("encoder."):
            key = key.removeprefix("encoder.")
            for nemo_name, hf_name in _RENAMES:
                key = key.replace(nemo_name, hf_name)
            out[key] = value
    return out


def nemo_encoder_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ParakeetEncoder weights under NeMo ConformerEncoder names (`encoder_state_dict` backwards, without
    the `encoder.` prefix): how the random writer gives the .nemo the transformers stand-in's weights."""
    out = {}
    for key, value in state.items():
        for nemo_name, hf_name in _RENAMES:
            key = key.replace(hf_name, nemo_name)
        out[key] = value
    return out


def convert_nemo(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the transformers folder of a FastConformer .nemo (a file, or a hub id in the HF cache: `resolve_nemo`)
    to `out` (staged, then renamed into place).

    Raises:
        UnconvertibleNemoError: a setting the transformers classes cannot represent.
        EncoderLoadError: an unreadable file, or weights that do not fill ParakeetEncoder exactly.
        FileExistsError: `out` exists and is not empty.
    """
    import json

    from transformers import ParakeetEncoder, ParakeetEncoderConfig, ParakeetFeatureExtractor

    path, out = resolve_nemo(str(path)), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not empty; choose another --out")
    config, state = read_nemo(path)
    check_convertible(path, config)
    model = ParakeetEncoder(ParakeetEncoderConfig(**encoder_config(config)))
    weights = encoder_state_dict(state)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]   # computed, not stored
    if missing or unexpected:
        raise EncoderLoadError(f"{path}: the encoder weights do not fit ParakeetEncoder (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}); is it a FastConformer?")
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        model.eval().save_pretrained(staging)
        ParakeetFeatureExtractor(**feature_config(config)).save_pretrained(staging)
        provenance = {"nemo_file": path.name, "nemo_bytes": path.stat().st_size,
                      "encoder": config["encoder"], "preprocessor": config["preprocessor"]}
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1, default=str) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted %s (%d encoder tensors) to %s", path, len(weights), out)
    return out
