"""`mmfer cache-export CACHE --h5 FILE.h5`: a Zarr store written as one HDF5 file (cache_schema.md "HDF5 export").

Reads every done clip through store.py's checks and hands it to store_h5.py, which owns the file's layout and
is the only h5py user; `open_store` reads the file back.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from mmfer.core import store_h5
from mmfer.core.errors import BadInputError
from mmfer.core.store import (MODALITIES, STAGING_PREFIX, VIEW_PARAMS, VIEW_PREFIX, ClipStatus, CorruptClipError,
                                  FeatureEntry, FeatureStore, StoreError, is_h5_path, open_store, writer_lock_holder)

log = logging.getLogger(__name__)


def export_h5(store_path: str | os.PathLike, h5_path: str | os.PathLike) -> dict:
    """Write the Zarr store at `store_path` as one HDF5 file: per entry one chunk per clip, fletcher32 on
    every dataset, the same attributes, statuses, reasons, sources and clip table. Every done clip is read
    (checksummed) from the store first; the file is written beside `h5_path` and renamed into place.

    Raises:
        StoreError: no store, an extract is writing it, or `h5_path` exists.
        CorruptClipError: a done clip fails its checksum in the store (repair it first).
    """
    h5_path = Path(h5_path)
    if not is_h5_path(h5_path):
        raise BadInputError(f"{h5_path}: name the HDF5 file with a suffix {' or '.join(store_h5.H5_SUFFIXES)}")
    if h5_path.exists():
        raise StoreError(f"{h5_path}: exists; remove it or choose another --h5")
    holder = writer_lock_holder(store_path)
    if holder:
        raise StoreError(f"{store_path}: an extract is writing this store ({holder}); export when it has finished")
    store = open_store(store_path, mode="r")
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    staging = h5_path.parent / f"{STAGING_PREFIX}{h5_path.name}-{uuid.uuid4().hex[:8]}"
    try:
        counts = store_h5.write_export(staging, store.attrs, MODALITIES, _export_entries(store))
        os.rename(staging, h5_path)
    finally:
        staging.unlink(missing_ok=True)
    log.info("%s: exported %s to %s", store_path, counts, h5_path)
    return {"path": str(h5_path), "clips_done": counts, "bytes": h5_path.stat().st_size}


def _export_entries(store: FeatureStore) -> Iterator[store_h5.ExportEntry]:
    """Every entry of `store` for export_h5, its done clips read (checksummed) as they are written.

    Raises:
        CorruptClipError: a status chunk or a done clip fails its checksum.
    """
    for modality in MODALITIES:
        for fp in store.fingerprints(modality):
            entry = store.entry(modality, fp)
            statuses = entry.statuses()
            if entry.damaged_status:
                raise CorruptClipError(str(store.path), entry.damaged_status[0], f"{modality}/status is damaged")
            done = np.flatnonzero(statuses == ClipStatus.DONE)
            specs = {name: (spec.shape, spec.dtype, spec.shape) for name, spec in entry.array_specs.items()}
            specs |= {VIEW_PREFIX + name: ((entry.num_views, *spec.shape), spec.dtype, (1, *spec.shape))
                      for name, spec in entry.view_specs.items()}
            yield store_h5.ExportEntry(modality, fp, entry.attrs, entry.reasons(), entry.sources(), statuses, specs,
                                       VIEW_PARAMS if entry.view_specs else None, _export_clips(store, entry, done, specs))


def _export_clips(store: FeatureStore, entry: FeatureEntry, done: np.ndarray,
                  specs: dict) -> Iterator[tuple[int, dict[str, np.ndarray], list[str]]]:
    """Each done clip's arrays as stored (int8 tokens with their scale, not dequantized; the views' arrays
    (K, ...)) and its view parameters, after read_clip checked its status, chunks and checksums (every view's)."""
    for index in done:
        clip_id = store.clip_ids[index]
        for view in range(entry.num_views + 1):
            entry.read_clip(clip_id, view=view)
        yield (index, entry.stored_arrays(index, specs),
               [json.dumps(p, sort_keys=True) for p in entry.view_params(clip_id)])
