"""The feature store: the one module that knows the Zarr layout (documented in cache_schema.md).

`extract/` writes clips through `FeatureEntry.write_clip`; `train/` reads them through
`FeatureEntry.read_clip`. Arrays are created at their final size, once, in a staging folder that is
renamed into place; clip writers only fill their own chunks and write the clip's status last (it goes
PENDING before anything else of the clip changes), so a crash at any moment leaves a store whose clips
are either done (data complete and checksummed) or not. An HDF5 export (store_export.py writes it, store_h5.py
knows its file layout and h5py) is opened by `open_store` too, read only, through the same classes. A Zarr
store's chunks are read by zarr-python, or by tensorstore (`reader="tensorstore"`, the `fast-read` extra; the
same crc32c checks). `mmfer verify` is store_verify.py. Nothing else in mmfer (but store_h5.py, for h5py)
imports zarr, h5py or tensorstore or spells a path inside the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import zarr
import zarr.codecs

from mmfer.core import store_h5
from mmfer.core.errors import BadInputError
from mmfer.core.faults import crash_point
from mmfer.core.store_h5 import is_h5_path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MODALITIES = ("video", "audio")
LOCK_FILE = ".extract.lock"
STAGING_PREFIX = ".staging-"
PARTIAL_SUFFIX = ".partial"    # zarr's LocalStore writes `<chunk>.<uuid>.partial`, then renames
CHECKSUM_ERRORS = (ValueError, OSError)   # zarr's (and tensorstore's DATA_LOSS) crc32c ValueError, h5py's fletcher32 OSError
READERS = ("zarr-python", "tensorstore")   # what reads a Zarr store's chunks (an HDF5 file: always h5py)
# Codecs: blosc lz4 with byte shuffle, then crc32c. Measured on real (tiny) SigLIP tokens: 1.16x smaller
# than raw fp16 and the fastest to read of none / zstd 1, 3 / blosc-zstd (cache_schema.md, "Storage").

# An all-zero clip (e.g. the timestamps of a 1-frame clip) must still leave its chunk on disk, because a
# missing chunk is how a reader tells "marked done without data". This is a runtime setting in zarr
# (not stored in the metadata), and this module is zarr's only user in mmfer.
zarr.config.set({"array.write_empty_chunks": True})


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


def _array_options(dtype: str) -> dict:
    # Every array ends in crc32c, so a flipped byte raises instead of decoding to wrong numbers.
    if dtype == "str":
        return {"compressors": [zarr.codecs.Crc32cCodec()]}
    blosc = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=np.dtype(dtype).itemsize)
    return {"compressors": [blosc, zarr.codecs.Crc32cCodec()]}


TOKEN_SCALE = "token_scale"   # float16 (..., P): an int8 entry's per-token scale, beside its "tokens"
VIEW_PREFIX = "view_"         # `extract --views K`: array `view_<name>` [N, K, ...] holds the K augmented views of `<name>`
VIEW_PARAMS = "view_params"   # string [N, K]: JSON of the parameters each view was drawn with


def quantize_tokens(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float tokens (..., D) -> int8 tokens and a float16 scale (...,) per token: x ~ q * scale, |q| <= 127."""
    scale = (np.abs(tokens).max(axis=-1) / 127.0).astype(np.float16)
    safe = np.where(scale > 0, scale, 1).astype(np.float32)[..., None]
    return np.clip(np.rint(tokens / safe), -127, 127).astype(np.int8), scale


