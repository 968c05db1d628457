"""One entry of a Zarr feature store (a modality's features under one fingerprint): writing and reading clips.

`extract/` writes clips through `FeatureEntry.write_clip` (statuses go PENDING before anything of the clip
changes and DONE last, so 'done' is honest); `read_clip` runs the checks of reading.py. The arrays are zarr
arrays opened by zarr_store.py, which creates entries; this file needs no zarr import of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmfer.core.faults import crash_point
from mmfer.core.store.layout import VIEW_PARAMS, VIEW_PREFIX, ClipRecord, ClipStatus, StoreError, entry_specs
from mmfer.core.store.quantize import as_stored, dequantize_clip, is_quantized
from mmfer.core.store.reading import (StoreReader, num_views, parse_view_params, plan_clip_read, raw_bytes, read_cell,
                                      read_chunks, read_column)


class FeatureEntry:
    """One modality's features made with one encoder + preprocessing (one fingerprint), in a Zarr store."""

    def __init__(self, store: StoreReader, modality: str, fingerprint: str, group) -> None:
        self.store = store
        self.modality = modality
        self.fingerprint = fingerprint
        self.attrs: dict = dict(group.attrs)
        self.array_specs, self.view_specs = entry_specs(self.attrs)
        self._arrays = {}
        for name in (*self.array_specs, *self._view_array_names(), "status", "reason", "source"):
            try:
                self._arrays[name] = group[name]
            except (KeyError, ValueError) as err:   # folder deleted, or its zarr.json unreadable
                raise StoreError(f"{self.path}: array {name!r} is missing or unreadable ({err!r}); this entry is "
                                 "damaged: re-run extract with --overwrite, or into a new --out") from err
        self.damaged_status: list[str] = []   # clip ids whose status chunk failed its checksum (see statuses)

    @property
    def path(self) -> Path:
        return self.store.path / self.modality / self.fingerprint

    @property
    def is_quantized(self) -> bool:
        """Tokens stored as int8 with a per-token scale (`--token-dtype int8`); read_clip gives them back as float16."""
        return is_quantized(self.array_specs)

    @property
    def num_views(self) -> int:
        """K augmented views stored per clip besides the clean one (`extract --views K`; 0 for most stores)."""
        return num_views(self.attrs, self.view_specs)

    def raw_bytes_per_clip(self) -> int:
        """Uncompressed bytes of one clip's clean arrays (its views not counted: see raw_bytes_per_view)."""
        return raw_bytes(self.array_specs)

    def raw_bytes_per_view(self) -> int:
        """Uncompressed bytes of one augmented view of one clip (0 without views)."""
        return raw_bytes(self.view_specs)

    def statuses(self) -> np.ndarray:
        """int8 [N] ClipStatus per clip, in clip-table order. A status chunk that fails its checksum reads
        as PENDING (never trusted, redone by extract), with a warning, and its clip goes in `damaged_status`."""
        return np.asarray(self._column("status", ClipStatus.PENDING, self.damaged_status), dtype=np.int8)

    def reasons(self) -> list[str]:
        return [str(r) for r in self._column("reason", "")]

    def sources(self) -> list[str]:
        return [str(s) for s in self._column("source", "")]

    def _column(self, name: str, fallback, damaged: list[str] | None = None) -> list:
        return read_column(self._arrays[name], store_path=self.store.path, clip_ids=self.store.clip_ids,
                           what=f"{self.modality}/{name}", fallback=fallback, damaged=damaged)

    def _cell(self, name: str, index: int):
        return read_cell(self._arrays[name], index, store_path=self.store.path, clip_id=self.store.clip_ids[index],
                         what=f"{self.modality}/{name}")

    def read_clip(self, clip_id: str, names: tuple[str, ...] | None = None, *, view: int = 0) -> dict[str, np.ndarray]:
        """One clip's arrays (one chunk read each; `names` picks some), checked: status DONE, every chunk
        on disk, checksums. `view` 0 is the clean clip, 1..K its augmented views (`extract --views K`): a
        view's own arrays (e.g. tokens, pooled) with the clean clip's others (timestamps_s, boxes, ...).

        Raises:
            StoreError: the clip is not done, or the entry has no such view.
            CorruptClipError: a chunk is missing or fails its checksum.
        """
        status = self._cell("status", self.store.index_of(clip_id))
        requests = plan_clip_read(self, clip_id, status, names, view, self._has_chunk)
        out = read_chunks(self._arrays, requests, store_path=self.store.path, clip_id=clip_id, modality=self.modality)
        return dequantize_clip(out, names)

    def view_params(self, clip_id: str) -> list[dict]:
        """What each of the clip's K views was drawn with (crop, flip, jitter / tempo, pitch, SNR), view 1 first.

        Raises:
            CorruptClipError: the record fails its checksum.
        """
        return parse_view_params(self._cell(VIEW_PARAMS, self.store.index_of(clip_id)) if self.num_views else [])

    def stored_arrays(self, index: int, names) -> dict[str, np.ndarray]:
        """Clip `index`'s arrays as stored, unchecked (int8 tokens with their scale; a view array (K, ...)):
        for copying a store (export), after `read_clip` checked the clip."""
        return {name: self._arrays[name][index] for name in names}

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

    def _view_array_names(self) -> list[str]:
        return [VIEW_PREFIX + name for name in self.view_specs] + ([VIEW_PARAMS] if self.view_specs else [])

    def _has_chunk(self, name: str, index: int, view: int | None = None) -> bool:
        return self._chunk_file(self._arrays[name], index, view).exists()

    def _chunk_file(self, array, index: int, view: int | None = None) -> Path:
        leading = (index,) if view is None else (index, view)
        key = array.metadata.encode_chunk_key(leading + (0,) * (array.ndim - len(leading)))
        return self.path / array.basename / key

    def clip_chunk_files(self, index: int) -> list[Path]:
        """The chunk files of clip `index` (clean arrays, then each view's, then its view parameters)."""
        files = [self._chunk_file(self._arrays[name], index) for name in self.array_specs]
        files += [self._chunk_file(self._arrays[VIEW_PREFIX + name], index, v)
                  for name in self.view_specs for v in range(self.num_views)]
        if self.view_specs:
            files.append(self._chunk_file(self._arrays[VIEW_PARAMS], index))
        return files
