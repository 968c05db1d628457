"""Cached features -> training batches: which clips are usable, a per-clip dataset, collation, prefetch.

Reads the store only through `core/store/` (`open_store`) and never builds an encoder. The store is opened lazily
in each process that reads (DataLoader workers are spawned, never forked after the parent used Zarr).
Collation pads audio to the longest clip of the batch and builds masks (True = real token).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmfer.core.cache_facts import CacheFacts, read_cache_facts
from mmfer.core.feature_spec import FeatureSpec
from mmfer.core.store import ClipStatus, StoreError, StoreReader, open_store, set_codec_threads
from mmfer.train.batch import stack_clips

log = logging.getLogger(__name__)

VIDEO_ARRAYS = ("tokens", "pooled")   # what train/ needs from a video entry
AUDIO_ARRAYS = ("tokens", "length")   # ... and from an audio entry
PRELOAD_MEMORY_FRACTION = 0.25        # --preload auto keeps the cache in RAM below this share of free memory


@dataclass(frozen=True)
class CacheInfo:
    """What a run reads from a store: the chosen entries' FeatureSpec, fingerprints and the usable clips."""

    path: str
    video_fingerprint: str | None
    audio_fingerprint: str | None
    clips: pd.DataFrame                 # usable clips: clip table columns + has_video, has_audio
    bytes_per_clip: int
    label_names: tuple[str, ...]        # C class names, in class-id order (the store's label_names)
    dataset: str | None                 # the adapter that made the store (ravdess, crema-d, manifest)
    num_views: int = 0                  # augmented views per clip every entry read holds (`extract --views K`)
    feature_spec: FeatureSpec = FeatureSpec()   # what the chosen entries hold; the model's dims; checkpoints carry it
    facts: CacheFacts | None = field(default=None, repr=False, compare=False)   # the store read once (its handle)

    @property
    def video_shape(self) -> tuple[int, int, int]:
        """(Tv, P, Dv); (1, 1, 1) when the run reads no video."""
        return self.feature_spec.video_shape or (1, 1, 1)

    @property
    def audio_shape(self) -> tuple[int, int]:
        """(Ta_max, Da); (1, 1) when the run reads no audio."""
        spec = self.feature_spec
        return (spec.max_audio_frames, spec.audio_dim) if spec.audio is not None else (1, 1)

    @property
    def encoders(self) -> dict:
        """modality -> the entry's "encoder" record."""
        return {m: dict(s.encoder.record) for m, s in self.feature_spec.modalities().items()}


def open_cache(cache: CacheFacts | str, *, use_video: bool, use_audio: bool, video_entry: str | None = None,
               audio_entry: str | None = None, expected: dict[str, str | None] | None = None) -> CacheInfo:
    """Pick the entries and the usable clips of a store: `cache` is the store read once (`CacheFacts`),
    or its path (read here).

    A clip is usable when every modality the run reads is DONE or MISSING and at least one is DONE.
    `expected` ({"video": fp, "audio": fp}, e.g. from a checkpoint) must match the chosen entries.

    Raises:
        StoreError: no store / another schema version / no such entry / an entry without the arrays
            train/ reads / fingerprints other than `expected`.
    """
    facts = cache if isinstance(cache, CacheFacts) else read_cache_facts(cache)
    path = facts.path
    statuses, fingerprints, num_bytes, num_views, attrs = {}, {}, 0, [], {}
    for modality, used, chosen, names in (("video", use_video, video_entry, VIDEO_ARRAYS),
                                           ("audio", use_audio, audio_entry, AUDIO_ARRAYS)):
        if not used:
            fingerprints[modality] = None
            continue
        entry = facts.entry(modality, chosen)
        missing = [n for n in names if n not in entry.array_specs]
        if missing:
            raise StoreError(f"{entry.path}: {modality} entry lacks arrays {missing} (has {sorted(entry.array_specs)}); "
                             "this cache was written by another extract version: re-run extract into a new --out")
        want = (expected or {}).get(modality)
        if want is not None and want != entry.fingerprint:
            raise StoreError(f"{path}: this run was trained on {modality} features {want}, the cache holds "
                             f"{entry.fingerprint}; pass --{modality}-entry {want} or start a new --out")
        fingerprints[modality] = entry.fingerprint
        attrs[modality] = entry.attrs
        statuses[modality] = entry.statuses()
        num_bytes += entry.raw_bytes_per_clip()
        num_views.append(entry.num_views)
    table = facts.clip_table.copy()
    done = {m: s == ClipStatus.DONE for m, s in statuses.items()}
    ok = {m: np.isin(s, (ClipStatus.DONE, ClipStatus.MISSING)) for m, s in statuses.items()}
    has_video = done.get("video", np.zeros(len(table), bool))
    has_audio = done.get("audio", np.zeros(len(table), bool))
    usable = (has_video | has_audio) & np.logical_and.reduce([o for o in ok.values()] or [np.ones(len(table), bool)])
    table["has_video"], table["has_audio"] = has_video, has_audio
    skipped = int((~usable).sum())
    if skipped:
        log.warning("%s: %d of %d clips are not usable (failed or pending) and are left out", path, skipped, len(table))
    return CacheInfo(str(path), fingerprints["video"], fingerprints["audio"], table[usable].reset_index(drop=True),
                     num_bytes, facts.label_names, facts.dataset, min(num_views, default=0),
                     FeatureSpec.from_entries(attrs), facts)


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def should_preload(mode: str, num_bytes: int) -> bool:
    """--preload yes/no, or auto: yes when the cache takes less than a quarter of free memory."""
    if mode in ("yes", "no"):
        return mode == "yes"
    return num_bytes < PRELOAD_MEMORY_FRACTION * available_memory_bytes()


