"""Random-weight encoders of the real classes, at tiny size (tests, `--preset tiny`) or full size (`mmfer bench`).

`ensure_random_encoders(models_dir, size=...)` builds them once, with the same classes and save functions as
the real checkpoints (a SigLIP vision tower + image processor folder, a transformers FastConformer folder), so they
are read back through the real loading code of their kinds (extract/encoders/); neither needs NeMo. Each kind
module writes its own random model (`write_random`); this module says which sizes and names. Seeded: the same code
writes the same weights. The audio stand-in exists for both backends with the same weights: `ensure_nemo_audio`
saves the transformers one's encoder weights as a `.nemo` with NeMo's own saver (NeMo kind, parity tests; needs
the `nemo` extra). This is the one writer of stand-in encoders; the bench and the tests call it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import mmfer.extract.encoders.nemo_fastconformer as nemo_fastconformer   # the kind modules, not the registry
import mmfer.extract.encoders.parakeet as parakeet                     # (which imports this module)
import mmfer.extract.encoders.siglip as siglip

log = logging.getLogger(__name__)

Size = Literal["tiny", "full"]
RANDOM_SEED = 0
TINY_VISUAL_DIM = 64  # Dv of the tiny stand-in; the real siglip2-base is 768
TINY_AUDIO_DIM = 64  # Da of the tiny stand-in; the real FastConformer large is 512
# Each size: the file names, then the SigLIP vision config and the NeMo ConformerEncoder fields it sets.
RANDOM_KINDS = {"visual": siglip, "audio": parakeet}   # the registry kind module that writes each stand-in
SIZES: dict[str, dict] = {
    "tiny": {
        "visual_dirname": "tiny-siglip-vision", "audio_dirname": "tiny-fastconformer-ctc",
        "audio_filename": "tiny-fastconformer-ctc.nemo",
        "visual": {"hidden_size": TINY_VISUAL_DIM, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 256},
        "audio": {"n_layers": 2, "d_model": TINY_AUDIO_DIM, "n_heads": 2, "subsampling_conv_channels": 32},
    },
    "full": {
        # SigLIP2-base/16 at 224 px (google/siglip2-base-patch16-224 vision tower): 86M parameters, Dv = 768.
        "visual_dirname": "siglip-base-random", "audio_dirname": "fastconformer-large-random",
        "audio_filename": "fastconformer-large-random.nemo",
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

    Returns (visual_dir, audio_dir): a folder for the SigLIP kind and a transformers FastConformer folder for the
    parakeet kind. Each is written to a temporary name and renamed, so a crash leaves no half model.
    """
    spec = SIZES[size]
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    visual_dir = models_dir / spec["visual_dirname"]
    audio_dir = models_dir / spec["audio_dirname"]
    for role, path in (("visual", visual_dir), ("audio", audio_dir)):
        kind = RANDOM_KINDS[role]
        if not kind.is_complete(path):
            kind.write_random(path, spec[role], seed=RANDOM_SEED)
    return visual_dir, audio_dir


def ensure_nemo_audio(models_dir: str | os.PathLike, *, size: Size) -> Path:
    """The audio stand-in of `size` as a `.nemo` (NeMo kind; needs nemo_toolkit): the transformers folder's encoder
    weights in a NeMo CTC model, saved with NeMo's `save_to` once. Converting it back (`mmfer convert-encoder`)
    gives the folder's weights again."""
    from safetensors.torch import load_file

    from mmfer.extract.encoders.nemo_convert import nemo_encoder_state_dict

    _, audio_dir = ensure_random_encoders(models_dir, size=size)
    audio_nemo = Path(models_dir) / SIZES[size]["audio_filename"]
    if not nemo_fastconformer.is_complete(audio_nemo):
        weights = nemo_encoder_state_dict(load_file(audio_dir / "model.safetensors"))
        nemo_fastconformer.write_random(audio_nemo, SIZES[size]["audio"], seed=RANDOM_SEED, encoder_weights=weights)
    return audio_nemo


def ensure_tiny_encoders(models_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The tiny pair (`--preset tiny`, tests)."""
    return ensure_random_encoders(models_dir, size="tiny")
