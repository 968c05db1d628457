"""GPU figures from a bare box: the bench's measurements on clips decoded elsewhere (benchmarks/gpu_check.py).

`write_decoded(out_dir)` runs on a CPU machine with ffmpeg (and NeMo): demo clips, extract's own decode and a real
`extract` into `out_dir/cache`, the decoded clips in `out_dir/decoded.npz`. `run_decoded_check(out_dir)` needs only
torch, transformers and the store's libraries: encoders from the registry with random weights written there, then
encoder clips/s, cached vs online training epochs, the AMP dtype and the peak memory of each fusion mode at a few
batch sizes. Decode itself is not measured there (no ffmpeg): the online epoch starts from the decoded clips.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DECODED_FILE = "decoded.npz"
META_FILE = "decoded.json"
CACHE_DIR = "cache"
MODES = ("finetune", "frozen", "lora")      # fusion.mode: the default, the frozen LFM2 and LoRA adapters
BATCH_SIZES = (1, 4, 8)
BUDGETS_GB = (4, 8)                        # GiB, as train-fusion --dry-run counts them
NO_NEMO_BACKENDS = ("nemo",)               # audio kinds of these backends cannot run on the bare box


def write_decoded(out_dir: str | os.PathLike, *, num_clips: int, preset: str) -> dict:
    """Demo clips -> extract (a real store in out_dir/cache) and extract's decode (out_dir/decoded.npz); returns the
    meta written to out_dir/decoded.json. Needs ffmpeg and the audio encoder's library (NeMo for the .nemo one)."""
    from mmfer.data.datasets import build_manifest
    from mmfer.extract.encoders import load_encoder
    from mmfer.extract.run import extract_all
    from mmfer.pipeline.bench_parts import time_decode_only
    from mmfer.pipeline.bench_setup import make_setup, make_work_dir, remove_work_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = make_work_dir(None)
    try:
        setup = make_setup(work, num_clips=num_clips, preset=preset, device="cpu")
        cfg = dataclasses.replace(setup.extract_cfg, out=str(out / CACHE_DIR), limit=num_clips)
        summary = extract_all(cfg, build_manifest(cfg))
        if summary.num_done != num_clips:
            raise RuntimeError(f"{out}: extract wrote {summary.num_done} of {num_clips} clips: {summary.format()}")
        processor = load_encoder("video", str(setup.visual_path), device=torch.device("cpu")).processor
        decoded = time_decode_only(setup, processor)
        decoded.pop("loader")
        arrays = {}
        for i, item in enumerate(decoded["items"]):
            for key, value in item.pixel_inputs.items():   # the image processor's arrays; floats kept as fp16
                arrays[f"pixels_{i}_{key}"] = value.astype(np.float16) if value.dtype.kind == "f" else value
            if item.audio is not None:
                arrays[f"audio_{i}"] = item.audio.astype(np.float32)
        np.savez_compressed(out / DECODED_FILE, **arrays)
        meta = {"preset": preset, "clip_ids": [item.clip_id for item in decoded["items"]],
                "duration_s": [float(item.duration_s) for item in decoded["items"]],
                "encoders": {"visual": setup.visual_path.name, "audio": setup.audio_path.name,
                             "written_by": "extract/random_encoders.py (random weights, seeded); the check writes the "
                                           "same visual one again and a NeMo-free audio kind of the same widths"},
                "cache_bytes": sum(f.stat().st_size for f in (out / CACHE_DIR).rglob("*") if f.is_file()),
                "decoded_bytes": (out / DECODED_FILE).stat().st_size}
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        return meta
    finally:
        remove_work_dir(work)


def load_decoded(folder: Path) -> tuple[dict, list]:
    """decoded.json and decoded.npz -> (meta, extract's DecodedItems, pixel arrays back in float32).

    Raises:
        FileNotFoundError: the folder lacks a file write_decoded writes (names it).
    """
    from mmfer.extract.items import DecodedItem

    for name in (META_FILE, DECODED_FILE, CACHE_DIR):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name}: missing; write the folder with "
                                    f"`python benchmarks/gpu_check.py write {folder}` on a CPU machine")
    meta = json.loads((folder / META_FILE).read_text())
    arrays = np.load(folder / DECODED_FILE)
    items = []
    for i, (clip_id, duration_s) in enumerate(zip(meta["clip_ids"], meta["duration_s"])):
        prefix = f"pixels_{i}_"
        pixels = {k[len(prefix):]: arrays[k].astype(np.float32) if arrays[k].dtype == np.float16 else arrays[k]
                  for k in arrays.files if k.startswith(prefix)}
        audio = arrays[f"audio_{i}"] if f"audio_{i}" in arrays.files else None
        items.append(DecodedItem(clip_id, "", "", pixel_inputs=pixels, audio=audio, duration_s=duration_s))
    return meta, items