def dequantize_tokens(quantized: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 tokens and their scale -> float16 tokens, as training reads them."""
    return (quantized.astype(np.float32) * scale.astype(np.float32)[..., None]).astype(np.float16)


def as_stored(clip_id: str, arrays: dict[str, np.ndarray], specs: dict, what: str, *,
              read_back: bool = False) -> dict[str, np.ndarray]:
    """`arrays` checked against `specs` (name -> ArraySpec or (shape, dtype): names, shapes, finite) and cast to the
    stored dtypes, int8 tokens quantized with their scale: what a write puts in the store. `read_back`: as a read
    returns them (int8 tokens dequantized to float16), what predict feeds the model.

    Raises:
        ValueError: names, a shape or NaN/Inf differ from what the store holds; names the clip and array.
    """
    specs = {n: s if isinstance(s, ArraySpec) else ArraySpec(tuple(s[0]), str(s[1])) for n, s in specs.items()}
    if "tokens" in specs and specs["tokens"].dtype == "int8" and TOKEN_SCALE not in specs:
        specs[TOKEN_SCALE] = ArraySpec(specs["tokens"].shape[:-1], "float16")
    if TOKEN_SCALE in specs and TOKEN_SCALE not in arrays and "tokens" in arrays:
        arrays = dict(arrays)
        arrays["tokens"], arrays[TOKEN_SCALE] = quantize_tokens(np.asarray(arrays["tokens"], dtype=np.float32))
    if set(arrays) != set(specs):
        raise ValueError(f"clip {clip_id}: {what} arrays {sorted(arrays)} != {sorted(specs)}")
    prepared = {}
    for name, value in arrays.items():
        spec = specs[name]
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"clip {clip_id}: {what}/{name} contains NaN or Inf; refusing to store it")
        if value.shape != spec.shape:
            raise ValueError(f"clip {clip_id}: {what}/{name} has shape {value.shape}, the store expects {spec.shape}")
        prepared[name] = value.astype(spec.dtype, copy=False)
    if read_back and TOKEN_SCALE in prepared:
        prepared["tokens"] = dequantize_tokens(prepared["tokens"], prepared.pop(TOKEN_SCALE))
    return prepared


class FeatureEntry:
    """One modality's features made with one encoder + preprocessing (one fingerprint)."""

    def __init__(self, store: "FeatureStore", modality: str, fingerprint: str, group: zarr.Group) -> None:
        self.store = store
        self.modality = modality
        self.fingerprint = fingerprint
        self._group = group
        self.attrs: dict = dict(group.attrs)
        self.array_specs = {name: ArraySpec(tuple(s["shape"]), s["dtype"]) for name, s in self.attrs["arrays"].items()}
        self.view_specs = _view_specs(self.attrs)
        self._arrays = {}
        for name in (*self.array_specs, *self._view_array_names(), "status", "reason", "source"):
            try:
                self._arrays[name] = group[name]
            except (KeyError, ValueError) as err:   # folder deleted, or its zarr.json unreadable
                raise StoreError(f"{self.path}: array {name!r} is missing or unreadable ({err!r}); this entry is "
                                 "damaged: re-run extract with --overwrite, or into a new --out") from err
        self.damaged_status: list[str] = []   # clip ids whose status chunk failed its checksum (see statuses)
        self._tensorstore_arrays: dict = {}   # name -> opened tensorstore array (reader "tensorstore"), on first read

    @property
    def path(self) -> Path:
        return self.store.path / self.modality / self.fingerprint

    def statuses(self) -> np.ndarray:
        """int8 [N] ClipStatus per clip, in clip-table order. A status chunk that fails its checksum reads
        as PENDING (never trusted, redone by extract), with a warning, and its clip goes in `damaged_status`."""
        values = self._read_all("status", ClipStatus.PENDING)
        return np.asarray(values, dtype=np.int8)

    def reasons(self) -> list[str]:
        return [str(r) for r in self._read_all("reason", "")]

    def sources(self) -> list[str]:
        return [str(s) for s in self._read_all("source", "")]

    def _read_all(self, name: str, fallback):
        try:   # the clip table's length: a crash while a store grew can leave arrays longer (create_store)
            return list(self._arrays[name][:len(self.store.clip_ids)])
        except CHECKSUM_ERRORS:   # a checksum mismatch in one clip's chunk: read one by one to name it
            values = []
            for index, clip_id in enumerate(self.store.clip_ids):
                try:
                    values.append(self._read_meta(name, index))
                except CorruptClipError as err:
                    log.warning("%s", err)
                    if name == "status" and clip_id not in self.damaged_status:
                        self.damaged_status.append(clip_id)
                    values.append(fallback)
            return values

    def _read_meta(self, name: str, index: int):
        try:
            return self._arrays[name][index]
        except CHECKSUM_ERRORS as err:
            raise CorruptClipError(str(self.store.path), self.store.clip_ids[index],
                                   f"{self.modality}/{name} is damaged ({err})") from err

    def stored_arrays(self, index: int, names) -> dict[str, np.ndarray]:
        """Clip `index`'s arrays as stored, unchecked (int8 tokens with their scale; a view array (K, ...)):
        for copying a store (export), after `read_clip` checked the clip."""
        return {name: self._arrays[name][index] for name in names}

    @property
    def is_quantized(self) -> bool:
        """Tokens stored as int8 with a per-token scale (`--token-dtype int8`); read_clip gives them back as float16."""
        return TOKEN_SCALE in self.array_specs

    def raw_bytes_per_clip(self) -> int:
        """Uncompressed bytes of one clip's clean arrays (its views not counted: see raw_bytes_per_view)."""
        return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in self.array_specs.values())

    @property
    def num_views(self) -> int:
        """K augmented views stored per clip besides the clean one (`extract --views K`; 0 for most stores)."""
        return int(self.attrs.get("views", {}).get("num_views", 0)) if self.view_specs else 0

    def raw_bytes_per_view(self) -> int:
        """Uncompressed bytes of one augmented view of one clip (0 without views)."""
        return sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in self.view_specs.values())

    def _view_array_names(self) -> list[str]:
        return [VIEW_PREFIX + name for name in self.view_specs] + ([VIEW_PARAMS] if self.view_specs else [])

    def write_clip(self, clip_id: str, arrays: dict[str, np.ndarray], source: str, *,
                   view_data: list[dict[str, np.ndarray]] | None = None, view_params: list[dict] | None = None) -> ClipRecord:
        """Write one clip's arrays and, in an entry with views, its K augmented views (`view_data[v]` holds the
        view arrays, `view_params[v]` what view v+1 was drawn with), then its status DONE: a clip is done
        only with all its views (the order is what makes 'done' honest).

        Raises:
            ValueError: wrong names, shapes beyond the array, a view count other than the entry's, or
                NaN/Inf in the data (never stored).
        """
        index = self.store.index_of(clip_id)
        prepared = as_stored(clip_id, arrays, self.array_specs, self.modality)
        views, view_params = list(view_data or []), list(view_params or [])
        if len(views) != self.num_views or len(view_params) != self.num_views:
            raise ValueError(f"clip {clip_id}: {len(views)} {self.modality} views ({len(view_params)} parameter "
                             f"records) given, the entry stores {self.num_views}")
        prepared_views = [as_stored(clip_id, view, self.view_specs, f"{self.modality} view {v + 1}")
                          for v, view in enumerate(views)]
        num_bytes = sum(v.nbytes for v in prepared.values()) + sum(v.nbytes for view in prepared_views for v in view.values())
        self._set_status(index, ClipStatus.PENDING, "", "")   # a rewrite is never 'done' halfway
        for name, value in prepared.items():
            self._arrays[name][index] = value
            crash_point("array_written")
        for v, view in enumerate(prepared_views):
            for name, value in view.items():
                self._arrays[VIEW_PREFIX + name][index, v] = value
            self._arrays[VIEW_PARAMS][index, v] = json.dumps(view_params[v], sort_keys=True)
            crash_point("view_written")
        crash_point("before_done")
        self._set_status(index, ClipStatus.DONE, "", source)
        return ClipRecord(clip_id, self.modality, self.fingerprint, {k: v.shape for k, v in prepared.items()}, num_bytes)

    def mark(self, clip_id: str, status: ClipStatus, reason: str, source: str = "") -> None:
        """Record FAILED (with its reason), MISSING (e.g. no audio stream) or PENDING for a clip."""
        self._set_status(self.store.index_of(clip_id), status, reason, source)

    def _set_status(self, index: int, status: ClipStatus, reason: str, source: str) -> None:
        # PENDING first: a kill between the writes below must not leave an old DONE standing over a new
        # source signature (which would make the next run skip a clip whose data is the old file's).
        self._arrays["status"][index] = np.int8(ClipStatus.PENDING)
        self._arrays["reason"][index] = reason
        self._arrays["source"][index] = source
        crash_point("status_meta_written")
        if status != ClipStatus.PENDING:
            self._arrays["status"][index] = np.int8(status)

    def read_clip(self, clip_id: str, names: tuple[str, ...] | None = None, *, view: int = 0) -> dict[str, np.ndarray]:
        """One clip's arrays (one chunk read each; `names` picks some), checked: status DONE, every chunk
        on disk, checksums. `view` 0 is the clean clip, 1..K its augmented views (`extract --views K`): a
        view's own arrays (e.g. tokens, pooled) with the clean clip's others (timestamps_s, boxes, ...).

        Raises:
            StoreError: the clip is not done, or the entry has no such view.
            CorruptClipError: a chunk is missing or fails its checksum.
        """
        index = self.store.index_of(clip_id)
        status = ClipStatus(int(self._read_meta("status", index)))
        if status != ClipStatus.DONE:
            raise StoreError(f"{self.store.path}: clip {clip_id}: {self.modality} status is {status.name}, not DONE")
        if not 0 <= view <= self.num_views:
            raise StoreError(f"{self.path}: no view {view} (this entry stores {self.num_views} augmented views per clip "
                             "besides the clean view 0; re-run extract with --views to store more)")
        wanted = list(names or self.array_specs)
        if self.is_quantized and "tokens" in wanted and TOKEN_SCALE not in wanted:
            wanted.append(TOKEN_SCALE)
        requests = {}
        for name in wanted:
            if name not in self.array_specs:
                raise StoreError(f"{self.path}: no array {name!r} (has {sorted(self.array_specs)})")
            stored, key = (VIEW_PREFIX + name, (index, view - 1)) if view and name in self.view_specs else (name, (index,))
            if not self._has_chunk(stored, *key):
                raise CorruptClipError(str(self.store.path), clip_id, f"marked done but {self.modality}/{stored} has no data chunk"
                                       + (f" for view {view}" if view and stored != name else ""))
            requests[name] = (stored, key)
        out = self._read_chunks(clip_id, requests)
        if self.is_quantized and "tokens" in out:
            out["tokens"] = dequantize_tokens(out["tokens"], out[TOKEN_SCALE])
            if names and TOKEN_SCALE not in names:
                del out[TOKEN_SCALE]
        return out

    def _read_chunks(self, clip_id: str, requests: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
        """{name: (stored array, chunk key)} -> {name: that chunk}, checksums checked: one after the other with
        zarr-python; with tensorstore all requested at once, then awaited."""
        if self.store.reader == "tensorstore":
            pending = {name: self._tensorstore_array(stored)[key].read() for name, (stored, key) in requests.items()}
            fetch = lambda name: pending[name].result()   # noqa: E731
        else:
            fetch = lambda name: self._arrays[requests[name][0]][requests[name][1]]   # noqa: E731
        out = {}
        for name, (stored, _) in requests.items():
            try:
                out[name] = fetch(name)
            except CHECKSUM_ERRORS as err:
                raise CorruptClipError(str(self.store.path), clip_id, f"{self.modality}/{stored} is damaged ({err})") from err
        return out

    def _tensorstore_array(self, name: str):
        if name not in self._tensorstore_arrays:
            import tensorstore

            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(self.path / name)}}
            self._tensorstore_arrays[name] = tensorstore.open(spec, read=True, context=self.store.tensorstore_context).result()
        return self._tensorstore_arrays[name]

    def view_params(self, clip_id: str) -> list[dict]:
        """What each of the clip's K views was drawn with (crop, flip, jitter / tempo, pitch, SNR), view 1 first.

        Raises:
            CorruptClipError: the record fails its checksum.
        """
        index = self.store.index_of(clip_id)
        return [json.loads(str(text)) if str(text) else {} for text in
                (self._read_meta(VIEW_PARAMS, index) if self.num_views else [])]

    def _has_chunk(self, name: str, index: int, view: int | None = None) -> bool:
        return self._chunk_file(self._arrays[name], index, view).exists()

    def _chunk_file(self, array: zarr.Array, index: int, view: int | None = None) -> Path:
        leading = (index,) if view is None else (index, view)
        key = array.metadata.encode_chunk_key(leading + (0,) * (array.ndim - len(leading)))
        return self.path / array.basename / key

    def clip_chunk_files(self, index: int) -> list[Path]:
        files = [self._chunk_file(self._arrays[name], index) for name in self.array_specs]
        files += [self._chunk_file(self._arrays[VIEW_PREFIX + name], index, v)
                  for name in self.view_specs for v in range(self.num_views)]
        if self.view_specs:
            files.append(self._chunk_file(self._arrays[VIEW_PARAMS], index))
        return files


