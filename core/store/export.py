"""`mmfer cache-export CACHE --h5 FILE.h5`: a Zarr store written as one HDF5 file (cache_schema.md "HDF5 export").

Every done clip is read through the reading interface's checks first, then written as stored (int8 tokens with
their scale) with one chunk per clip and fletcher32. The metadata goes in twice: as checksummed JSON datasets
(what h5_store.py reads) and as HDF5 attributes of the root and entry groups (what h5dump -A and HDFView show).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from mmfer.core.errors import BadInputError
from mmfer.core.store.h5_store import ATTRS
from mmfer.core.store.layout import (H5_SUFFIXES, MODALITIES, STAGING_PREFIX, VIEW_PARAMS, VIEW_PREFIX, ClipStatus,
                                     CorruptClipError, StoreError, is_h5_path)
from mmfer.core.store.lock import writer_lock_holder
from mmfer.core.store.reading import EntryReader, StoreReader
from mmfer.core.store import open_store

log = logging.getLogger(__name__)

# A longer value (a real dataset's clip table) is only in the JSON dataset: over 64 KiB an attribute needs HDF5's
# dense attribute storage, which older HDF5 readers lack, and it would flood `h5dump -A` and HDFView.
MAX_ATTRIBUTE_BYTES = 32 * 1024


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
        raise BadInputError(f"{h5_path}: name the HDF5 file with a suffix {' or '.join(H5_SUFFIXES)}")
    if h5_path.exists():
        raise StoreError(f"{h5_path}: exists; remove it or choose another --h5")
    holder = writer_lock_holder(store_path)
    if holder:
        raise StoreError(f"{store_path}: an extract is writing this store ({holder}); export when it has finished")
    store = open_store(store_path, mode="r")
    h5_path.parent.mkdir(parents=True, exist_ok=True)
    staging = h5_path.parent / f"{STAGING_PREFIX}{h5_path.name}-{uuid.uuid4().hex[:8]}"
    try:
        counts = _write_file(staging, store)
        os.rename(staging, h5_path)
    finally:
        staging.unlink(missing_ok=True)
    log.info("%s: exported %s to %s", store_path, counts, h5_path)
    return {"path": str(h5_path), "clips_done": counts, "bytes": h5_path.stat().st_size}


def _write_file(path: Path, store: StoreReader) -> dict[str, int]:
    """Write the export of `store` at `path` (the caller renames it into place); returns the clips written per
    "modality/fingerprint".

    Raises:
        CorruptClipError: a status chunk or a done clip fails its checksum.
    """
    counts = {}
    with h5py.File(path, "w") as out:
        _write_metadata(out, store.attrs)
        for modality in MODALITIES:
            out.create_group(modality)
        for modality in MODALITIES:
            for fp in store.fingerprints(modality):
                entry = store.entry(modality, fp)
                counts[f"{modality}/{fp}"] = _write_entry(out[modality].create_group(fp), store, entry)
    return counts


def _write_entry(group: h5py.Group, store: StoreReader, entry: EntryReader) -> int:
    """One entry: its metadata, statuses, reasons, sources, then each done clip's arrays as stored (int8 tokens
    with their scale; the views' arrays (K, ...), one chunk per view) after read_clip checked its status, chunks
    and checksums (every view's). Returns the number of clips written."""
    statuses = entry.statuses()
    if entry.damaged_status:
        raise CorruptClipError(str(store.path), entry.damaged_status[0], f"{entry.modality}/status is damaged")
    _write_metadata(group, entry.attrs)
    _write_json(group, "reason", entry.reasons())
    _write_json(group, "source", entry.sources())
    n = len(statuses)
    group.create_dataset("status", data=statuses, chunks=(1,), fletcher32=True)
    specs = {name: (spec.shape, spec.dtype, spec.shape) for name, spec in entry.array_specs.items()}
    specs |= {VIEW_PREFIX + name: ((entry.num_views, *spec.shape), spec.dtype, (1, *spec.shape))
              for name, spec in entry.view_specs.items()}
    arrays = {name: group.create_dataset(name, shape=(n, *shape), dtype=dtype, chunks=(1, *chunk),
                                         fletcher32=True, fillvalue=0)
              for name, (shape, dtype, chunk) in specs.items()}
    view_params: list[list[str]] = [[] for _ in range(n)]
    done = np.flatnonzero(statuses == ClipStatus.DONE)
    for index in done:
        clip_id = store.clip_ids[index]
        for view in range(entry.num_views + 1):
            entry.read_clip(clip_id, view=view)
        for name, value in entry.stored_arrays(index, specs).items():
            arrays[name][index] = value
        view_params[index] = [json.dumps(p, sort_keys=True) for p in entry.view_params(clip_id)]
    if entry.view_specs:
        _write_json(group, VIEW_PARAMS, view_params)
    return len(done)


def _write_metadata(group: h5py.Group, attrs: dict) -> None:
    """A group's metadata: the checksummed JSON dataset `attrs` (what the reader trusts), and each key as an HDF5
    attribute: strings and numbers as they are, anything else (dicts, lists, None) as its JSON text."""
    _write_json(group, ATTRS, attrs)
    for key, value in attrs.items():   # (a value longer than MAX_ATTRIBUTE_BYTES: only in the dataset)
        plain = isinstance(value, (str, int, float)) and not (isinstance(value, str) and len(value) > MAX_ATTRIBUTE_BYTES)
        text = None if plain else json.dumps(value, sort_keys=True)
        if text is not None and len(text.encode()) > MAX_ATTRIBUTE_BYTES:
            continue   # the clip table of a real dataset: only in the JSON dataset
        group.attrs[key] = value if plain else text


def _write_json(group: h5py.Group, name: str, value: object) -> None:
    # JSON as a checksummed uint8 dataset: attributes cap at 64 KiB and carry no checksum.
    data = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    group.create_dataset(name, data=data, chunks=(max(len(data), 1),), fletcher32=True)
