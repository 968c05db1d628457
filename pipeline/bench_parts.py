"""The measurements of `mmfer bench`: stage timings, epochs, storage reads, and the measured subprocesses.

Each function times one thing and returns plain numbers; `pipeline/bench.py` orders them and writes the
report. Extract runs and cached training epochs at each clip count run in child processes
(`python -m mmfer.pipeline.bench_parts CHILD.json`) so their peak RSS is their own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmfer.pipeline.bench_setup import (
    BENCH_SEED,
    BenchSetup,
    bench_decode_jobs,
    bench_decode_loader,
    bench_train_config,
    build_trainer,
    child_env,
    resolve_device_name,
)

log = logging.getLogger(__name__)


def sync(device: str) -> None:
    if resolve_device_name(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------
# Part 3: the extract stages alone
# ---------------------------------------------------------------------------------------------------


def time_decode_only(setup: BenchSetup, processor) -> dict:
    """extract's decode loader over the clips: a first pass (worker start included) and a second pass on the
    same, already started workers. Returns times, the decoded items of the 2nd pass and the loader."""
    cfg = setup.extract_cfg
    loader = bench_decode_loader(bench_decode_jobs(setup), processor, cfg, batch_size=cfg.batch_size)
    started = time.perf_counter()
    for _ in loader:
        pass
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    items = list(loader)
    steady_s = time.perf_counter() - started
    failed = [item.clip_id for item in items if item.error is not None]
    if failed:
        raise RuntimeError(f"bench: demo clips failed to decode: {failed[:3]}; check ffmpeg (`mmfer extract` says why)")
    return {"first_pass_s": first_s, "steady_s": steady_s, "workers": cfg.num_workers, "items": items,
            "loader": loader}


def started_decode_loader(setup: BenchSetup, processor, clip_ids: list[str], batch_size: int):
    """extract's decode loader over clip_ids (repeats allowed) whose workers have started and run one pass."""
    loader = bench_decode_loader(bench_decode_jobs(setup, clip_ids), processor, setup.extract_cfg, batch_size=batch_size)
    for _ in loader:
        pass
    return loader


def time_encode_only(encoders, items: list, batch_size: int, device: str) -> dict:
    """Both frozen encoders on pre-decoded clips, extract's batch size (a first batch warms up, untimed)."""
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    encoders.encode_visual([it.pixel_inputs for it in batches[0][:1]])
    if batches[0][0].audio is not None:   # None: no audio encoder (benchmarks/gpu_check.py without NeMo)
        encoders.encode_audio([batches[0][0].audio])
    visual_s = audio_s = 0.0
    for batch in batches:
        sync(device)
        started = time.perf_counter()
        encoders.encode_visual([it.pixel_inputs for it in batch])
        sync(device)
        middle = time.perf_counter()
        for it in batch:   # one clip per call, as extract encodes audio (extract/run.py, _encode_and_write)
            if it.audio is not None:
                encoders.encode_audio([it.audio])
        sync(device)
        visual_s, audio_s = visual_s + middle - started, audio_s + time.perf_counter() - middle
    return {"visual_s": visual_s, "audio_s": audio_s, "total_s": visual_s + audio_s}


