"""Small random-weight stand-ins for SigLIP2 and FastConformer, for tests and `--preset tiny`.

`ensure_tiny_encoders(models_dir)` builds them once, with the same classes and save functions as the real
checkpoints (a SigLIP vision tower + image processor folder, a NeMo CTC `.nemo` file), so they are read back
through the real loading code in `visual.py` and `audio.py`. Seeded: the same code writes the same weights.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TINY_SEED = 0
TINY_VISUAL_DIRNAME = "tiny-siglip-vision"
TINY_AUDIO_FILENAME = "tiny-fastconformer-ctc.nemo"
TINY_VISUAL_DIM = 64  # Dv of the stand-in; the real siglip2-base is 768
TINY_AUDIO_DIM = 64  # Da of the stand-in; the real FastConformer large is 512
TINY_CHAR_LABELS = [" ", "a", "e", "i", "o", "u", "n", "s", "t", "'"]


def ensure_tiny_encoders(models_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Create the tiny encoders under `models_dir` unless they are already there.

    Returns (visual_dir, audio_nemo): a folder for `load_visual_encoder` and a `.nemo` file for
    `load_audio_encoder`. Each is written to a temporary name and renamed, so a crash leaves no half model.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    visual_dir = models_dir / TINY_VISUAL_DIRNAME
    audio_nemo = models_dir / TINY_AUDIO_FILENAME
    if not _is_complete_visual_dir(visual_dir):
        _write_tiny_visual(visual_dir)
    if not audio_nemo.is_file():
        _write_tiny_audio(audio_nemo)
    return visual_dir, audio_nemo


def _is_complete_visual_dir(path: Path) -> bool:
    names = ("config.json", "model.safetensors", "preprocessor_config.json")
    return all((path / name).is_file() for name in names)


def _write_tiny_visual(visual_dir: Path) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(
        image_size=224,
        patch_size=16,  # 224 / 16 = 14 -> P = 196 patches, as in siglip2-base-patch16-224
        hidden_size=TINY_VISUAL_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = SiglipVisionModel(cfg).eval()
    # Same processing as google/siglip2-base-patch16-224: 224x224 resize, /255, mean = std = 0.5.
    processor = SiglipImageProcessor(
        size={"height": 224, "width": 224}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
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
    log.info("wrote tiny SigLIP vision encoder to %s", visual_dir)


def tiny_audio_config() -> dict:
    """NeMo config of the tiny CTC model: FastConformer layout (dw_striding x8, kernel 9), small widths."""
    return {
        "sample_rate": 16_000,
        "labels": TINY_CHAR_LABELS,
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
            "num_classes": len(TINY_CHAR_LABELS),
            "vocabulary": TINY_CHAR_LABELS,
        },
    }


def _write_tiny_audio(audio_nemo: Path) -> None:
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(tiny_audio_config())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = EncDecCTCModel(cfg=cfg).eval()
    fd, tmp_name = tempfile.mkstemp(prefix=audio_nemo.name + ".tmp-", suffix=".nemo", dir=audio_nemo.parent)
    os.close(fd)
    try:
        model.save_to(tmp_name)
        os.replace(tmp_name, audio_nemo)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("wrote tiny FastConformer CTC model to %s", audio_nemo)