class ClipDataset(Dataset):
    """One clip's cached features by position, or by (position, view) for an augmented view of
    `extract --views K` (view 0 = clean); the store is opened on first use in each process.

    Items are dicts of numpy arrays as stored (fp16 tokens), plus has_video / has_audio / label / view.
    `preload` keeps the clean clips in memory; views are read from the store.
    """

    def __init__(self, cache: CacheInfo, clip_ids: list[str], *, preload: bool = False) -> None:
        rows = cache.clips.set_index("clip_id").loc[clip_ids]
        self.store_path = cache.path
        self.fingerprints = {"video": cache.video_fingerprint, "audio": cache.audio_fingerprint}
        self.video_shape, self.audio_shape = cache.video_shape, cache.audio_shape
        self.clip_ids = list(clip_ids)
        self.labels = rows["label"].to_numpy(dtype=np.int64)
        self.has_video = rows["has_video"].to_numpy(dtype=bool)
        self.has_audio = rows["has_audio"].to_numpy(dtype=bool)
        self._store: StoreReader | None = None
        self._entries: dict = {}
        self._pid: int | None = None
        if cache.facts is not None:   # this process reads through the handle the run already holds
            self._store, self._pid = cache.facts.store, os.getpid()
        self._cached: list[dict] | None = None
        if preload:
            self._cached = [self._read(i) for i in range(len(self))]
            log.info("preloaded %d clips from %s", len(self), self.store_path)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getstate__(self) -> dict:
        # Zarr handles never cross a process boundary: a worker reopens the store itself.
        return {**self.__dict__, "_store": None, "_entries": {}, "_pid": None}

    def _entry(self, modality: str):
        if self._pid != os.getpid():
            self._store, self._entries, self._pid = open_store(self.store_path, mode="r"), {}, os.getpid()
        if modality not in self._entries:
            self._entries[modality] = self._store.entry(modality, self.fingerprints[modality])
        return self._entries[modality]

    def _read(self, index: int, view: int = 0) -> dict:
        clip_id = self.clip_ids[index]
        item = {"clip_id": clip_id, "label": self.labels[index], "view": view,
                "has_video": bool(self.has_video[index]), "has_audio": bool(self.has_audio[index])}
        if item["has_video"]:
            video = self._entry("video").read_clip(clip_id, VIDEO_ARRAYS, view=view)
            item["video_tokens"], item["video_pooled"] = video["tokens"], video["pooled"]
        if item["has_audio"]:
            audio = self._entry("audio").read_clip(clip_id, AUDIO_ARRAYS, view=view)
            item["audio_tokens"] = audio["tokens"][: int(audio["length"])]
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, view = key if isinstance(key, tuple) else (key, 0)
        if view == 0 and self._cached is not None:
            return self._cached[index]
        return self._read(index, view)