def _view_specs(attrs: dict) -> dict[str, ArraySpec]:
    """The per-view arrays an entry keeps (attrs `view_arrays`; empty for an entry without views)."""
    return {name: ArraySpec(tuple(s["shape"]), s["dtype"]) for name, s in attrs.get("view_arrays", {}).items()}


class FeatureStore:
    """A feature store on disk: the clip table plus one FeatureEntry per modality and fingerprint."""

    def __init__(self, path: Path, group: zarr.Group, *, reader: str = "zarr-python") -> None:
        self.path = path
        self._group = group
        self._set_root_attrs(dict(group.attrs), fix="re-run extract into a new --out")
        self.reader = reader
        self.tensorstore_context = _tensorstore_context() if reader == "tensorstore" else None

    def _set_root_attrs(self, attrs: dict, *, fix: str) -> None:
        """Check the schema version, then keep the root attributes and the clip table (with its index)."""
        found = attrs.get("schema_version")
        if found != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema v{found}, this code reads v{SCHEMA_VERSION}; {fix}")
        self.attrs = attrs
        self.clip_table = pd.DataFrame(attrs["clip_table"])
        self._index = {cid: i for i, cid in enumerate(self.clip_table["clip_id"])}

    @property
    def clip_ids(self) -> list[str]:
        return list(self.clip_table["clip_id"])

    def index_of(self, clip_id: str) -> int:
        try:
            return self._index[clip_id]
        except KeyError:
            raise KeyError(f"{self.path}: no clip {clip_id!r} in this store's clip table") from None

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
            self._set_root_attrs(dict(self._group.attrs), fix="re-run extract into a new --out")
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
        found = self.fingerprints(modality)
        if fingerprint is None:
            if len(found) != 1:
                what = "no" if not found else f"{len(found)} ({', '.join(found)}); choose one with --{modality}-entry"
                raise StoreError(f"{self.path}: {what} {modality} feature entries")
            fingerprint = found[0]
        elif fingerprint not in found:
            raise StoreError(f"{self.path}: no {modality} entry with fingerprint {fingerprint} (have: {', '.join(found) or 'none'})")
        return self._open_entry(modality, fingerprint)

    def _open_entry(self, modality: str, fingerprint: str) -> FeatureEntry:
        group = _open_group(self.path / modality / fingerprint, mode="r+" if self._writable else "r")
        return FeatureEntry(self, modality, fingerprint, group)

    @property
    def _writable(self) -> bool:
        return not self._group.read_only

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
                f"{fingerprint}; settings that differ: {_differences(old_attrs, attrs)}; "
                "run with the store's settings, use another --out, or --overwrite to replace them")
        for other in others:
            log.warning("%s: removing %s entry %s (--overwrite)", self.path, modality, other)
            shutil.rmtree(self.path / modality / other)
        target = self.path / modality / fingerprint
        if not (target / "zarr.json").exists():
            num_clips = len(self.clip_table)
            staging = self.path / f"{STAGING_PREFIX}{modality}-{fingerprint}-{uuid.uuid4().hex[:8]}"
            num_views = int(attrs.get("views", {}).get("num_views", 0))
            views = view_arrays or {}
            if bool(num_views) != bool(views):
                raise ValueError(f"{modality} entry: views.num_views {num_views} needs view arrays and the reverse")
            group = zarr.open_group(str(staging), mode="w", attributes={
                **attrs, "modality": modality, "fingerprint": fingerprint,
                "arrays": {n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in arrays.items()},
                **({"view_arrays": {n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in views.items()}} if views else {})})
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


