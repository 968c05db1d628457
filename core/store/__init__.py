"""The feature store: what `extract/` writes and `train/` reads (the layout is cache_schema.md).

`open_store(path)` gives one reading interface (reading.py: `StoreReader`, `EntryReader`) over two backends
that share functions, not classes: a Zarr folder (zarr_store.py + zarr_entry.py: read and write; `create_store`)
and its HDF5 export (h5_store.py: read only; export.py writes it). Beside them: layout.py (names, statuses,
errors), clip_table.py (the table a run's manifest makes), quantize.py (int8 tokens), lock.py (the writer lock),
verify.py (`mmfer verify`), page_cache.py. Only the backends and export.py import zarr or h5py.
"""

from __future__ import annotations

import os

from mmfer.core.store.clip_table import ClipTableChange, plan_clip_table
from mmfer.core.store.layout import (ENTRY_BOOKKEEPING, H5_SUFFIXES, MODALITIES, PARTIAL_SUFFIX, SCHEMA_VERSION,
                                     STAGING_PREFIX, TOKEN_SCALE, VIEW_PARAMS, VIEW_PREFIX, ArraySpec, ClipRecord,
                                     ClipStatus, CorruptClipError, StoreError, entry_differences, is_h5_path)
from mmfer.core.store.lock import LOCK_FILE, group_writer_lock, writer_lock, writer_lock_holder
from mmfer.core.store.page_cache import drop_from_page_cache
from mmfer.core.store.quantize import as_stored, dequantize_tokens, quantize_tokens
from mmfer.core.store.reading import CHECKSUM_ERRORS, EntryReader, StoreReader
from mmfer.core.store.zarr_entry import FeatureEntry
from mmfer.core.store.zarr_store import (FeatureStore, check_clip_table, create_store, open_zarr_store,
                                         set_codec_threads)


def open_store(path: str | os.PathLike, mode: str = "r") -> StoreReader:
    """Open an existing store: a Zarr folder (`mode` "r" or "r+"), or an HDF5 export named by its suffix
    (.h5, .hdf5; read only whatever `mode` says).

    Raises:
        StoreError: no store at `path`, damaged metadata, or another schema version.
    """
    if is_h5_path(path):
        from mmfer.core.store.h5_store import open_h5_store   # h5py is loaded only for an HDF5 export

        return open_h5_store(path)
    return open_zarr_store(path, mode)


__all__ = [
    "CHECKSUM_ERRORS", "ENTRY_BOOKKEEPING", "H5_SUFFIXES", "LOCK_FILE", "MODALITIES", "PARTIAL_SUFFIX", "SCHEMA_VERSION",
    "STAGING_PREFIX", "TOKEN_SCALE", "VIEW_PARAMS", "VIEW_PREFIX", "ArraySpec", "ClipRecord", "ClipStatus",
    "ClipTableChange", "CorruptClipError", "EntryReader", "FeatureEntry", "FeatureStore", "StoreError", "StoreReader",
    "as_stored",
    "check_clip_table", "create_store", "dequantize_tokens", "drop_from_page_cache", "entry_differences",
    "group_writer_lock", "is_h5_path", "open_store", "open_zarr_store", "plan_clip_table", "quantize_tokens",
    "set_codec_threads", "writer_lock", "writer_lock_holder",
]
