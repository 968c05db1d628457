"""`--dataset NAME` -> that dataset's adapter -> the manifest (data/manifest.py). The one hand-off that the
commands (extract, bench) call. The manifest's `attrs["label_names"]` carries the class names (extract
records them in the store)."""

from __future__ import annotations

import pandas as pd

from mmfer.core.config import ExtractConfig
from mmfer.core.errors import ConfigError
from mmfer.core.labels import CREMA_D_EMOTIONS, EMOTIONS


def build_manifest(cfg: ExtractConfig) -> pd.DataFrame:
    """The manifest of the clips of `cfg.dataset` (under `cfg.root`, or in `cfg.manifest`), in
    MANIFEST_COLUMNS order, with `attrs["label_names"]`.

    Raises:
        BadInputError: no clips of the dataset (the message says what was found instead), a bad manifest file.
    """
    if cfg.dataset == "manifest":
        from mmfer.data.own_manifest import read_own_manifest
        if not cfg.manifest:
            raise ConfigError("--dataset manifest needs --manifest FILE (.csv or .jsonl, one row per clip)")
        manifest, names = read_own_manifest(cfg.manifest, labels=cfg.labels)
    elif cfg.dataset in ("dfew", "mafw"):
        from mmfer.data.official_folds import scan_official_folds
        manifest, names = scan_official_folds(cfg.root, cfg.dataset)
    elif cfg.dataset == "crema-d":
        from mmfer.data.crema_d import scan_crema_d
        manifest, names = scan_crema_d(cfg.root), CREMA_D_EMOTIONS
    else:
        from mmfer.data.ravdess import require_clips, scan_ravdess
        channels = ("speech", "song") if cfg.vocal_channels == "both" else (cfg.vocal_channels,)
        manifest = scan_ravdess(cfg.root, vocal_channels=channels, modalities=("av",))
        require_clips(manifest, cfg.root, vocal_channels=channels, modalities=("av",))   # names what is there instead
        names = EMOTIONS
    manifest.attrs["label_names"] = list(names)
    return manifest
