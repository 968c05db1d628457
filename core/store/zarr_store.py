"""The Zarr backend: a feature store folder (cache_schema.md), created, grown, opened and read or written.

Arrays are created at their final size, once, in a staging folder that is renamed into place; clip writers
(zarr_entry.py) only fill their own chunks. `create_store` takes a run's clip table (clip_table.py plans it);
`ensure_entry` makes an entry per modality and fingerprint. With zarr_entry.py, the only code that opens zarr.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
import zarr.codecs

from mmfer.core.faults import crash_point
from mmfer.core.store.clip_table import ClipTableChange, checked_root, plan_clip_table, position, records
from mmfer.core.store.layout import (MODALITIES, PARTIAL_SUFFIX, SCHEMA_VERSION, STAGING_PREFIX, VIEW_PARAMS, VIEW_PREFIX,
                                     ArraySpec, StoreError, format_differences, spec_attrs)
from mmfer.core.store.reading import chosen_fingerprint
from mmfer.core.store.zarr_entry import FeatureEntry

log = logging.getLogger(__name__)

# An all-zero clip (e.g. the timestamps of a 1-frame clip) must still leave its chunk on disk, because a
# missing chunk is how a reader tells "marked done without data". This is a runtime setting in zarr
# (not stored in the metadata), and this backend is zarr's only user in mmfer.
zarr.config.set({"array.write_empty_chunks": True})


def _array_options(dtype: str) -> dict:
    # Every array ends in crc32c, so a flipped byte raises instead of decoding to wrong numbers.
    # Codecs: blosc lz4 with byte shuffle, then crc32c. Measured on real (tiny) SigLIP tokens: 1.16x smaller
    # than raw fp16 and the fastest to read of none / zstd 1, 3 / blosc-zstd (cache_schema.md, "Storage").
    if dtype == "str":
        return {"compressors": [zarr.codecs.Crc32cCodec()]}
    blosc = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)
    return {"compressors": [blosc, zarr.codecs.Crc32cCodec()]}


class FeatureStore:
    """A Zarr feature store on disk: the clip table plus one FeatureEntry per modality and fingerprint."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        self._set_root_attrs(dict(group.attrs))

    def _set_root_attrs(self, attrs: dict) -> None:
        self.attrs, self.clip_table, self._index = checked_root(self.path, attrs, fix="re-run extract into a new --out")

    @property
    def clip_ids(self) -> list[str]:
        return list(self.clip_table["clip_id"])

    def index_of(self, clip_id: str) -> int:
        return position(self.path, self._index, clip_id)

    def take_clip_table(self, clip_table: pd.DataFrame, attrs: dict, *, quiet: bool = False) -> ClipTableChange:
        """Rewrite the clip table and root `attrs` for this run (see create_store); arrays grow first, so a
        crash in between leaves longer arrays than the table (harmless: the next run resizes them)."""
        merged, change = plan_clip_table(self.path, self.attrs["clip_table"], clip_table,
                                         self.attrs.get("label_names"), attrs.get("label_names"))
        if change.num_added:
            for modality in MODALITIES:
                for fp in self.fingerprints(modality):
                    group = _open_group(self.path / modality / fp, mode="r+")
                    for _, array in group.arrays():
                        array.resize((len(merged), *array.shape[1:]))
                    crash_point("entry_resized")
        unchanged = all(self.attrs.get(k) == json.loads(json.dumps(v)) for k, v in attrs.items())
        if change.num_changed or change.num_added or not unchanged:
            self._group.attrs.update({**attrs, "clip_table": merged})
            self._set_root_attrs(dict(self._group.attrs))
        if not quiet:
            log.info("%s: %s", self.path, change.format())
        return change

    def fingerprints(self, modality: str) -> list[str]:
        folder = self.path / modality
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "zarr.json").exists() and not p.name.startswith("."))

    def entry(self, modality: str, fingerprint: str | None = None) -> FeatureEntry:
        """The entry of `modality` with `fingerprint`, or the only one when None.

        Raises:
            StoreError: none, or several and no fingerprint given.
        """
        fingerprint = chosen_fingerprint(self.path, modality, self.fingerprints(modality), fingerprint)
        group = _open_group(self.path / modality / fingerprint, mode="r" if self._group.read_only else "r+")
        return FeatureEntry(self, modality, fingerprint, group)

    def ensure_entry(self, modality: str, fingerprint: str, attrs: dict, arrays: dict[str, ArraySpec], *,
                     view_arrays: dict[str, ArraySpec] | None = None, overwrite: bool = False) -> FeatureEntry:
        """Create the entry at its final size (staged, then renamed into place) unless it exists.

        With `view_arrays` (and attrs `views.num_views` = K > 0) it also keeps K augmented views per clip of
        those arrays: `view_<name>` [N, K, ...] with one chunk per (clip, view), and `view_params` [N, K].

        An entry with another fingerprint for the same modality is refused unless `overwrite`, which
        deletes it: features of two encoders never mix, and readers always know which they read.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        others = [f for f in self.fingerprints(modality) if f != fingerprint]
        if others and not overwrite:
            old_attrs = dict(self.entry(modality, others[0]).attrs)
            raise StoreError(
                f"{self.path}: holds {modality} features with fingerprint {others[0]}, this run would make "
                f"{fingerprint}; settings that differ: {format_differences(old_attrs, attrs)}; "
                "run with the store's settings, use another --out, or --overwrite to replace them")
        for other in others:
            log.warning("%s: removing %s entry %s (--overwrite)", self.path, modality, other)
            shutil.rmtree(self.path / modality / other)
        target = self.path / modality / fingerprint
        if not (target / "zarr.json").exists():
            num_views = int(attrs.get("views", {}).get("num_views", 0))
            views = view_arrays or {}
            if bool(num_views) != bool(views):
                raise ValueError(f"{modality} entry: views.num_views {num_views} needs view arrays and the reverse")
            staging = self.path / f"{STAGING_PREFIX}{modality}-{fingerprint}-{uuid.uuid4().hex[:8]}"
            _create_entry(staging, {**attrs, "modality": modality, "fingerprint": fingerprint}, arrays, views,
                          num_clips=len(self.clip_table), num_views=num_views)
            crash_point("entry_staged")
            os.rename(staging, target)
        return self.entry(modality, fingerprint)

    def leftovers(self) -> list[Path]:
        """What interrupted writes leave behind (read only): staging folders and `*.partial` chunk files."""
        created = self.path.parent.glob(f"{STAGING_PREFIX}{self.path.name}-{'[0-9a-f]' * 8}")   # see create_store
        return [*self.path.glob(f"{STAGING_PREFIX}*"), *created, *self.path.rglob(f"*{PARTIAL_SUFFIX}")]

    def clean_leftovers(self) -> int:
        """Delete `leftovers()`; only a holder of the writer lock may (a running extract's files look the same)."""
        removed = 0
        for leftover in self.leftovers():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def _create_entry(folder: Path, attrs: dict, arrays: dict[str, ArraySpec], views: dict[str, ArraySpec], *,
                  num_clips: int, num_views: int) -> None:
    """An entry's group at `folder` with every array at its final size: one chunk per clip (per clip and view)."""
    group = zarr.open_group(str(folder), mode="w", attributes={
        **attrs, "arrays": spec_attrs(arrays), **({"view_arrays": spec_attrs(views)} if views else {})})
    for name, spec in arrays.items():
        group.create_array(name, shape=(num_clips, *spec.shape), chunks=(1, *spec.shape), dtype=spec.dtype,
                           fill_value=0, **_array_options(spec.dtype))
    for name, spec in views.items():
        group.create_array(VIEW_PREFIX + name, shape=(num_clips, num_views, *spec.shape),
                           chunks=(1, 1, *spec.shape), dtype=spec.dtype, fill_value=0, **_array_options(spec.dtype))
    if views:
        group.create_array(VIEW_PARAMS, shape=(num_clips, num_views), chunks=(1, num_views), dtype=str,
                           **_array_options("str"))
    group.create_array("status", shape=(num_clips,), chunks=(1,), dtype="int8", fill_value=0, **_array_options("int8"))
    for name in ("reason", "source"):
        group.create_array(name, shape=(num_clips,), chunks=(1,), dtype=str, **_array_options("str"))


def check_clip_table(path: str | os.PathLike, clip_table: pd.DataFrame, label_names=None) -> ClipTableChange | None:
    """Read only: what `create_store` would change in the store at `path` for `clip_table` (None: no store
    yet), so extract can refuse before its encoders load.

    Raises:
        StoreError: as plan_clip_table, or an unreadable store.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        return None
    store = open_zarr_store(path, "r")
    return plan_clip_table(path, store.attrs["clip_table"], clip_table, store.attrs.get("label_names"), label_names)[1]


def create_store(path: str | os.PathLike, clip_table: pd.DataFrame, attrs: dict, *,
                 update: bool = True) -> FeatureStore:
    """Open the store at `path`, creating it (staged, then renamed) if absent.

    An existing store takes this run's clip table (`update`): every row as `clip_table` has it now (labels,
    folds, speakers, splits: the clip table is the manifest of the latest extract), its clips at their
    positions, new clips appended (every entry's arrays grow first, the new clips pending), and `attrs`
    (label names, root, ...) replace the stored ones. Features stay: extract redoes a clip only when its
    source changed. Logs one line counting the rows that changed. With `update` False (the other ranks of
    a torchrun group, after rank 0 updated it) the store must already hold these clips.

    Raises:
        StoreError: the manifest lacks clips the store holds; (not `update`) the store holds other clips.
    """
    path = Path(path)
    clip_ids = list(clip_table["clip_id"])
    if len(set(clip_ids)) != len(clip_ids):
        raise ValueError("clip table has duplicate clip_id values")
    existed = (path / "zarr.json").exists()
    if not existed:
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path}: exists and is not a feature store; choose another --out")
        staging = path.parent / f"{STAGING_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        table = records(clip_table)
        root = zarr.open_group(str(staging), mode="w", attributes={**attrs, "schema_version": SCHEMA_VERSION, "clip_table": table})
        for modality in MODALITIES:
            root.create_group(modality)
        crash_point("store_staged")
        if path.exists():
            path.rmdir()
        os.rename(staging, path)
    store = open_zarr_store(path, mode="r+")
    if update:
        store.take_clip_table(clip_table, attrs, quiet=not existed)
    elif sorted(store.clip_ids) != sorted(clip_ids):
        raise StoreError(f"{path}: the store holds {len(store.clip_ids)} clips, this rank's manifest {len(clip_ids)}; "
                         "every rank must read the same manifest")
    return store


def open_zarr_store(path: str | os.PathLike, mode: str) -> FeatureStore:
    """Open an existing Zarr store (`mode` "r" or "r+").

    Raises:
        StoreError: no store at `path`, unreadable metadata, or another schema version.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: no feature store here; run `extract` first (see run_all.sh)")
    return FeatureStore(path, _open_group(path, mode))


def _open_group(path: Path, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(str(path), mode=mode)
    except ValueError as err:   # json.JSONDecodeError and zarr's metadata errors
        raise StoreError(f"{path / 'zarr.json'}: unreadable metadata ({err}); the store is damaged: "
                         "re-run extract into a new --out") from err


def set_codec_threads(num_threads: int) -> None:
    """Threads blosc may start for one decode in this process (1: decode in the calling thread only), so the
    codec's threads count in the loader's thread budget instead of competing with the compute threads."""
    import numcodecs.blosc

    numcodecs.blosc.set_nthreads(num_threads)
    numcodecs.blosc.use_threads = num_threads > 1
