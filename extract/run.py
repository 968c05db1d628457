"""`extract`: manifest -> decode (worker processes) -> frozen encoders -> feature store.

Decoding, face cropping and the image processor run in spawned DataLoader workers, ahead of the
encoders in the main process, so on a GPU the encoders do not wait for ffmpeg. The workers start
before the encoders' weights load and decode while they do. Clips already done
under the same fingerprint and unchanged source file are skipped; a bad clip is recorded as failed
with its reason and the run goes on.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmfer.extract.decode import AUDIO_MIX, FRAME_SAMPLING
from mmfer.core.feature_spec import FeatureSpec, fingerprint, fingerprint_parts
from mmfer.extract import featurize
from mmfer.extract.encoders import encoder_names, load_encoders
from mmfer.extract.encoders.siglip import load_image_processor
from mmfer.extract.facecrop import detector_settings
from mmfer.extract.featurize import Featurizer
from mmfer.extract.shrink import pooled_token_count
from mmfer.extract.views import view_settings
from mmfer.extract.worker import DecodedItem, DecodeJob, decode_job
from mmfer.core.config import ExtractConfig
from mmfer.core.device import resolve_device
from mmfer.core.distributed import World, barrier, broadcast_object, current_world, device_for_rank, gather_objects, process_group
from mmfer.core.errors import ConfigError, MmferError
from mmfer.core.faults import crash_point
from mmfer.core.progress import Progress
from mmfer.core.store import (TOKEN_SCALE, ArraySpec, ClipStatus, FeatureEntry, FeatureStore, StoreError,
                                  check_clip_table, create_store, entry_differences, group_writer_lock, open_store)

log = logging.getLogger(__name__)



class DiskSpaceError(MmferError, OSError):
    """Not enough free space for the run, or the disk filled up while writing."""


@dataclass
class ExtractSummary:
    num_selected: int = 0
    num_skipped: int = 0
    num_done: int = 0
    num_failed: int = 0
    num_missing_audio: int = 0
    bytes_written: int = 0
    setup_s: float = 0.0
    """Seconds from the call to the clip loop: clip table, decode workers started, encoders loaded, store opened."""
    encoders_s: float = 0.0
    """Seconds of setup_s spent loading the encoders (the decode workers start before and decode meanwhile)."""
    loop_s: float = 0.0
    """Seconds of the clip loop: every clip decoded (already under way in the workers), encoded and written."""
    first_batch_wait_s: float = 0.0
    """Seconds the clip loop waited for its first decoded batch (0 when the workers were ahead of the encoders)."""
    wall_s: float = 0.0
    """Seconds of the whole call (setup_s + loop_s + the summary)."""
    failures: list[tuple[str, str, str]] = field(default_factory=list)   # (clip_id, path, reason)

    @property
    def num_ok(self) -> int:
        return self.num_done + self.num_skipped

    def format(self) -> str:
        rate = self.num_done / self.wall_s if self.wall_s else 0.0
        lines = [f"extract: {self.num_done} done, {self.num_skipped} skipped, {self.num_failed} failed "
                 f"({self.num_missing_audio} without audio) of {self.num_selected} selected clips in {self.wall_s:.1f} s "
                 f"({rate:.2f} clips/s), {self.bytes_written / 1e6:.1f} MB written"]
        for clip_id, path, reason in self.failures[:20]:
            lines.append(f"  failed {clip_id}: {path}: {reason}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more (see `mmfer cache-info`)")
        return "\n".join(lines)


# Bump when anything this package does to a clip before or around the encoders changes in a way that
# changes stored values (decode, sampling, cropping, mixing, padding). 1: stores made before the version
# was recorded; 2: stereo averaged, not summed at 0.707; 3: audio encoded one clip at a time (never
# zero-padded to a batch-mate's length) with ENCODE_THREADS intra-op threads (docs/reliability.md, determinism).
EXTRACTOR_VERSION = 3

# Intra-op threads while the encoders run. Float reductions are split by the thread count, so a clip's stored
# bits would depend on it (torchrun ranks run with OMP_NUM_THREADS=1, a plain process with every core): one
# thread makes every store of the same settings, torch build and CPU bitwise equal whatever the process count,
# batch size or machine load (cache_schema.md, "Determinism"). Recorded in each entry's attrs.
ENCODE_THREADS = 1


@contextmanager
def encode_threads(num_threads: int = ENCODE_THREADS):
    """torch's intra-op thread count set to `num_threads` inside, restored on leaving."""
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