ENTRY_BOOKKEEPING = ("modality", "fingerprint", "arrays", "view_arrays")   # entry attrs that are not settings


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


def _differences(old: dict, new: dict) -> str:
    """`key: stored -> this run` for each differing setting, for a refusal message."""
    def shown(value: object) -> object:
        return "(none)" if value is None else value

    diffs = [f"{k}: {shown(a)} -> {shown(b)}" for k, a, b in entry_differences(old, new)]
    return "; ".join(diffs) if diffs else "none recorded (the stored entry predates these records)"


@dataclass(frozen=True)
class ClipTableChange:
    """How this run's manifest differs from a store's clip table: what `create_store` rewrites."""

    num_changed: int = 0          # clips whose row differs (label, fold, speaker, split, path, ...)
    changed_columns: tuple[str, ...] = ()
    num_added: int = 0            # clips new to the store, appended at its end
    label_names_changed: bool = False

    def format(self) -> str:
        columns = f" ({', '.join(self.changed_columns)})" if self.changed_columns else ""
        names = "; label names changed" if self.label_names_changed else ""
        return f"clip table: {self.num_changed} rows changed{columns}, {self.num_added} clips added{names}"


def _records(table: pd.DataFrame) -> list[dict]:
    """The clip table as the store keeps it (JSON records, so values compare as they will read back)."""
    return json.loads(table.to_json(orient="records"))


