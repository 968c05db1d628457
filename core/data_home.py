"""Where datasets live when no --root is given: `$MMFER_DATA/<dataset>`, else a per-user data home.

The one place this default is written. `extract` reads a dataset from `dataset_root(name)` and
`mmfer download` writes there; the per-user home is `$XDG_CACHE_HOME/mmfer/datasets` (default
`~/.cache/mmfer/datasets`, in the habit of HF_HOME), never a folder inside the package's source.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_HOME_ENV = "MMFER_DATA"
DATA_HOME_RULE = "$MMFER_DATA/<dataset>, else $XDG_CACHE_HOME/mmfer/datasets/<dataset> (~/.cache/mmfer/datasets/<dataset>)"


def data_home() -> Path:
    """The folder that holds one sub-folder per dataset."""
    explicit = os.environ.get(DATA_HOME_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "mmfer" / "datasets"


def dataset_root(dataset: str) -> Path:
    """The default --root of `dataset` (e.g. ~/.cache/mmfer/datasets/ravdess)."""
    return data_home() / dataset


def is_missing_or_empty(folder: Path) -> bool:
    """True when `folder` does not exist or holds nothing but hidden entries (a download's marker, a .part)."""
    if not folder.is_dir():
        return True
    return not any(not entry.name.startswith(".") for entry in folder.iterdir())