def load_nemo_free_encoders(models_dir: Path, preset: str, device: torch.device):
    """The registry's default visual kind and the first audio kind not run by NeMo, each with random weights of the
    bench's `preset` widths written by its kind's own `write_random`. Returns (EncoderPair, audio note); the pair's
    audio is None, and the note says why, when no audio kind can run here."""
    from mmfer.extract.encoders import DEFAULT_KINDS, REGISTRY, EncoderPair, load_encoder
    from mmfer.extract.random_encoders import RANDOM_SEED, SIZES

    widths = SIZES[preset]
    visual_kind = REGISTRY[DEFAULT_KINDS["video"]]
    visual_path = models_dir / widths["visual_dirname"]
    if not visual_kind.is_complete(visual_path):
        visual_kind.write_random(visual_path, widths["visual"], seed=RANDOM_SEED)
    visual = load_encoder("video", str(visual_path), device=device, kind=visual_kind.KIND)
    tried = []
    for kind in REGISTRY.values():
        if kind.MODALITY != "audio" or kind.BACKEND in NO_NEMO_BACKENDS:
            continue
        path = models_dir / f"{preset}-{kind.KIND}-random"
        try:
            if not kind.is_complete(path):
                kind.write_random(path, widths["audio"], seed=RANDOM_SEED)
            audio = load_encoder("audio", str(path), device=device, kind=kind.KIND)
        except (ImportError, RuntimeError, ValueError, TypeError, KeyError, OSError) as err:
            tried.append(f"{kind.KIND}: {type(err).__name__}: {err}")
            continue
        return EncoderPair(visual, audio), f"{kind.KIND} ({kind.BACKEND}), random weights"
    audio_kinds = sorted(k for k, m in REGISTRY.items() if m.MODALITY == "audio")
    why = "; ".join(tried) if tried else f"the registry's audio kinds ({', '.join(audio_kinds)}) all need NeMo"
    return EncoderPair(visual, None), f"none without NeMo: {why}; audio encoder figures left out"