def plan_clip_table(path: str | os.PathLike, stored: list[dict], table: pd.DataFrame,
                    stored_names=None, names=None) -> tuple[list[dict], ClipTableChange]:
    """The clip table a store at `path` holding `stored` takes for this run's manifest `table`: every row as the
    manifest has it now, the store's clips at their positions (arrays are indexed by position) and new clips
    appended. Nothing is written.

    Raises:
        StoreError: the manifest lacks clips the store holds (a store never drops a clip's position).
    """
    new = {row["clip_id"]: row for row in _records(table)}
    old_ids = [row["clip_id"] for row in stored]
    gone = [c for c in old_ids if c not in new]
    if gone:
        raise StoreError(
            f"{path}: this store holds {len(old_ids)} clips and this run's manifest lacks {len(gone)} of them "
            f"(e.g. {', '.join(gone[:3])}); a store keeps every clip it was made for: put them back in the manifest "
            "(--select/--limit process part of it), or extract into a new --out")
    old_set = set(old_ids)
    added = [c for c in new if c not in old_set]
    columns: set[str] = set()
    num_changed = 0
    for row in stored:
        fresh = new[row["clip_id"]]
        differing = {k for k in set(row) | set(fresh) if row.get(k) != fresh.get(k)}
        if differing:
            num_changed += 1
            columns |= differing
    merged = [new[c] for c in old_ids] + [new[c] for c in added]
    names_changed = stored_names is not None and names is not None and list(stored_names) != list(names)
    return merged, ClipTableChange(num_changed, tuple(sorted(columns)), len(added), names_changed)