def count_encoder_gflops(encoders, item) -> dict[str, float]:
    """Forward GFLOP of each frozen encoder on one clip (Tv frames, its audio), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for name, call in (("visual", lambda: encoders.encode_visual([item.pixel_inputs])),
                       ("audio", lambda: encoders.encode_audio([item.audio]))):
        counter = FlopCounterMode(display=False)
        with counter:
            call()
        counts[name] = counter.get_total_flops() / 1e9
    return counts


# ---------------------------------------------------------------------------------------------------
# Parts 1-2: online, cached and in-memory epochs of the same trainable model and batches
# ---------------------------------------------------------------------------------------------------


def whole_groups(clip_ids: list[str], group: int) -> list[str]:
    """clip_ids cycled up to a multiple of `group` clips (one optimizer step per group)."""
    total = -(-len(clip_ids) // group) * group
    return [clip_ids[i % len(clip_ids)] for i in range(total)]


class Batches:
    """An epoch's batches for train_epoch: len() and iteration, built by `make_iter` each epoch.

    num_workers = 1 tells train_epoch that the batches are already produced ahead (it adds its own
    prefetch thread only for a DataLoader without workers); these are either in memory or online.
    """

    num_workers = 1

    def __init__(self, make_iter, num_batches: int) -> None:
        self.make_iter, self.num_batches = make_iter, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        return iter(self.make_iter())


def online_batches(decoder, featurizer, labels: dict[str, int], *, batch_size: int):
    """decode (extract's loader) -> extract's featurizer (encoders, token pooling, the store's dtype) -> the loader's
    batch contract, per batch: what training would read from the cache, made on the fly."""
    from mmfer.extract.run import decoded_batches

    for decoded in decoded_batches(decoder, batch_size=batch_size):
        yield featurized_batch(decoded, featurizer, labels)


def featurized_batch(decoded: list, featurizer, labels: dict[str, int]) -> dict:
    """Decoded clips -> extract's featurizer -> the loader's batch contract (collate_clips), labels by clip_id."""
    from mmfer.train.dataset import collate_clips

    items = [featurizer.model_inputs(clip) for clip in featurizer.encode(decoded)]
    return collate_clips([{**item, "label": labels[item["clip_id"]]} for item in items])


def open_bench_cache(path: str | Path):
    """train/'s `open_cache` of a bench store, both modalities: open it once and pass it to each `cached_loader`."""
    from mmfer.train.dataset import open_cache

    return open_cache(path, use_video=True, use_audio=True)


def cached_loader(cache, cfg, clip_ids: list[str] | None = None):
    """train/'s own reader on an opened cache (`open_bench_cache`): ClipDataset (no preload) -> make_loader, in clip
    order; (dataset, loader) of `clip_ids`, or of every clip."""
    from mmfer.core.device import resolve_device
    from mmfer.train.dataset import ClipDataset, EpochSampler, make_loader

    ids = list(cache.clips["clip_id"]) if clip_ids is None else clip_ids
    dataset = ClipDataset(cache, ids, preload=False)
    sampler = EpochSampler(range(len(ids)))
    loader = make_loader(dataset, sampler, batch_size=cfg.training.batch_size, num_workers=cfg.num_workers, seed=cfg.seed,
                         pin_memory=resolve_device(cfg.device).type == "cuda")
    return dataset, loader


def run_epoch(trainer, batches, *, epoch: int = 0) -> float:
    """Seconds for one train_epoch (train/loop.py) over `batches`; mixup rng fixed per epoch number."""
    from mmfer.train.loop import train_epoch

    t, fold = trainer.cfg.training, trainer.fold
    rng = np.random.default_rng([BENCH_SEED, epoch])
    torch.manual_seed(BENCH_SEED + epoch)
    sync(trainer.device.type)
    started = time.perf_counter()
    train_epoch(fold.model, fold.criterion, fold.optimizer, fold.scaler, batches, trainer.device,
                fold.amp_dtype, rng, training=t, desc="bench")
    sync(trainer.device.type)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------
# Part 4: storage
# ---------------------------------------------------------------------------------------------------


def storage_stats(store_path: str, clip_ids: list[str], train_cfg) -> dict:
    """On-disk bytes per clip, cache read vs plain sequential read of the same chunk files (page cache warm)."""
    from mmfer.core.store import open_store

    store = open_store(store_path)
    entries = [store.entry("video"), store.entry("audio")]
    files = [f for cid in clip_ids for e in entries for f in e.clip_chunk_files(store.index_of(cid))]
    chunk_bytes = sum(f.stat().st_size for f in files)
    raw_padded = sum(e.raw_bytes_per_clip() for e in entries)
    tv, p, dv = entries[0].array_specs["tokens"].shape
    da = entries[1].array_specs["tokens"].shape[1]
    lengths = [int(entries[1].read_clip(cid)["length"]) for cid in clip_ids]
    raw_true = 2 * (tv * p * dv + tv * dv + float(np.mean(lengths)) * da)   # fp16 tokens + pooled, true-length audio
    dataset, _ = cached_loader(open_bench_cache(store_path), train_cfg, clip_ids)
    _read_all(files)                              # warm the page cache for both readers
    [dataset[i] for i in range(len(dataset))]
    plain_s = min(_timed(lambda: _read_all(files)) for _ in range(3))
    cache_s = min(_timed(lambda: [dataset[i] for i in range(len(dataset))]) for _ in range(3))
    n = len(clip_ids)
    return {"bytes_per_clip": store.bytes_on_disk() / n, "chunk_bytes_per_clip": chunk_bytes / n,
            "raw_fp16_bytes_per_clip": raw_true, "raw_fp16_padded_bytes_per_clip": raw_padded,
            "cache_read_s_per_clip": cache_s / n, "plain_read_s_per_clip": plain_s / n,
            "cache_read_mb_s": chunk_bytes / cache_s / 1e6, "cache_read_decoded_mb_s": raw_true * n / cache_s / 1e6,
            "plain_read_mb_s": chunk_bytes / plain_s / 1e6}


def _read_all(files: list[Path]) -> int:
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------
# Part 5: measured child processes (extract, cached training epoch)
# ---------------------------------------------------------------------------------------------------


def run_child(spec: dict, work_dir: Path, *, processes: int = 1) -> dict:
    """Run `spec` in a fresh interpreter (or `processes` > 1 of them under the real torchrun, which the stages
    see as a process group); returns its (rank 0's) result with peak RSS of it and of its own children.

    Raises:
        RuntimeError: the child failed; its log tail is in the message.
    """
    name = f"child-{spec['kind']}-{spec['num_clips']}" + (f"-x{processes}" if processes > 1 else "")
    spec_path, log_path = work_dir / f"{name}.json", work_dir / f"{name}.log"
    spec_path.write_text(json.dumps({**spec, "result": str(work_dir / f"{name}.result.json")}))
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                                   if processes > 1 else [])
    with open(log_path, "w") as handle:
        done = subprocess.run([*launcher, "-m", "mmfer.pipeline.bench_parts", str(spec_path)], stdout=handle,
                              stderr=subprocess.STDOUT, env=child_env(), check=False)
    if done.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"bench: {name} failed (exit {done.returncode}); log {log_path}:\n{tail}")
    return json.loads(Path(work_dir / f"{name}.result.json").read_text())


