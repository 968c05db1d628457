"""Random-weight encoders of the real classes, at tiny size (tests, `--preset tiny`) or full size (`mmfer bench`).

`ensure_random_encoders(models_dir, size=...)` builds them once, with the same classes and save functions as
the real checkpoints (a SigLIP vision tower + image processor folder, a NeMo CTC `.nemo` file), so they are
read back through the real loading code in `visual.py` and `audio.py`. Seeded: the same code writes the same
weights. This is the one writer of stand-in encoders; the bench and the tests call it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

Size = Literal["tiny", "full"]
RANDOM_SEED = 0
CHAR_LABELS = [" ", "a", "e", "i", "o", "u", "n", "s", "t", "'"]
TINY_VISUAL_DIM = 64  # Dv of the tiny stand-in; the real siglip2-base is 768
TINY_AUDIO_DIM = 64  # Da of the tiny stand-in; the real FastConformer large is 512
# Each size: the file names, then the SigLIP vision config and the NeMo ConformerEncoder fields it sets.
SIZES: dict[str, dict] = {
    "tiny": {
        "visual_dirname": "tiny-siglip-vision", "audio_filename": "tiny-fastconformer-ctc.nemo",
        "visual": {"hidden_size": TINY_VISUAL_DIM, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 256},
        "audio": {"n_layers": 2, "d_model": TINY_AUDIO_DIM, "n_heads": 2, "subsampling_conv_channels": 32},
    },
    "full": {
        # SigLIP2-base/16 at 224 px (google/siglip2-base-patch16-224 vision tower): 86M parameters, Dv = 768.
        "visual_dirname": "siglip-base-random", "audio_filename": "fastconformer-large-random.nemo",
        "visual": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
        # FastConformer-large CTC (nvidia/stt_en_fastconformer_ctc_large, "around 115M parameters", a 463 MB fp32
        # .nemo): 18 layers (NeMo's fast-conformer_ctc_bpe.yaml; its table says 17), d_model 512, 8 heads, ff 2048.
        # Counted: 18 layers give a 115.1M encoder (+0.5M for the real 1024-token CTC head = 462 MB fp32);
        # 17 give 108.8M (437 MB).
        "audio": {"n_layers": 18, "d_model": 512, "n_heads": 8, "subsampling_conv_channels": 256},
    },
}


def ensure_random_encoders(models_dir: str | os.PathLike, *, size: Size) -> tuple[Path, Path]:
    """Create the random encoders of `size` under `models_dir` unless they are already there.

    Returns (visual_dir, audio_nemo): a folder for `load_visual_encoder` and a `.nemo` file for
    `load_audio_encoder`. Each is written to a temporary name and renamed, so a crash leaves no half model.
    """
    spec = SIZES[size]
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    visual_dir = models_dir / spec["visual_dirname"]
    audio_nemo = models_dir / spec["audio_filename"]
    if not _is_complete_visual_dir(visual_dir):
        _write_visual(visual_dir, spec["visual"])
    if not audio_nemo.is_file():
        _write_audio(audio_nemo, spec["audio"])
    return visual_dir, audio_nemo


def ensure_tiny_encoders(models_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The tiny pair (`--preset tiny`, tests)."""
    return ensure_random_encoders(models_dir, size="tiny")


def _is_complete_visual_dir(path: Path) -> bool:
    names = ("config.json", "model.safetensors", "preprocessor_config.json")
    return all((path / name).is_file() for name in names)


def _write_visual(visual_dir: Path, widths: dict) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    # 224 / 16 = 14 -> P = 196 patches, as in siglip2-base-patch16-224
    cfg = SiglipVisionConfig(image_size=224, patch_size=16, **widths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = SiglipVisionModel(cfg).eval()
    # Same processing as google/siglip2-base-patch16-224: 224x224 bilinear resize (resample=2), /255,
    # mean = std = 0.5.
    processor = SiglipImageProcessor(
        size={"height": 224, "width": 224}, resample=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    if visual_dir.exists():  # an incomplete earlier attempt
        shutil.rmtree(visual_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=visual_dir.name + ".tmp-", dir=visual_dir.parent))
    try:
        model.save_pretrained(tmp_dir)  # safetensors by default
        processor.save_pretrained(tmp_dir)
        tmp_dir.rename(visual_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info("wrote random SigLIP vision encoder (%s) to %s", widths, visual_dir)


def audio_model_config(widths: dict) -> dict:
    """NeMo config of a random CTC model: FastConformer layout (dw_striding x8, kernel 9), encoder `widths`."""
    config = {
        "sample_rate": 16_000,
        "labels": CHAR_LABELS,
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
            "d_model": TINY_AUDIO_DIM,
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
            "feat_in": TINY_AUDIO_DIM,
            "num_classes": len(CHAR_LABELS),
            "vocabulary": CHAR_LABELS,
        },
    }
    config["encoder"].update(widths)
    config["decoder"]["feat_in"] = widths["d_model"]
    return config


def _write_audio(audio_nemo: Path, widths: dict) -> None:
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(audio_model_config(widths))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = EncDecCTCModel(cfg=cfg).eval()
    fd, tmp_name = tempfile.mkstemp(prefix=audio_nemo.name + ".tmp-", suffix=".nemo", dir=audio_nemo.parent)
    os.close(fd)
    try:
        model.save_to(tmp_name)
        os.replace(tmp_name, audio_nemo)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("wrote random FastConformer CTC model (%s) to %s", widths, audio_nemo)