def encoder_record(encoder, store_path: str | Path) -> dict:
    """A loaded encoder's identity as the entry records it, with its registry kind and backend; a local folder
    or file is also kept resolved and relative to the store (`location`, see core/paths.py), so predict finds
    it after the store and models move together. Neither kind nor location is fingerprinted."""
    from mmfer.core.paths import record_path

    record = {**encoder.identity, **encoder.kind_record}
    name = record["name"]
    return {**record, "location": record_path(name, store_path)} if Path(name).exists() else record


REQUIRED_COLUMNS = ("clip_id", "path", "source")   # what extract reads of the manifest (data/manifest.py)


def check_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest as the store's clip table: it must carry clip_id, path and source."""
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest]
    if missing:
        raise ValueError(f"manifest lacks columns {missing}; build it with mmfer.data.manifest.build_manifest")
    return manifest.reset_index(drop=True)


def select_clips(table: pd.DataFrame, select: str | None, limit: int | None) -> pd.DataFrame:
    chosen = table if select is None else table[[fnmatch(c, select) for c in table["clip_id"]]]
    return chosen.head(limit) if limit else chosen


def extract_all(cfg: ExtractConfig, manifest: pd.DataFrame) -> ExtractSummary:
    """Fill the store at `cfg.out` for the clips of `manifest` (see the module docstring).

    Under torchrun each rank calls this: rank 0 creates the store and its entries, then every rank takes
    the clips still to do at positions rank, rank + world_size, ... and writes only those clips' chunks
    (one chunk per clip per array, so no two ranks write one chunk). Every rank returns the merged summary.
    """
    start = time.monotonic()
    table = check_manifest(manifest)
    if not table.attrs.get("label_names"):   # never RAVDESS's 8 classes by default: the labels would mean other names
        raise ConfigError("the manifest carries no label names (attrs['label_names']); build it with "
                          "mmfer.data.datasets.build_manifest, or set them in the class-id order of its `label` column")
    world = current_world()
    device = device_for_rank(resolve_device(cfg.device), world)
    # the lock is taken before the encoders load, so a second writer is refused at once
    with process_group(device.type), group_writer_lock(cfg.out):
        return _extract_locked(cfg, table, device, start, world)


def _extract_locked(cfg: ExtractConfig, table: pd.DataFrame, device: torch.device, start: float,
                    world: World) -> ExtractSummary:
    # The decode workers start first, on the clips most likely to do: the real list needs the entries'
    # fingerprints, which need the encoders' weights. They decode while the main thread loads the weights.
    if world.is_main:   # a manifest the store cannot take is refused now, not after the encoders load
        check_clip_table(cfg.out, table, table.attrs["label_names"])
    visual_name, _, revision = encoder_names(cfg)
    processor = load_image_processor(visual_name, revision=revision)
    selected = select_clips(table, cfg.select, cfg.limit)
    likely_jobs = decode_jobs(_likely_todo(cfg, selected).iloc[world.rank::world.world_size], cfg)
    with started_decoding(likely_jobs, processor, cfg) as early:
        load_start = time.monotonic()
        crash_point("load_encoders")
        encoders = load_encoders(cfg, device, processor=processor)
        encoders_s = time.monotonic() - load_start
        summary = _prepare_and_run(cfg, table, selected, encoders, world, early, start=start)
    summary.encoders_s = encoders_s
    if world.is_distributed:
        summary = merge_summaries(gather_objects(summary))
    summary.wall_s = time.monotonic() - start
    if world.is_main:
        log.info("extract finished: %d done, %d skipped, %d failed, %.1f s", summary.num_done, summary.num_skipped,
                 summary.num_failed, summary.wall_s)
    return summary


