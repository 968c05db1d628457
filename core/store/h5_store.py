"""The HDF5 backend, read only: a store exported as one file (`mmfer cache-export CACHE --h5 FILE.h5`).

The file's layout (cache_schema.md "HDF5 export"): the metadata as checksummed JSON datasets (`attrs`, and
per entry `reason`, `source`, `view_params`), copied as HDF5 attributes for h5dump/HDFView (export.py writes
both; this reader trusts only the checksummed datasets, so exports made before the attributes open alike); one
chunk per clip with fletcher32. `H5Store` and `H5Entry` answer the reading interface of reading.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from mmfer.core.store.clip_table import checked_root, position
from mmfer.core.store.layout import VIEW_PARAMS, VIEW_PREFIX, ClipStatus, StoreError, entry_specs
from mmfer.core.store.quantize import dequantize_clip, is_quantized
from mmfer.core.store.reading import (chosen_fingerprint, num_views, parse_view_params, plan_clip_read, raw_bytes,
                                      read_cell, read_chunks, read_column)

ATTRS = "attrs"   # the JSON dataset holding a group's metadata (the root's, an entry's)
READ_ONLY = "an HDF5 export is read only"


def read_json(group: h5py.Group, name: str, where: object) -> object:
    """A JSON dataset of the export (a checksummed uint8 array).

    Raises:
        StoreError: it is absent, fails its fletcher32 checksum or is not JSON.
    """
    try:
        return json.loads(group[name][:].tobytes().decode())
    except (OSError, KeyError, ValueError) as err:
        raise StoreError(f"{where}: {name} is missing or damaged ({err}); export the Zarr store again") from err


class H5Entry:
    """An entry read from an HDF5 export: the same checks as a Zarr entry's (status DONE, fletcher32 per chunk)."""

    def __init__(self, store: "H5Store", modality: str, fingerprint: str, group: h5py.Group) -> None:
        self.store, self.modality, self.fingerprint, self._group = store, modality, fingerprint, group
        self.attrs: dict = read_json(group, ATTRS, self.path)
        self.array_specs, self.view_specs = entry_specs(self.attrs)
        self._arrays = {name: group[name] for name in (*self.array_specs, *(VIEW_PREFIX + n for n in self.view_specs), "status")}
        self.damaged_status: list[str] = []

    @property
    def path(self) -> str:
        return f"{self.store.path}:/{self.modality}/{self.fingerprint}"

    @property
    def is_quantized(self) -> bool:
        return is_quantized(self.array_specs)

    @property
    def num_views(self) -> int:
        return num_views(self.attrs, self.view_specs)

    def raw_bytes_per_clip(self) -> int:
        return raw_bytes(self.array_specs)

    def raw_bytes_per_view(self) -> int:
        return raw_bytes(self.view_specs)

    def statuses(self) -> np.ndarray:
        """int8 [N] ClipStatus per clip; a status failing its checksum reads as PENDING (see `damaged_status`)."""
        return np.asarray(read_column(self._arrays["status"], store_path=self.store.path, clip_ids=self.store.clip_ids,
                                      what=f"{self.modality}/status", fallback=ClipStatus.PENDING,
                                      damaged=self.damaged_status), dtype=np.int8)

    def reasons(self) -> list[str]:
        return [str(r) for r in read_json(self._group, "reason", self.path)]

    def sources(self) -> list[str]:
        return [str(s) for s in read_json(self._group, "source", self.path)]

    def read_clip(self, clip_id: str, names: tuple[str, ...] | None = None, *, view: int = 0) -> dict[str, np.ndarray]:
        """As the Zarr entry's read_clip: checked (status DONE, fletcher32), int8 tokens back as float16."""
        index = self.store.index_of(clip_id)
        status = read_cell(self._arrays["status"], index, store_path=self.store.path, clip_id=clip_id,
                           what=f"{self.modality}/status")
        requests = plan_clip_read(self, clip_id, status, names, view, lambda *_: True)   # export writes every done chunk
        out = read_chunks(self._arrays, requests, store_path=self.store.path, clip_id=clip_id, modality=self.modality)
        return dequantize_clip(out, names)

    def view_params(self, clip_id: str) -> list[dict]:
        if not self.num_views:
            return []
        return parse_view_params(read_json(self._group, VIEW_PARAMS, self.path)[self.store.index_of(clip_id)])

    def stored_arrays(self, index: int, names) -> dict[str, np.ndarray]:
        return {name: self._arrays[name][index] for name in names}

    def clip_chunk_files(self, index: int) -> list[Path]:
        return []   # chunks live inside the one file

    def write_clip(self, clip_id: str, arrays: dict, source: str, **_) -> None:
        raise StoreError(f"{self.store.path}: {READ_ONLY}; extract into the Zarr store and export again")

    def mark(self, clip_id: str, status: ClipStatus, reason: str, source: str = "") -> None:
        raise StoreError(f"{self.store.path}: {READ_ONLY}; repair the Zarr store (`mmfer verify STORE --repair`) "
                         "and export again")


class H5Store:
    """An HDF5 export of a store (read only): the clip table, the attributes and every entry."""

    def __init__(self, path: Path, handle: h5py.File) -> None:
        self.path, self._handle = path, handle
        self.attrs, self.clip_table, self._index = checked_root(
            path, read_json(handle, ATTRS, path), fix="export the store again with this version")

    @property
    def clip_ids(self) -> list[str]:
        return list(self.clip_table["clip_id"])

    def index_of(self, clip_id: str) -> int:
        return position(self.path, self._index, clip_id)

    def fingerprints(self, modality: str) -> list[str]:
        return sorted(self._handle[modality]) if modality in self._handle else []

    def entry(self, modality: str, fingerprint: str | None = None) -> H5Entry:
        """The entry of `modality` with `fingerprint`, or the only one when None.

        Raises:
            StoreError: none, or several and no fingerprint given.
        """
        fingerprint = chosen_fingerprint(self.path, modality, self.fingerprints(modality), fingerprint)
        return H5Entry(self, modality, fingerprint, self._handle[modality][fingerprint])

    def leftovers(self) -> list[Path]:
        return []

    def clean_leftovers(self) -> int:
        return 0

    def bytes_on_disk(self) -> int:
        return self.path.stat().st_size


def open_h5_store(path: str | Path) -> H5Store:
    """Open an HDF5 export, read only.

    Raises:
        StoreError: no such file, not HDF5, or its metadata is missing, damaged or of another schema.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no HDF5 feature store here; write one with `mmfer cache-export CACHE --h5 {path}`")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({err}); export the store again") from err
    return H5Store(path, handle)