def check_clip_table(path: str | os.PathLike, clip_table: pd.DataFrame, label_names=None) -> ClipTableChange | None:
    """Read only: what `create_store` would change in the store at `path` for `clip_table` (None: no store
    yet), so extract can refuse before its encoders load.

    Raises:
        StoreError: as plan_clip_table, or an unreadable store.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        return None
    store = open_store(path)
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
        table = _records(clip_table)
        root = zarr.open_group(str(staging), mode="w", attributes={**attrs, "schema_version": SCHEMA_VERSION, "clip_table": table})
        for modality in MODALITIES:
            root.create_group(modality)
        crash_point("store_staged")
        if path.exists():
            path.rmdir()
        os.rename(staging, path)
    store = open_store(path, mode="r+")
    if update:
        store.take_clip_table(clip_table, attrs, quiet=not existed)
    elif sorted(store.clip_ids) != sorted(clip_ids):
        raise StoreError(f"{path}: the store holds {len(store.clip_ids)} clips, this rank's manifest {len(clip_ids)}; "
                         "every rank must read the same manifest")
    return store


def open_store(path: str | os.PathLike, mode: str = "r", *, reader: str = "zarr-python") -> FeatureStore:
    """Open an existing store (`mode` "r" or "r+"); `reader` (READERS) reads a Zarr store's chunks in
    `read_clip` (an HDF5 file is read by h5py, whatever it says).

    Raises:
        StoreError: no store at `path`, or another schema version; tensorstore asked for and not installed.
    """
    path = Path(path)
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if is_h5_path(path):
        return _open_h5(path)   # read only, whatever `mode` asks
    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: no feature store here; run `extract` first (see run_all.sh)")
    return FeatureStore(path, _open_group(path, mode), reader=reader)


def tensorstore_version() -> str | None:
    """The installed tensorstore's version, or None when it is not installed (it is the `fast-read` extra)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import tensorstore  # noqa: F401
        return version("tensorstore")
    except (ImportError, PackageNotFoundError):
        return None