def _prepare_and_run(cfg: ExtractConfig, table: pd.DataFrame, selected: pd.DataFrame, encoders, world: World,
                     early: "Decoding", *, start: float) -> ExtractSummary:
    """Open the store's entries, work out this rank's clips to do, then encode and write them; `early`: the
    decoding already under way for the guessed jobs (used when they are this rank's jobs, else stopped)."""
    if encoders.visual.identity["model_class"] == "Siglip2VisionModel" and cfg.face_crop == "none":
        # NaFlex pads non-square frames with patches the store would keep as data (it has no patch mask)
        raise ConfigError(f"{encoders.visual.identity['name']}: a NaFlex SigLIP2 checkpoint needs square crops; "
                          "use --face-crop center or detect (or a fixed-resolution SigLIP2 checkpoint)")
    video_params = {"encoder": encoder_record(encoders.visual, cfg.out),
                    "preprocessing": encoders.visual.preprocessing, **decode_params("video", cfg)}
    audio_params = {"encoder": encoder_record(encoders.audio, cfg.out),
                    "preprocessing": encoders.audio.preprocessing, **decode_params("audio", cfg)}
    log.info("extract: %d clips in the manifest, device %s, torch %s, visual %s, audio %s", len(table), encoders.visual.device,
             torch.__version__, encoders.visual.identity["name"], encoders.audio.identity["name"])

    failed_on_main = None
    if world.is_main:   # rank 0 creates the store and its arrays before any rank writes
        try:
            video, audio, spec = _open_entries(cfg, table, encoders, video_params, audio_params, clean=True)
        except Exception as err:   # every rank stops with rank 0's reason (re-raised below)
            failed_on_main = err
    if world.is_distributed:
        reason = broadcast_object(None if failed_on_main is None else f"{type(failed_on_main).__name__}: {failed_on_main}")
        if reason is not None and failed_on_main is None:
            raise StoreError(f"{cfg.out}: rank 0 could not prepare the store ({reason})")
    if failed_on_main is not None:
        raise failed_on_main
    if not world.is_main:
        video, audio, spec = _open_entries(cfg, table, encoders, video_params, audio_params, clean=False)

    todo = _clips_to_do(selected, video, audio)
    barrier()   # every rank has read the statuses before any rank writes one
    summary = ExtractSummary(num_selected=len(selected), num_skipped=len(selected) - len(todo))
    if world.is_main:
        _check_free_space(Path(cfg.out), len(todo), sum(e.raw_bytes_per_clip() + e.num_views * e.raw_bytes_per_view()
                                                        for e in (video, audio)))
    todo = todo.iloc[world.rank::world.world_size]   # a deterministic, disjoint share; any world size resumes
    jobs = decode_jobs(todo, cfg)
    featurizer = Featurizer(spec, encoders)
    loop_start = time.monotonic()
    summary.setup_s = loop_start - start
    desc = f"extract rank {world.rank}/{world.world_size}" if world.is_distributed else "extract"
    with Progress(len(jobs), desc=desc, unit="clip", logger=log) as progress, encode_threads(), \
            _decoding_for(jobs, early, encoders.visual.processor, cfg) as batches:
        waited_from = loop_start
        for batch in batches:
            if waited_from is not None:
                summary.first_batch_wait_s, waited_from = time.monotonic() - waited_from, None
            _encode_and_write(batch, featurizer, video, audio, summary)
            progress.update(len(batch))
    summary.loop_s = time.monotonic() - loop_start
    return summary


def _likely_todo(cfg: ExtractConfig, selected: pd.DataFrame) -> pd.DataFrame:
    """The clips this run will most likely have to do, known before the encoders load: the selected clips less
    those done in the store's only video and audio entries (all of them for a new store, several entries or
    --overwrite). Only a guess for starting the decode workers early: `_decoding_for` checks it."""
    if cfg.overwrite:
        return selected
    try:
        store = open_store(cfg.out)
        video_fps, audio_fps = store.fingerprints("video"), store.fingerprints("audio")
        if len(video_fps) != 1 or len(audio_fps) != 1:
            return selected
        return _clips_to_do(selected, store.entry("video", video_fps[0]), store.entry("audio", audio_fps[0]))
    except Exception as err:   # no store yet, another clip table, one being made by rank 0: the real list decides
        log.debug("%s: no guess at the clips to do (%s); decoding all %d selected", cfg.out, err, len(selected))
        return selected


@contextmanager
def started_decoding(jobs: list[DecodeJob], processor, cfg: ExtractConfig):
    """Start the decode workers on `jobs` now: they decode ahead (up to their prefetch) while the caller does
    something else, such as loading the encoders. Yields a `Decoding`; its workers are shut down on leaving."""
    decoding = Decoding(jobs, processor, cfg)
    try:
        yield decoding
    finally:
        decoding.close()


class Decoding:
    """One pass of a `decode_loader` over `jobs`, its workers started at once; `batches` yields its batches."""

    def __init__(self, jobs: list[DecodeJob], processor, cfg: ExtractConfig) -> None:
        self.jobs = jobs
        self._items = iter(decode_loader(jobs, processor, num_workers=cfg.num_workers, batch_size=cfg.batch_size,
                                         persistent_workers=False)) if jobs else iter(())   # spawns the workers
        self.batches = decoded_batches(self._items, batch_size=cfg.batch_size)

    def close(self) -> None:
        """Stop the workers now (a pass read to its end has stopped them already)."""
        shutdown = getattr(self._items, "_shutdown_workers", None)   # worker-process iterators only
        if shutdown is not None:
            shutdown()