def _child_extract(spec: dict) -> dict:
    from mmfer.data.datasets import build_manifest
    from mmfer.extract.run import extract_all
    from mmfer.core.config import ExtractConfig

    cfg = ExtractConfig(**spec["extract_cfg"])
    summary = extract_all(cfg, build_manifest(cfg))
    if summary.num_done != spec["num_clips"]:
        raise RuntimeError(f"bench extract: {summary.format()}")
    return {"wall_s": summary.wall_s, "setup_s": summary.setup_s, "encoders_s": summary.encoders_s,
            "loop_s": summary.loop_s, "first_batch_wait_s": summary.first_batch_wait_s,
            "bytes_written": summary.bytes_written, "threads": torch.get_num_threads()}


def time_extract_processes(setup: BenchSetup, one_process: dict, *, num_clips: int, processes: int) -> dict:
    """Part 6: extract's clips/s on the same clips with 1 process (`one_process`: part 5's run) and with
    `processes` ranks of the real torchrun (rank-sharded into one store, extract/run.py), and the speedup.
    Rates use the clip loop (ExtractSummary.loop_s; the slowest rank's) and the whole call (with set-up)."""
    if setup.device == "cuda" and torch.cuda.device_count() < processes:   # "cuda" gives each rank its own GPU
        return {"processes": processes, "skipped": f"{processes} processes on --device cuda need {processes} GPUs, "
                                                   f"this machine has {torch.cuda.device_count()}"}
    cfg = dataclasses.replace(setup.extract_cfg, out=str(setup.work_dir / f"cache-{num_clips}-x{processes}"), limit=num_clips)
    many = run_child({"kind": "extract", "num_clips": num_clips, "extract_cfg": dataclasses.asdict(cfg)}, setup.work_dir,
                     processes=processes)
    one_rate, many_rate = num_clips / one_process["loop_s"], num_clips / many["loop_s"]
    return {"clips": num_clips, "processes": processes, "clips_per_s_1": one_rate, "clips_per_s_n": many_rate,
            "speedup": many_rate / one_rate, "with_setup_clips_per_s_1": num_clips / one_process["wall_s"],
            "with_setup_clips_per_s_n": num_clips / many["wall_s"], "threads_1": one_process["threads"],
            "threads_per_rank_n": many["threads"]}


def _child_train(spec: dict) -> dict:
    cfg = bench_train_config(spec["preset"], spec["device"])
    started = time.perf_counter()
    cache = open_bench_cache(spec["store"])
    dataset, loader = cached_loader(cache, cfg)
    trainer = build_trainer(cfg, cache, dataset)
    build_s = time.perf_counter() - started
    first = next(iter(loader))                          # warm-up step, untimed
    run_epoch(trainer, Batches(lambda: [first], 1))
    epoch_s = run_epoch(trainer, loader, epoch=1)
    return {"build_s": build_s, "epoch_s": epoch_s, "num_clips_read": len(dataset)}


def child_main(spec_path: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(Path(spec_path).read_text())
    result = {"extract": _child_extract, "train": _child_train}[spec["kind"]](spec)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_children_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if os.environ.get("RANK", "0") == "0":   # under torchrun, rank 0 answers for the group
        Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    child_main(sys.argv[1])
