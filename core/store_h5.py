"""The HDF5 side of the feature store, package-private: store.py reads an export through it, store_export.py
writes one.

The layout of an export file (`mmfer cache-export CACHE --h5 FILE.h5`, cache_schema.md "HDF5 export"): JSON
metadata as checksummed datasets, one chunk per clip with fletcher32; opening a file read only and writing one.
The checks, the errors and the classes that read an export through the store interface stay in store.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

H5_SUFFIXES = (".h5", ".hdf5")


def is_h5_path(path: str | os.PathLike) -> bool:
    """A `--cache` that names an HDF5 export (by its suffix) rather than a Zarr store folder."""
    return Path(path).suffix.lower() in H5_SUFFIXES


def open_read_only(path: Path):
    """The export at `path` as an h5py.File, read only.

    Raises:
        OSError: not a readable HDF5 file.
    """
    import h5py

    return h5py.File(path, "r")


def write_json(group, name: str, value: object) -> None:
    # JSON as a checksummed uint8 dataset: attributes cap at 64 KiB and carry no checksum.
    data = np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)
    group.create_dataset(name, data=data, chunks=(max(len(data), 1),), fletcher32=True)


def read_json(group, name: str) -> object:
    """A dataset written by write_json.

    Raises:
        OSError: it fails its fletcher32 checksum. KeyError: it is absent. ValueError: it is not JSON.
    """
    return json.loads(group[name][:].tobytes().decode())


def entry_names(handle, modality: str) -> list[str]:
    """The fingerprints of `modality`'s entries in an open export."""
    return sorted(handle[modality]) if modality in handle else []


@dataclass
class ExportEntry:
    """One entry to write: its metadata, statuses, the (shape, dtype, chunk shape) of each array per clip (the
    arrays of augmented views, `extract --views K`: shape (K, ...), one chunk per view), the name of its JSON list of view parameters
    (None without views), and its done clips as (clip index, {name: array as stored}, [view parameters as
    JSON text]), read on demand."""

    modality: str
    fingerprint: str
    attrs: dict
    reasons: list[str]
    sources: list[str]
    statuses: np.ndarray
    array_specs: dict[str, tuple[tuple[int, ...], str, tuple[int, ...]]]
    view_params_name: str | None
    clips: Iterator[tuple[int, dict[str, np.ndarray], list[str]]]


def write_export(path: Path, root_attrs: dict, modalities: tuple[str, ...], entries: Iterable[ExportEntry]) -> dict[str, int]:
    """Write an export file at `path` (the caller renames it into place); returns the clips written per
    "modality/fingerprint". An error raised while `entries` or their `clips` are read propagates."""
    import h5py

    counts = {}
    with h5py.File(path, "w") as out:
        write_json(out, "attrs", root_attrs)
        for modality in modalities:
            out.create_group(modality)
        for entry in entries:
            group = out[entry.modality].create_group(entry.fingerprint)
            write_json(group, "attrs", entry.attrs)
            write_json(group, "reason", entry.reasons)
            write_json(group, "source", entry.sources)
            n = len(entry.statuses)
            group.create_dataset("status", data=entry.statuses, chunks=(1,), fletcher32=True)
            arrays = {name: group.create_dataset(name, shape=(n, *shape), dtype=dtype, chunks=(1, *chunk),
                                                 fletcher32=True, fillvalue=0)
                      for name, (shape, dtype, chunk) in entry.array_specs.items()}
            view_params = [[] for _ in range(n)]
            count = 0
            for index, values, params in entry.clips:
                for name, value in values.items():
                    arrays[name][index] = value
                view_params[index] = params
                count += 1
            if entry.view_params_name is not None:
                write_json(group, entry.view_params_name, view_params)
            counts[f"{entry.modality}/{entry.fingerprint}"] = count
    return counts