@contextmanager
def _decoding_for(jobs: list[DecodeJob], early: Decoding, processor, cfg: ExtractConfig):
    """The decoded batches of `jobs`: the early workers' when they were started on exactly these jobs (the
    usual case), else a fresh loader's (the store held other statuses than the guess; logged)."""
    if jobs == early.jobs:
        yield early.batches
        return
    log.info("extract: %d clips to do, not the %d guessed before the encoders loaded; decoding them afresh",
             len(jobs), len(early.jobs))
    early.close()
    with started_decoding(jobs, processor, cfg) as fresh:
        yield fresh.batches


def merge_summaries(parts: list[ExtractSummary]) -> ExtractSummary:
    """One summary of a group's ranks: selection from rank 0, counts and failures summed, times the slowest."""
    first = parts[0]
    return ExtractSummary(
        num_selected=first.num_selected, num_skipped=first.num_skipped,
        num_done=sum(p.num_done for p in parts), num_failed=sum(p.num_failed for p in parts),
        num_missing_audio=sum(p.num_missing_audio for p in parts), bytes_written=sum(p.bytes_written for p in parts),
        setup_s=max(p.setup_s for p in parts), encoders_s=max(p.encoders_s for p in parts),
        loop_s=max(p.loop_s for p in parts), first_batch_wait_s=max(p.first_batch_wait_s for p in parts),
        failures=[f for p in parts for f in p.failures])


def _open_entries(cfg: ExtractConfig, table: pd.DataFrame, encoders, video_params: dict, audio_params: dict, *,
                  clean: bool) -> tuple[FeatureEntry, FeatureEntry, FeatureSpec]:
    """Create (or open) the store and its video and audio entries; `clean` removes interrupted writes' leftovers.
    Returns the entries and the FeatureSpec they hold (its fingerprints are the entries' keys)."""
    source = cfg.manifest if cfg.dataset == "manifest" else cfg.root   # where the clips came from
    store = create_store(cfg.out, table, {"dataset": cfg.dataset, "root": str(Path(source).resolve()),
                                          "created_by": "mmfer extract", "preset": cfg.preset,
                                          "label_names": list(table.attrs["label_names"])}, update=clean)
    if clean:
        removed = store.clean_leftovers()
        if removed:
            log.info("removed %d leftovers of interrupted writes", removed)
    num_patches, visual_dim = encoders.visual_token_shape()
    num_patches = pooled_token_count(num_patches, cfg.token_pool)
    audio_attrs = {**audio_params, "frame_shift_s": encoders.audio.frame_shift_s}
    for modality, params in (("video", video_params), ("audio", audio_attrs)):
        _refuse_other_settings(store, modality, params, overwrite=cfg.overwrite)
    int8 = cfg.token_dtype == "int8"
    video_arrays = {   # what an augmented view has of its own (views share timestamps and boxes with the clean clip)
        "tokens": ArraySpec((cfg.num_frames, num_patches, visual_dim), "int8" if int8 else cfg.dtype),
        **({TOKEN_SCALE: ArraySpec((cfg.num_frames, num_patches), "float16")} if int8 else {}),
        "pooled": ArraySpec((cfg.num_frames, visual_dim), cfg.dtype),
    }
    video = store.ensure_entry("video", fingerprint(video_params), video_params, {
        **video_arrays,
        "timestamps_s": ArraySpec((cfg.num_frames,), "float32"),
        "boxes": ArraySpec((cfg.num_frames, 4), "float32"),
    }, view_arrays=video_arrays if cfg.views else None, overwrite=cfg.overwrite)
    max_audio_frames, audio_dim = encoders.audio_token_shape(cfg.max_audio_s, cfg.sample_rate_hz)
    audio_view_arrays = {"tokens": ArraySpec((max_audio_frames, audio_dim), cfg.dtype), "length": ArraySpec((), "int32")}
    audio = store.ensure_entry("audio", fingerprint(audio_attrs), audio_attrs, {
        **audio_view_arrays,
        "duration_s": ArraySpec((), "float32"),
    }, view_arrays=audio_view_arrays if cfg.views else None, overwrite=cfg.overwrite)
    return video, audio, FeatureSpec.from_entries({"video": video.attrs, "audio": audio.attrs})


