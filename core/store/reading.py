"""The one reading interface of a feature store, and the checks both backends run when they read a clip.

`StoreReader` / `EntryReader` are what `open_store` gives back, whichever the backend: zarr_store.py (a Zarr
folder; it also writes) or h5_store.py (an HDF5 export, read only). The two backends share no class: each calls
the functions here, so a clip is checked alike (status DONE, every chunk present, every checksum) and int8 tokens
come back as float16 from either. Array objects here are anything indexable like numpy (a zarr or h5py array).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Mapping, Protocol

import numpy as np
import pandas as pd

from mmfer.core.store.layout import TOKEN_SCALE, VIEW_PREFIX, ArraySpec, ClipStatus, CorruptClipError, StoreError

log = logging.getLogger(__name__)

CHECKSUM_ERRORS = (ValueError, OSError)   # zarr's crc32c ValueError, h5py's fletcher32 OSError


class EntryReader(Protocol):
    """One modality's features made with one encoder + preprocessing (one fingerprint), as a reader sees them."""

    store: "StoreReader"
    modality: str
    fingerprint: str
    attrs: dict
    array_specs: dict[str, ArraySpec]
    view_specs: dict[str, ArraySpec]
    damaged_status: list[str]   # clip ids whose status failed its checksum (filled by statuses())

    @property
    def path(self) -> object: ...
    @property
    def is_quantized(self) -> bool: ...
    @property
    def num_views(self) -> int: ...
    def statuses(self) -> np.ndarray: ...
    def reasons(self) -> list[str]: ...
    def sources(self) -> list[str]: ...
    def read_clip(self, clip_id: str, names: tuple[str, ...] | None = None, *, view: int = 0) -> dict[str, np.ndarray]: ...
    def view_params(self, clip_id: str) -> list[dict]: ...
    def stored_arrays(self, index: int, names) -> dict[str, np.ndarray]: ...
    def raw_bytes_per_clip(self) -> int: ...
    def raw_bytes_per_view(self) -> int: ...
    def clip_chunk_files(self, index: int) -> list[Path]: ...
    def mark(self, clip_id: str, status: ClipStatus, reason: str, source: str = "") -> None: ...


class StoreReader(Protocol):
    """A feature store as a reader sees it: the clip table, the root attributes and the entries."""

    path: Path
    attrs: dict
    clip_table: pd.DataFrame

    @property
    def clip_ids(self) -> list[str]: ...
    def index_of(self, clip_id: str) -> int: ...
    def fingerprints(self, modality: str) -> list[str]: ...
    def entry(self, modality: str, fingerprint: str | None = None) -> EntryReader: ...
    def leftovers(self) -> list[Path]: ...
    def clean_leftovers(self) -> int: ...
    def bytes_on_disk(self) -> int: ...


def chosen_fingerprint(store_path: object, modality: str, found: list[str], fingerprint: str | None) -> str:
    """`fingerprint`, checked to be among the store's `found` entries of `modality`; None: the only one.

    Raises:
        StoreError: none, or several and no fingerprint given, or no entry with that fingerprint.
    """
    if fingerprint is None:
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} ({', '.join(found)}); choose one with --{modality}-entry"
            raise StoreError(f"{store_path}: {what} {modality} feature entries")
        return found[0]
    if fingerprint not in found:
        raise StoreError(f"{store_path}: no {modality} entry with fingerprint {fingerprint} (have: {', '.join(found) or 'none'})")
    return fingerprint


def raw_bytes(specs: dict[str, ArraySpec]) -> int:
    """Uncompressed bytes of one clip's slice of `specs`."""
    return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in specs.values())


def num_views(attrs: dict, view_specs: dict[str, ArraySpec]) -> int:
    """K augmented views stored per clip besides the clean one (`extract --views K`; 0 for most stores)."""
    return int(attrs.get("views", {}).get("num_views", 0)) if view_specs else 0


def read_cell(array, index: int, *, store_path: object, clip_id: str, what: str):
    """`array[index]`, a failed checksum raised as CorruptClipError naming the clip and `what` (modality/array)."""
    try:
        return array[index]
    except CHECKSUM_ERRORS as err:
        raise CorruptClipError(str(store_path), clip_id, f"{what} is damaged ({err})") from err


def read_column(array, *, store_path: object, clip_ids: list[str], what: str, fallback,
                damaged: list[str] | None = None) -> list:
    """One value per clip of the clip table (an array can be longer: a crash while a store grew). A cell that
    fails its checksum reads as `fallback`, with a warning, and its clip goes in `damaged` (when given)."""
    try:
        return list(array[:len(clip_ids)])
    except CHECKSUM_ERRORS:   # a checksum mismatch in one clip's chunk: read one by one to name it
        values = []
        for index, clip_id in enumerate(clip_ids):
            try:
                values.append(read_cell(array, index, store_path=store_path, clip_id=clip_id, what=what))
            except CorruptClipError as err:
                log.warning("%s", err)
                if damaged is not None and clip_id not in damaged:
                    damaged.append(clip_id)
                values.append(fallback)
        return values


def plan_clip_read(entry: EntryReader, clip_id: str, status: int, names, view: int,
                   has_chunk: Callable[..., bool]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """What `read_clip` reads: {name: (stored array, chunk key)}, after checking the clip is DONE, the view
    exists and every chunk is on disk (`has_chunk(stored, index[, view])`). A view's own arrays come from
    `view_<name>`, the clean clip's others from `<name>`; a quantized entry's tokens bring their scale.

    Raises:
        StoreError: the clip is not done, or the entry has no such view or array.
        CorruptClipError: a chunk is missing.
    """
    store_path, index = entry.store.path, entry.store.index_of(clip_id)
    status = ClipStatus(int(status))
    if status != ClipStatus.DONE:
        raise StoreError(f"{store_path}: clip {clip_id}: {entry.modality} status is {status.name}, not DONE")
    if not 0 <= view <= entry.num_views:
        raise StoreError(f"{entry.path}: no view {view} (this entry stores {entry.num_views} augmented views per clip "
                         "besides the clean view 0; re-run extract with --views to store more)")
    wanted = list(names or entry.array_specs)
    if entry.is_quantized and "tokens" in wanted and TOKEN_SCALE not in wanted:
        wanted.append(TOKEN_SCALE)
    requests = {}
    for name in wanted:
        if name not in entry.array_specs:
            raise StoreError(f"{entry.path}: no array {name!r} (has {sorted(entry.array_specs)})")
        stored, key = (VIEW_PREFIX + name, (index, view - 1)) if view and name in entry.view_specs else (name, (index,))
        if not has_chunk(stored, *key):
            raise CorruptClipError(str(store_path), clip_id, f"marked done but {entry.modality}/{stored} has no data chunk"
                                   + (f" for view {view}" if view and stored != name else ""))
        requests[name] = (stored, key)
    return requests


def read_chunks(arrays: Mapping[str, object], requests: dict[str, tuple[str, tuple[int, ...]]], *,
                store_path: object, clip_id: str, modality: str) -> dict[str, np.ndarray]:
    """{name: (stored array, chunk key)} -> {name: that chunk}, checksums checked.

    Raises:
        CorruptClipError: a chunk fails its checksum.
    """
    return {name: read_cell(arrays[stored], key, store_path=store_path, clip_id=clip_id, what=f"{modality}/{stored}")
            for name, (stored, key) in requests.items()}


def parse_view_params(records) -> list[dict]:
    """A clip's stored view parameters (JSON text per view, view 1 first; '' for none) as dicts."""
    return [json.loads(str(text)) if str(text) else {} for text in records]
