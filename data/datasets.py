"""`--dataset NAME` -> that dataset's adapter -> the manifest (data/manifest.py). The one hand-off that the
commands (extract, bench) call."""

from __future__ import annotations

import pandas as pd

from mmfer.data.ravdess import require_clips, scan_ravdess
from mmfer.pipeline.config import ExtractConfig


def build_manifest(cfg: ExtractConfig) -> pd.DataFrame:
    """The manifest of the clips under `cfg.root` for `cfg.dataset`, in MANIFEST_COLUMNS order.

    Raises:
        BadInputError: no clips of the dataset under the root (the message says what was found instead).
    """
    channels = ("speech", "song") if cfg.vocal_channels == "both" else (cfg.vocal_channels,)
    manifest = scan_ravdess(cfg.root, vocal_channels=channels, modalities=("av",))
    require_clips(manifest, cfg.root, vocal_channels=channels, modalities=("av",))   # names what is there instead
    return manifest