_codec_threads = 1   # threads one chunk decode may use in this process (set_codec_threads)


def _tensorstore_context():
    """tensorstore's thread pools sized like blosc's (set_codec_threads): its decodes count in the same budget."""
    if tensorstore_version() is None:
        raise StoreError("tensorstore is not installed: pip install 'mmfer[fast-read]', or read with zarr-python")
    import tensorstore

    return tensorstore.Context({"data_copy_concurrency": {"limit": _codec_threads},
                                "file_io_concurrency": {"limit": max(2, _codec_threads)}})


def drop_from_page_cache(path: str | os.PathLike) -> int:
    """Ask the kernel to forget the cached pages of a store's files (a Zarr folder, or an HDF5 file), so that
    the next read comes from the disk: fsync, then posix_fadvise(POSIX_FADV_DONTNEED) on every file (no root
    needed; the bench's "cold" reads). Returns the number of files."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)   # dirty pages stay cached whatever fadvise says
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return len(files)


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

    global _codec_threads
    _codec_threads = num_threads   # for tensorstore contexts made from now on
    numcodecs.blosc.set_nthreads(num_threads)
    numcodecs.blosc.use_threads = num_threads > 1


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str = "extract") -> Iterator[None]:
    """Hold an exclusive lock on the store for one extract run (or `verify --repair`); a second writer refuses at
    once, naming the holder's pid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = _lock_path(path)
    with open(lock_path, "a+") as handle:   # not "w": truncating would erase the holder's pid before the lock is tried
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid, _, holder = handle.read().strip().partition(" ")
            raise StoreError(f"{path}: another {holder or 'extract'} is writing this store (pid {pid or '?'}, lock "
                             f"{lock_path}); wait for it{' or use another --out' if what == 'extract' else ''}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {what}")   # "PID WHAT": read by a refused writer and by writer_lock_holder
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def group_writer_lock(path: str | os.PathLike) -> Iterator[None]:
    """`writer_lock` for every rank of a torchrun group: rank 0 holds it for the group until every rank is
    done, and each rank learns whether it was granted, so a second, independent run is still refused.

    Raises:
        StoreError: another run holds the lock (on every rank of this group).
    """
    from mmfer.core.distributed import barrier, broadcast_object, current_world   # torch only for extract

    world = current_world()
    if not world.is_distributed:
        with writer_lock(path):
            yield
        return
    with contextlib.ExitStack() as held:
        refused = None
        if world.is_main:
            try:
                held.enter_context(writer_lock(path))
            except StoreError as err:
                refused = str(err)
        refused = broadcast_object(refused)
        if refused:
            raise StoreError(refused)
        yield
        barrier()   # rank 0 lets go only when every rank has written its last clip


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}{LOCK_FILE}"