def decode_params(modality: str, cfg: ExtractConfig) -> dict:
    """What decides a modality's features besides its encoder: settings, the extractor version, the rules."""
    if modality == "video":
        face = {"face_detector": detector_settings()} if cfg.face_crop == "detect" else {}
        # recorded (and fingerprinted) only when set, so the entries of earlier stores keep their fingerprints
        size = {**({"token_pool": cfg.token_pool} if cfg.token_pool > 1 else {}),
                **({"token_dtype": cfg.token_dtype} if cfg.token_dtype != "float" else {})}
        return {"num_frames": cfg.num_frames, "face_crop": cfg.face_crop, **face, "frame_sampling": FRAME_SAMPLING,
                "dtype": cfg.dtype, **size, "extractor_version": EXTRACTOR_VERSION, "encode_threads": ENCODE_THREADS,
                **_views(modality, cfg)}
    return {"sample_rate_hz": cfg.sample_rate_hz, "max_audio_s": cfg.max_audio_s, "audio_mix": AUDIO_MIX,
            "dtype": cfg.dtype, "extractor_version": EXTRACTOR_VERSION, "encode_threads": ENCODE_THREADS,
            **_views(modality, cfg)}


def _views(modality: str, cfg: ExtractConfig) -> dict:
    # recorded (and fingerprinted) only with --views > 0, so the entries of stores without views keep their fingerprints
    return {"views": view_settings(modality, cfg.views)} if cfg.views else {}


def _refuse_other_settings(store: FeatureStore, modality: str, params: dict, *, overwrite: bool) -> None:
    """Refuse, naming what differs, when the store holds `modality` features made with other settings.

    Raises:
        StoreError: another fingerprint is there and not `overwrite` (which replaces it in ensure_entry).
    """
    others = [f for f in store.fingerprints(modality) if f != fingerprint(params)]
    if not others or overwrite:
        return
    old = fingerprint_parts(store.entry(modality, others[0]).attrs)
    new = fingerprint_parts(json.loads(json.dumps(params, default=str)))
    changed = [f"{_setting_name(key, modality)}: {old_value!r} -> {new_value!r}"
               for key, old_value, new_value in entry_differences(old, new)]
    raise StoreError(
        f"{store.path}: holds {modality} features (entry {others[0]}) made with other settings: "
        f"{'; '.join(changed[:6]) or 'an older extractor'}{' ...' if len(changed) > 6 else ''}; "
        "run with the same settings, use another --out, or --overwrite to replace them")


def _setting_name(key: str, modality: str) -> str:
    """A differing attribute, with the extract flag that sets it where there is one."""
    flags = {f.name for f in fields(ExtractConfig)}
    top = key.split(".")[0]
    if top in flags:
        return f"{key} (--{top.replace('_', '-')})"
    if top == "encoder":
        return f"{key} (--{'visual' if modality == 'video' else 'audio'}-encoder / --preset)"
    return key


def _clips_to_do(selected: pd.DataFrame, video: FeatureEntry, audio: FeatureEntry) -> pd.DataFrame:
    """Clips whose video or audio is not done under this fingerprint for the current source file (a clip the
    store's clip table does not hold yet: to do)."""
    known = selected["clip_id"].isin(set(video.store.clip_ids)).to_numpy()
    done = np.zeros(len(selected), dtype=bool)
    if known.any():
        index = [video.store.index_of(c) for c in selected["clip_id"][known]]
        video_status, audio_status = video.statuses()[index], audio.statuses()[index]
        video_source, audio_source = np.array(video.sources())[index], np.array(audio.sources())[index]
        current = selected["source"].to_numpy()[known]
        video_ok = (video_status == ClipStatus.DONE) & (video_source == current)
        audio_ok = np.isin(audio_status, (ClipStatus.DONE, ClipStatus.MISSING)) & (audio_source == current)
        done[known] = video_ok & audio_ok
    return selected[~done]


def _check_free_space(out: Path, num_clips: int, bytes_per_clip: int) -> None:
    """Log the size estimate before any clip is extracted; refuse when it exceeds the free space."""
    free = shutil.disk_usage(out if out.exists() else out.parent).free
    needed_bytes = num_clips * bytes_per_clip
    log.info("cache size estimate: %d clips x %.2f MB/clip = %.1f MB at most (uncompressed); %.1f MB free at %s%s",
             num_clips, bytes_per_clip / 1e6, needed_bytes / 1e6, free / 1e6, out,
             "" if needed_bytes <= free / 2 else "; see --token-pool 2 and --token-dtype int8 to store less")
    if needed_bytes > free:
        raise DiskSpaceError(errno.ENOSPC, f"{out}: this run needs up to {needed_bytes / 1e6:.0f} MB but only "
                                           f"{free / 1e6:.0f} MB are free; free some space or use another --out")


