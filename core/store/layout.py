"""The store's layout in names and small types, shared by both backends (cache_schema.md spells it out).

The array names, the clip statuses, an entry's array specs as its attributes keep them, the errors both
backends raise, and how two entries' settings differ. No I/O: zarr_store.py and h5_store.py read and write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from mmfer.core.errors import BadInputError

SCHEMA_VERSION = 1
MODALITIES = ("video", "audio")
STAGING_PREFIX = ".staging-"
PARTIAL_SUFFIX = ".partial"    # zarr's LocalStore writes `<chunk>.<uuid>.partial`, then renames
TOKEN_SCALE = "token_scale"    # float16 (..., P): an int8 entry's per-token scale, beside its "tokens"
VIEW_PREFIX = "view_"          # `extract --views K`: array `view_<name>` [N, K, ...] holds the K augmented views of `<name>`
VIEW_PARAMS = "view_params"    # string [N, K]: JSON of the parameters each view was drawn with
H5_SUFFIXES = (".h5", ".hdf5")
ENTRY_BOOKKEEPING = ("modality", "fingerprint", "arrays", "view_arrays")   # entry attrs that are not settings


class ClipStatus(IntEnum):
    """Per clip and modality. PENDING is the fill value: a status never written reads as pending."""

    PENDING = 0
    DONE = 1
    FAILED = 2
    MISSING = 3   # the source has no such stream (e.g. no audio): a fact, not an error


class StoreError(BadInputError, RuntimeError):
    """The store is absent, of another schema, or not what the caller asked for."""


class CorruptClipError(StoreError):
    """A clip's data fails its checksum or is marked done without its chunks."""

    def __init__(self, store_path: str, clip_id: str, detail: str) -> None:
        self.clip_id = clip_id
        super().__init__(f"{store_path}: clip {clip_id}: {detail}; run `mmfer verify {store_path} --repair` and re-run extract")


@dataclass(frozen=True)
class ArraySpec:
    """Shape of one clip's slice of an array (the store adds the leading clip axis) and its dtype."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class ClipRecord:
    """What `write_clip` wrote: the lhotse-style receipt."""

    clip_id: str
    modality: str
    fingerprint: str
    shapes: dict[str, tuple[int, ...]]
    num_bytes: int


def is_h5_path(path: str | os.PathLike) -> bool:
    """A `--cache` that names an HDF5 export (by its suffix) rather than a Zarr store folder."""
    return Path(path).suffix.lower() in H5_SUFFIXES


def entry_specs(attrs: dict) -> tuple[dict[str, ArraySpec], dict[str, ArraySpec]]:
    """An entry's clean arrays (attrs `arrays`) and the per-view arrays it keeps (`view_arrays`; empty
    without views), each name -> ArraySpec."""
    def specs(key: str) -> dict[str, ArraySpec]:
        return {name: ArraySpec(tuple(s["shape"]), s["dtype"]) for name, s in attrs.get(key, {}).items()}

    return specs("arrays"), specs("view_arrays")


def spec_attrs(specs: dict[str, ArraySpec]) -> dict[str, dict]:
    """ArraySpecs as an entry's attributes keep them (the inverse of entry_specs)."""
    return {name: {"shape": list(s.shape), "dtype": s.dtype} for name, s in specs.items()}


def entry_differences(old: dict, new: dict, *, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, stored value, this run's value) for every setting that differs between two entries'
    attrs (tuples compare equal to the lists JSON stores them as)."""
    found = []
    for key in sorted(set(old) | set(new)):
        if key in ENTRY_BOOKKEEPING and not prefix:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += entry_differences(a, b, prefix=f"{prefix}{key}.")
        elif a != b and not (isinstance(b, tuple) and list(b) == a):
            found.append((f"{prefix}{key}", a, b))
    return found


def format_differences(old: dict, new: dict) -> str:
    """`key: stored -> this run` for each differing setting, for a refusal message."""
    def shown(value: object) -> object:
        return "(none)" if value is None else value

    diffs = [f"{k}: {shown(a)} -> {shown(b)}" for k, a, b in entry_differences(old, new)]
    return "; ".join(diffs) if diffs else "none recorded (the stored entry predates these records)"