def writer_lock_holder(path: str | os.PathLike) -> str | None:
    """Read-only: who holds the store's writer lock ("pid N, lock FILE" for an extract, "verify --repair, pid N,
    lock FILE"), or None when nothing is writing it. Creates nothing and never blocks."""
    lock_path = _lock_path(Path(path))
    try:
        handle = open(lock_path)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = handle.read().strip().partition(" ")
            role = "" if holder in ("", "extract") else f"{holder}, "   # an extract's: "pid N, lock F"
            return f"{role}pid {pid or '?'}, lock {lock_path}"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


# ---------------------------------------------------------------------------------------------------
# HDF5: one file holding a store's entries (`mmfer cache-export`), read through the same classes; the file
# layout and h5py itself are in store_h5.py.
# ---------------------------------------------------------------------------------------------------

def _get_json(group, name: str, where: str) -> object:
    try:
        return store_h5.read_json(group, name)
    except (OSError, KeyError, ValueError) as err:
        raise StoreError(f"{where}: {name} is missing or damaged ({err}); export the Zarr store again") from err


class H5FeatureEntry(FeatureEntry):
    """A FeatureEntry read from an HDF5 export: the same checks (status DONE, fletcher32 per chunk), read only."""

    def __init__(self, store: "H5FeatureStore", modality: str, fingerprint: str, group) -> None:
        self.store, self.modality, self.fingerprint, self._group = store, modality, fingerprint, group
        self.attrs = _get_json(group, "attrs", self.path)
        self.array_specs = {name: ArraySpec(tuple(s["shape"]), s["dtype"]) for name, s in self.attrs["arrays"].items()}
        self.view_specs = _view_specs(self.attrs)
        self._arrays = {name: group[name] for name in (*self.array_specs, *(VIEW_PREFIX + n for n in self.view_specs), "status")}
        self.damaged_status = []

    @property
    def path(self) -> str:
        return f"{self.store.path}:/{self.modality}/{self.fingerprint}"

    def reasons(self) -> list[str]:
        return [str(r) for r in _get_json(self._group, "reason", self.path)]

    def sources(self) -> list[str]:
        return [str(s) for s in _get_json(self._group, "source", self.path)]

    def view_params(self, clip_id: str) -> list[dict]:
        if not self.num_views:
            return []
        records = _get_json(self._group, VIEW_PARAMS, self.path)[self.store.index_of(clip_id)]
        return [json.loads(text) if text else {} for text in records]

    def _has_chunk(self, name: str, index: int, view: int | None = None) -> bool:
        return True   # export writes every done clip's chunks; fletcher32 catches damage

    def clip_chunk_files(self, index: int) -> list[Path]:
        return []

    def write_clip(self, clip_id: str, arrays: dict, source: str) -> ClipRecord:
        raise StoreError(f"{self.store.path}: an HDF5 export is read only; extract into the Zarr store and export again")

    def _set_status(self, index: int, status: ClipStatus, reason: str, source: str) -> None:
        raise StoreError(f"{self.store.path}: an HDF5 export is read only; repair the Zarr store "
                         "(`mmfer verify STORE --repair`) and export again")


class H5FeatureStore(FeatureStore):
    """An HDF5 export of a store (read only): the clip table, the attributes and every entry."""

    def __init__(self, path: Path, handle) -> None:
        self.path, self._handle, self.reader = path, handle, "h5py"
        self._set_root_attrs(_get_json(handle, "attrs", str(path)), fix="export the store again with this version")

    def fingerprints(self, modality: str) -> list[str]:
        return store_h5.entry_names(self._handle, modality)

    def _open_entry(self, modality: str, fingerprint: str) -> FeatureEntry:
        return H5FeatureEntry(self, modality, fingerprint, self._handle[modality][fingerprint])

    @property
    def _writable(self) -> bool:
        return False

    def leftovers(self) -> list[Path]:
        return []

    def clean_leftovers(self) -> int:
        return 0

    def bytes_on_disk(self) -> int:
        return self.path.stat().st_size


def _open_h5(path: Path) -> H5FeatureStore:
    if not path.is_file():
        raise StoreError(f"{path}: no HDF5 feature store here; write one with `mmfer cache-export CACHE --h5 {path}`")
    try:
        handle = store_h5.open_read_only(path)
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({err}); export the store again") from err
    return H5FeatureStore(path, handle)
