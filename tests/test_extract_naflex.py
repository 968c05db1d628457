"""NaFlex SigLIP2 checkpoints: the store keeps no patch mask, so frames that would leave padding patches
(non-square) are refused, and extract refuses --face-crop none with such a checkpoint before any clip."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from extract_helpers import extract_config

from mmfer.data.ravdess import scan_ravdess
from mmfer.extract.run import extract_all
from mmfer.extract.encoders.siglip import load_visual_encoder, preprocess_frames
from mmfer.core.errors import ConfigError


@pytest.fixture(scope="module")
def naflex_dir(tmp_path_factory):
    """A tiny random NaFlex SigLIP2 vision tower (8 x 8 = 64 patches of 16 px at most) saved as a checkpoint."""
    from transformers import Siglip2ImageProcessorPil, Siglip2VisionConfig, Siglip2VisionModel

    folder = tmp_path_factory.mktemp("naflex")
    cfg = Siglip2VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                              patch_size=16, num_patches=64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Siglip2VisionModel(cfg).save_pretrained(folder)
    Siglip2ImageProcessorPil(max_num_patches=64, patch_size=16).save_pretrained(folder)
    return folder


def test_square_frames_fill_the_grid_and_others_are_refused(naflex_dir):
    visual = load_visual_encoder(str(naflex_dir))
    square = preprocess_frames(visual.processor, np.zeros((2, 96, 96, 3), np.uint8))
    assert bool(square["pixel_attention_mask"].all()) and square["spatial_shapes"].tolist() == [[8, 8], [8, 8]]
    tokens, _ = visual.encode_inputs(square)
    assert tokens.shape == (2, 64, 32)
    with pytest.raises(ValueError, match="NaFlex.*4 of 64 patches as padding for 96x160"):
        preprocess_frames(visual.processor, np.zeros((1, 96, 160, 3), np.uint8))


def test_extract_refuses_naflex_with_full_frames(naflex_dir, tmp_path, demo_root, tiny_models):
    cfg = replace(extract_config(demo_root, tmp_path / "cache", tiny_models, face_crop="none", limit=1),
                  preset="full", visual_encoder=str(naflex_dir),
                  audio_encoder=str(tiny_models / "tiny-fastconformer-ctc"))
    with pytest.raises(ConfigError, match="NaFlex.*--face-crop center or detect"):
        extract_all(cfg, scan_ravdess(demo_root))