def run_decoded_check(folder: str | os.PathLike, *, device: str, num_clips: int = 16, models_dir: str | None = None,
                      modes: tuple[str, ...] = MODES, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict:
    """Every figure of the bare-box check (format_decoded_report: the table). `num_clips`: encoder timing clips
    (the decoded ones cycled)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmfer.core.device import resolve_device
    from mmfer.extract.featurize import Featurizer
    from mmfer.pipeline import bench_parts as parts
    from mmfer.pipeline.bench_setup import bench_train_config, make_work_dir, remove_work_dir

    started = time.perf_counter()
    folder = Path(folder)
    meta, items = load_decoded(folder)
    preset, torch_device = meta["preset"], resolve_device(device)
    env = {"device": str(torch_device), "torch": torch.__version__, "preset": preset, "decoded_clips": len(items),
           "decoded_folder_bytes": meta["cache_bytes"] + meta["decoded_bytes"], "threads": torch.get_num_threads(),
           "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    if torch_device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch_device)
    work = Path(models_dir) if models_dir else make_work_dir(None)
    try:
        encoders, audio_note = load_nemo_free_encoders(work, preset, torch_device)
        autocast = encoders.visual.autocast_dtype   # the visual kind's dtype policy "auto" (core/device.py)
        env["audio_encoder"], env["visual_encoder_dtype"] = audio_note, "float32" if autocast is None else str(autocast)
        has_audio = encoders.audio is not None
        if not has_audio:   # no audio encoder: the visual one alone, and online clips without audio
            items = [dataclasses.replace(item, audio=None) for item in items]
        timed = [items[i % len(items)] for i in range(num_clips)]
        encode = parts.time_encode_only(encoders, timed, batch_size=8, device=str(torch_device))
        encoder_rates = {"visual_clips_per_s": num_clips / encode["visual_s"],
                         "audio_clips_per_s": num_clips / encode["audio_s"] if has_audio else None}

        cfg = bench_train_config(preset, str(torch_device))
        store = str(folder / CACHE_DIR)
        t = cfg.training
        cache = parts.open_bench_cache(store)   # opened once for every loader below
        dataset, _ = parts.cached_loader(cache, cfg)
        trainer = parts.build_trainer(cfg, cache, dataset)
        epoch_ids = parts.whole_groups(dataset.clip_ids, t.batch_size * t.gradient_accumulation_steps)
        dataset, loader = parts.cached_loader(cache, cfg, epoch_ids)
        first = next(iter(loader))
        parts.run_epoch(trainer, parts.Batches(lambda: [first], 1))   # warm-up
        cached_s = min(parts.run_epoch(trainer, loader, epoch=e) for e in range(1, 4))   # best of 3
        labels = dict(zip(dataset.clip_ids, (int(v) for v in dataset.labels)))
        by_id = {item.clip_id: item for item in items}
        featurizer = Featurizer(cache.feature_spec, encoders)
        groups = [epoch_ids[i:i + t.batch_size] for i in range(0, len(epoch_ids), t.batch_size)]
        online = parts.Batches(lambda: (parts.featurized_batch([by_id[c] for c in g], featurizer, labels)
                                        for g in groups), len(groups))
        online_s = parts.run_epoch(trainer, online, epoch=1)
        amp = trainer.fold.amp_dtype
        del trainer, first, loader, online, featurizer, encoders   # the memory rows count the trainable stage alone
        gc.collect()
        epoch = {"clips": len(epoch_ids), "cached_clips_per_s": len(epoch_ids) / cached_s,
                 "online_clips_per_s": len(epoch_ids) / online_s, "speedup_cached_vs_online": online_s / cached_s,
                 "online_includes": "encoders + featurizer (decode and image preprocessing done ahead, as extract's "
                                    "workers do)" + ("" if has_audio else "; visual encoder only")}
        memory = [peak_memory_row(cache, cfg, mode, b, torch_device) for mode in modes for b in batch_sizes]
        env.update(wall_s=time.perf_counter() - started, load_avg_end=os.getloadavg()[0])   # other jobs' share
        return {"env": env, "amp_dtype": None if amp is None else str(amp),
                "encoders": encoder_rates, "training": epoch, "memory": memory, "budgets_gb": list(BUDGETS_GB)}
    finally:
        if not models_dir:
            remove_work_dir(work)


def peak_memory_row(cache, cfg, mode: str, batch_size: int, device: torch.device) -> dict:
    """Two optimizer steps of train's own fold set-up with fusion.mode `mode` at `batch_size`: peak CUDA memory
    (torch.cuda.max_memory_allocated + the dry run's CUDA overhead) against each budget; on CPU the process's
    peak RSS so far (not per config), and no verdict."""
    from mmfer.pipeline import bench_parts as parts
    from mmfer.train.dryrun import CUDA_OVERHEAD_GB, GB

    model = dataclasses.replace(cfg.model, fusion=dataclasses.replace(cfg.model.fusion, mode=mode))
    cfg = dataclasses.replace(cfg, model=model, training=dataclasses.replace(cfg.training, batch_size=batch_size))
    t = cfg.training
    dataset, _ = parts.cached_loader(cache, cfg)
    ids = parts.whole_groups(dataset.clip_ids, 2 * batch_size * t.gradient_accumulation_steps)
    _, loader = parts.cached_loader(cache, cfg, ids[:2 * batch_size * t.gradient_accumulation_steps])
    row = {"mode": mode, "batch_size": batch_size}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = parts.build_trainer(cfg, cache, dataset)
    row["step_s"] = parts.run_epoch(trainer, loader) / 2
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / GB
        row.update(peak_allocated_gb=peak, peak_with_overhead_gb=peak + CUDA_OVERHEAD_GB,
                   **{f"fits_{b}gb": peak + CUDA_OVERHEAD_GB <= b for b in BUDGETS_GB})
    else:
        row.update(peak_allocated_gb=None, process_peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB,
                   **{f"fits_{b}gb": None for b in BUDGETS_GB})
    del trainer
    return row


def format_decoded_report(r: dict) -> str:
    """The console table of run_decoded_check's result."""
    env, e, tr = r["env"], r["encoders"], r["training"]
    audio = "n/a" if e["audio_clips_per_s"] is None else f"{e['audio_clips_per_s']:.2f}"
    lines = [f"gpu_check: {env['preset']} sizes, device {env['device']}" + (f" ({env['gpu']})" if "gpu" in env else "")
             + f", torch {env['torch']}, {env['decoded_clips']} decoded clips, 1-min load avg {env['load_avg_start']:.1f}"
             f" -> {env['load_avg_end']:.1f} on {env['cores']} cores; audio encoder: {env['audio_encoder']}",
             f"{'encoder clips/s':<34}visual {e['visual_clips_per_s']:.2f}, audio {audio}",
             f"{'training clips/s':<34}cached {tr['cached_clips_per_s']:.2f}, online {tr['online_clips_per_s']:.2f} "
             f"(epoch of {tr['clips']} clips; online: {tr['online_includes']})",
             f"{'cached vs online speedup':<34}{tr['speedup_cached_vs_online']:.1f}x",
             f"{'AMP dtype':<34}{r['amp_dtype'] or 'none (fp32)'}", "",
             f"{'mode':<10}{'batch':>6}{'step s':>9}{'peak GiB':>10}" + "".join(f"{f'fits {b} GB':>11}" for b in r["budgets_gb"])]
    for m in r["memory"]:
        peak = "n/a" if m["peak_allocated_gb"] is None else f"{m['peak_with_overhead_gb']:.2f}"
        fits = "".join(f"{'n/a' if m[f'fits_{b}gb'] is None else ('yes' if m[f'fits_{b}gb'] else 'no'):>11}"
                       for b in r["budgets_gb"])
        lines.append(f"{m['mode']:<10}{m['batch_size']:>6}{m['step_s']:>9.3f}{peak:>10}{fits}")
    if r["memory"] and r["memory"][0]["peak_allocated_gb"] is None:
        lines.append(f"(no CUDA: no peak memory per config; the process's peak RSS was "
                     f"{max(m['process_peak_rss_gb'] for m in r['memory']):.2f} GiB)")
    else:
        lines.append("(peak GiB: torch.cuda.max_memory_allocated + 0.5 GiB CUDA overhead, as train-fusion --dry-run counts)")
    lines.append("(step s: the mean of the first two optimizer steps, the loader's start included: not a throughput)")
    lines.append(f"check took {env['wall_s']:.0f} s")
    return "\n".join(lines)