def epoch_views(clip_ids: list[str], positions: np.ndarray, *, seed: int, epoch: int, num_views: int) -> np.ndarray:
    """`training.view_sampling=uniform`: the view each clip at `positions` is read from this epoch, uniform over
    0 (clean) .. K, from a hash of (seed, epoch, clip_id) alone: the same under DDP, --resume and any order."""
    def draw(clip_id: str) -> int:
        digest = hashlib.sha256(f"{seed}:{epoch}:{clip_id}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % (num_views + 1)

    return np.array([draw(clip_ids[int(p)]) for p in positions], dtype=np.int64)


def collate_clips(items: list[dict], video_shape: tuple[int, int, int] | None = None, audio_dim: int | None = None) -> dict:
    """`stack_clips` (train/batch.py) as torch tensors: the batch the model reads. Tokens keep their stored dtype
    (fp16): `to_device` casts them on the device, so the host copies half the bytes and never runs a per-clip cast."""
    return batch_tensors(stack_clips(items, video_shape, audio_dim))


def batch_tensors(batch: dict) -> dict:
    """A `stack_clips` batch with its arrays as torch tensors sharing their memory (labels int64 = torch.long)."""
    return {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value for key, value in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch on `device`: copied as stored (fp16; non-blocking, from pinned memory on CUDA), then its
    floating tensors cast to fp32 there (autocast picks the compute dtype from that)."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            value = value.float() if value.is_floating_point() else value
        moved[key] = value
    return moved


def resolve_compute_threads(compute_threads: int, num_workers: int) -> int:
    """Torch threads for the training process: `compute_threads`, or (0) the cores left after one per loader
    worker process, at least 1. Without workers the reading thread keeps no core: it only copies fp16 chunks
    (numpy and the codecs release the GIL) and waits on the disk."""
    if compute_threads > 0:
        return compute_threads
    return max(1, (os.cpu_count() or 1) - num_workers)


def apply_thread_budget(compute_threads: int, num_workers: int) -> int:
    """Fit the threads to the cores: the training process gets `resolve_compute_threads`, every loader
    worker one torch thread, and the codecs decode in the reading thread (no blosc threads of their own)."""
    threads = resolve_compute_threads(compute_threads, num_workers)
    torch.set_num_threads(threads)
    set_codec_threads(1)
    log.info("thread budget: %d compute threads, %d loader workers (1 thread each), %d cores",
             threads, num_workers, os.cpu_count() or 1)
    return threads


def _init_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)   # a loader worker reads and collates; the compute threads are the parent's
    set_codec_threads(1)


class EpochSampler(Sampler[int]):
    """Yields the positions set for the current epoch (the loop sets them: shuffled, curriculum subset), or
    (position, view) pairs when views are set with them (`training.view_sampling`). The sampler runs in the
    main process, so the views reach spawned, persistent loader workers through the keys they are given."""

    def __init__(self, indices: Iterable[int] = ()) -> None:
        self.indices = list(indices)

    def set_indices(self, indices: Iterable[int], chosen_views: Iterable[int] | None = None) -> None:
        self.indices = list(indices) if chosen_views is None else [(int(i), int(v)) for i, v in zip(indices, chosen_views, strict=True)]

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.indices))

    def __len__(self) -> int:
        return len(self.indices)


def rank_share(order: np.ndarray, *, batch_size: int, rank: int, world_size: int) -> tuple[np.ndarray, list[float]]:
    """This rank's positions of an epoch's `order`, and each of its batches' loss weight.

    Global batch k is order[k*G:(k+1)*G] with G = batch_size * world_size; the rank takes its piece
    (np.array_split, so pieces of a short last global batch differ by at most one clip). Every rank then
    runs the same number of batches, and no clip is seen twice. A last global batch with fewer clips than
    ranks is left out of this epoch (< world_size clips, a different few each epoch as the order changes).
    The weight n_rank * world_size / n_global makes DDP's mean over ranks equal the mean over the global
    batch (1.0 for every full batch); alone (world_size 1) the share is `order` and every weight 1.0.
    """
    global_batch = batch_size * world_size
    mine, weights = [], []
    for start in range(0, len(order), global_batch):
        chunk = order[start:start + global_batch]
        if len(chunk) < world_size:
            break
        piece = np.array_split(chunk, world_size)[rank]
        mine.append(piece)
        weights.append(len(piece) * world_size / len(chunk))
    return (np.concatenate(mine) if mine else np.zeros(0, dtype=order.dtype)), weights


def make_loader(dataset: ClipDataset, sampler: Sampler, *, batch_size: int, num_workers: int,
                seed: int, pin_memory: bool, prefetch_factor: int = 4) -> DataLoader:
    """A DataLoader whose workers are spawned (fork after Zarr use can deadlock), one thread each, and stay
    alive across epochs. `pin_memory` (for a CUDA device) lets `to_device` copy without blocking."""
    extra = {}
    if num_workers > 0:
        extra = {"multiprocessing_context": "spawn", "persistent_workers": True, "prefetch_factor": prefetch_factor,
                 "worker_init_fn": _init_worker}
    collate = functools.partial(collate_clips, video_shape=dataset.video_shape, audio_dim=dataset.audio_shape[1])
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed), **extra)


class _End:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def prefetch(batches: Iterable[dict], depth: int = 4) -> Iterator[dict]:
    """Iterate `batches` in a background thread, `depth` ahead (used when there are no workers)."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_End())
        except Exception as err:   # handed to the consumer, which re-raises it
            put(_End(err))

    thread = threading.Thread(target=produce, daemon=True, name="mmfer-prefetch")
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