def decode_jobs(clips: pd.DataFrame, cfg: ExtractConfig) -> list[DecodeJob]:
    """One DecodeJob per row of `clips` with cfg's decode settings (the featurizer's `decode_jobs`; extract needs
    them before the encoders load, so from the config rather than the FeatureSpec)."""
    return featurize.decode_jobs(clips, num_frames=cfg.num_frames, sample_rate_hz=cfg.sample_rate_hz,
                                 max_audio_s=cfg.max_audio_s, timeout_s=cfg.decode_timeout_s, face_crop=cfg.face_crop,
                                 num_views=cfg.views)


def decode_loader(jobs: list[DecodeJob], processor, *, num_workers: int, batch_size: int,
                  persistent_workers: bool) -> torch.utils.data.DataLoader:
    """The DataLoader that decodes `jobs` in spawned workers (never forked after zarr was used), one
    DecodedItem per item, in job order; `decoded_batches` groups them. Workers start at its first iteration."""
    # One clip per worker item, regrouped by decoded_batches: every worker decodes a share of the first
    # batch, so the encoders get it sooner than if one worker decoded a whole batch.
    return torch.utils.data.DataLoader(
        _JobList(jobs, processor), batch_size=None, shuffle=False, collate_fn=_as_is,
        num_workers=num_workers, multiprocessing_context="spawn" if num_workers else None,
        prefetch_factor=4 * batch_size if num_workers else None, persistent_workers=persistent_workers and num_workers > 0)


def decoded_batches(loader, *, batch_size: int):
    """Batches of up to batch_size DecodedItem from one pass of a `decode_loader`."""
    batch: list[DecodedItem] = []
    for item in loader:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _as_is(item: DecodedItem) -> DecodedItem:
    return item


class _JobList(torch.utils.data.Dataset):
    def __init__(self, jobs: list[DecodeJob], processor) -> None:
        self.jobs = jobs
        self.processor = processor

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> DecodedItem:
        crash_point("decode")
        return decode_job(self.jobs[i], self.processor)


def _encode_and_write(batch: list[DecodedItem], featurizer: Featurizer, video: FeatureEntry, audio: FeatureEntry,
                      summary: ExtractSummary) -> None:
    for item in batch:
        if item.error is not None:
            _record_failure(item, item.error, video, audio, summary)
    face_crop = featurizer.spec.video.settings["face_crop"]
    for clip in featurizer.encode(batch):
        item = clip.item
        if face_crop == "detect" and not item.found_face:
            log.warning("clip %s: no face found in any frame; used the centre crop", item.clip_id)
        try:
            (clean_video, *video_views) = clip.video
            record = video.write_clip(item.clip_id, {**clean_video, "timestamps_s": item.timestamps_s, "boxes": item.boxes},
                                      item.source, view_data=video_views, view_params=item.video_view_params)
            summary.bytes_written += record.num_bytes
            if not clip.has_audio:
                audio.mark(item.clip_id, ClipStatus.MISSING, "no audio stream", item.source)
                summary.num_missing_audio += 1
            else:
                (clean_audio, *audio_views) = clip.audio
                record = audio.write_clip(item.clip_id, {**clean_audio, "duration_s": np.float32(item.duration_s)},
                                          item.source, view_data=audio_views, view_params=item.audio_view_params)
                summary.bytes_written += record.num_bytes
            summary.num_done += 1
            crash_point("clip_done")
        except ValueError as err:   # NaN/Inf or a shape the store does not hold: this clip only
            _record_failure(item, f"encoder-output: {err}", video, audio, summary)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise DiskSpaceError(errno.ENOSPC, f"{video.store.path}: disk full while writing clip {item.clip_id}; "
                                                   "the store is still valid: free space and re-run the same command") from err
            raise


def _record_failure(item: DecodedItem, reason: str, video: FeatureEntry, audio: FeatureEntry, summary: ExtractSummary) -> None:
    log.warning("clip %s failed: %s", item.clip_id, reason.splitlines()[0])
    video.mark(item.clip_id, ClipStatus.FAILED, reason, item.source)
    audio.mark(item.clip_id, ClipStatus.FAILED, reason, item.source)
    summary.num_failed += 1
    summary.failures.append((item.clip_id, item.path, reason.splitlines()[0]))
