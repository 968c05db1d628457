"""`mmfer bench`: does the cache pay off, and how close is each stage to its limit? Five ratios, one run.

Writes demo clips and encoders to a temporary folder (full sizes: random weights of the real architectures),
then measures (1) online vs cached epochs against their FLOP limit, (2) loader overhead, (3) extract pipeline
efficiency vs its slowest stage, (4) storage and read speed, (5) scaling and peak RSS with the clip count,
(6) extract clips/s with 1 and 2 torchrun processes (skipped with --no-scale-out). The finished studies
(token size options, Zarr vs HDF5 readers) are scripts under benchmarks/ that read the store the same way.
Light to import: the measuring code (pipeline/bench_parts.py) and both stages load inside `run_bench`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path

from mmfer.pipeline.command_config import BenchConfig

log = logging.getLogger(__name__)

RAVDESS_EPOCH_CLIPS = 1440          # 24 actors x 60 speech clips
TARGETS = {"speedup_cached_vs_online": 10.0, "fraction_of_flop_limit": 0.9, "fraction_of_compute_ceiling": 0.9,
           "loader_overhead_pct": 5.0, "extract_pipeline_efficiency": 0.9}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.flags import add_config_flags

    parser.description = ("Measure the pipeline on this machine: cached vs online epochs and their FLOP limit, loader "
                          "overhead, extract efficiency, storage, scaling, extract with 1 vs 2 torchrun processes. "
                          "Full model sizes (random weights) by default.")
    add_config_flags(parser, BenchConfig, layered=False)


def cmd_bench(args: argparse.Namespace) -> int:
    from mmfer.pipeline.flags import resolve_config

    cfg: BenchConfig = resolve_config(BenchConfig, args, layered=False)
    result = run_bench(num_clips=cfg.clips, preset=cfg.preset, device=cfg.device, work_parent=cfg.work_dir,
                       keep=cfg.keep, scale_out=cfg.scale_out)
    print(format_report(result))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {cfg.json}")
    return 0


def clip_counts(num_clips: int) -> list[int]:
    """The clip counts of the scaling part: N/2 and N, plus N/4 from 16 clips on."""
    counts = {num_clips, max(1, num_clips // 2)}
    if num_clips >= 16:
        counts.add(num_clips // 4)
    return sorted(counts)


def run_bench(*, num_clips: int, preset: str, device: str, work_parent: str | None,
              keep: bool, scale_out: bool) -> dict:
    """Run all six parts (the sixth only with `scale_out`); returns the JSON report (format_report: the table)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # the bench never downloads; read before transformers loads
    import torch

    from mmfer.pipeline import bench_parts as parts
    from mmfer.pipeline.bench_setup import load_encoder_pair, make_setup, make_work_dir, remove_work_dir

    started = time.perf_counter()
    work_dir = make_work_dir(work_parent)
    try:
        env = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu": _cpu_name(), "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0],
               "preset": preset, "num_clips": num_clips}
        if device.startswith("cuda"):
            env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        log.info("bench: %s", env)
        setup = make_setup(work_dir, num_clips=num_clips, preset=preset, device=device)
        setup_s = time.perf_counter() - started

        # Part 5 (and the extract run of part 3): fresh processes per clip count, for their own peak RSS.
        counts, scaling = clip_counts(num_clips), []
        stores = {}
        for n in counts:
            stores[n] = str(work_dir / f"cache-{n}")
            extract_cfg = dataclasses.replace(setup.extract_cfg, out=stores[n], limit=n)
            ext = parts.run_child({"kind": "extract", "num_clips": n, "extract_cfg": dataclasses.asdict(extract_cfg)}, work_dir)
            scaling.append({"clips": n, "extract": ext})
        # Part 6: the largest extract again, as 2 torchrun processes (part 5's run is the 1-process figure)
        processes = parts.time_extract_processes(setup, scaling[-1]["extract"], num_clips=num_clips,
                                                 processes=2) if scale_out else None
        for row in scaling:
            row["train"] = parts.run_child({"kind": "train", "num_clips": row["clips"], "store": stores[row["clips"]],
                                            "preset": preset, "device": device}, work_dir)

        env["load_avg_children"] = os.getloadavg()[0]
        # Part 3: each stage alone, in this process.
        encoders = load_encoder_pair(setup)
        decode = parts.time_decode_only(setup, encoders.visual.processor)
        items = decode.pop("items")
        decoder = decode.pop("loader")
        encode = parts.time_encode_only(encoders, items, setup.extract_cfg.batch_size, device)
        counted = parts.count_encoder_gflops(encoders, items[0])

        # Parts 1-2: the same model and batches, three ways. An epoch covers whole gradient-accumulation groups
        # (clips repeated if needed), so each clip carries its real share of the optimizer step.
        from mmfer.extract.featurize import Featurizer
        from mmfer.train.dryrun import dry_run

        t = setup.train_cfg.training
        cache = parts.open_bench_cache(stores[num_clips])
        dataset, _ = parts.cached_loader(cache, setup.train_cfg)
        trainer = parts.build_trainer(setup.train_cfg, cache, dataset)   # train's fold set-up, all clips for training
        epoch_ids = parts.whole_groups(dataset.clip_ids, t.batch_size * t.gradient_accumulation_steps)
        dataset, loader = parts.cached_loader(cache, setup.train_cfg, epoch_ids)
        in_memory = list(loader)
        parts.run_epoch(trainer, parts.Batches(lambda: in_memory[:1], 1))   # warm-up
        memory_runs, cached_runs = [], []
        for epoch in range(1, 4):   # interleaved, best of 3: other jobs on the machine only ever add time
            memory_runs.append(parts.run_epoch(trainer, parts.Batches(lambda: in_memory, len(in_memory)), epoch=epoch))
            cached_runs.append(parts.run_epoch(trainer, loader, epoch=epoch))
        labels = dict(zip(dataset.clip_ids, (int(v) for v in dataset.labels)))
        if epoch_ids != list(setup.manifest["clip_id"]):   # the online epoch decodes the cached epoch's clips, in order
            decoder = None   # its persistent workers exit when it is collected
            decoder = parts.started_decode_loader(setup, encoders.visual.processor, epoch_ids, t.batch_size)
        featurizer = Featurizer(cache.feature_spec, encoders)   # the spec of the store the cached epochs read
        online = parts.Batches(lambda: parts.online_batches(decoder, featurizer, labels, batch_size=t.batch_size),
                               len(in_memory))
        online_s = parts.run_epoch(trainer, online, epoch=1)
        epoch_clips = len(epoch_ids)
        env["load_avg_epochs"] = os.getloadavg()[0]

        audio_frames = int(round(sum(int(b["audio_mask"].sum()) for b in in_memory) / epoch_clips))
        tv, p, dv = cache.video_shape
        dry = dry_run(setup.train_cfg.model, video_dim=dv, num_patches=p, num_frames=tv, audio_dim=cache.audio_shape[1],
                      audio_frames=audio_frames, batch_size=setup.train_cfg.training.batch_size,
                      precision="fp32" if trainer.fold.amp_dtype is None else "fp16", dropout=setup.train_cfg.training.dropout,
                      encoder_gflops=None if preset == "full" else counted)
        storage = parts.storage_stats(stores[num_clips], list(cache.clips["clip_id"]), setup.train_cfg)
        result = summarize(num_clips, epoch_clips, env, setup_s, scaling, decode, encode, counted, dry,
                           {"memory": memory_runs, "cached": cached_runs, "online": [online_s]}, storage,
                           extract_batch_size=setup.extract_cfg.batch_size)
        if processes is not None:
            result["scale_out"] = processes
        result["env"]["load_avg_end"] = os.getloadavg()[0]
        result["env"]["bench_wall_s"] = time.perf_counter() - started
        if keep:
            result["env"]["work_dir"] = str(work_dir)
        return result
    finally:
        if not keep:
            remove_work_dir(work_dir)


def summarize(n: int, epoch_clips: int, env: dict, setup_s: float, scaling: list, decode: dict, encode: dict,
              counted: dict, dry: dict, runs: dict, storage: dict, *, extract_batch_size: int) -> dict:
    """The JSON report: headline ratios first, then each part's details (runs: epoch seconds, each try)."""
    memory_s, cached_s, online_s = (min(runs[k]) / epoch_clips * n for k in ("memory", "cached", "online"))
    limit = dry["cache_speedup"]
    speedup = online_s / cached_s
    full = scaling[-1]["extract"]
    measured, decode_rate, encode_rate = n / full["loop_s"], n / decode["steady_s"], n / encode["total_s"]
    bottleneck = "decode" if decode_rate < encode_rate else "encode"
    marginal = marginal_clips_per_s(scaling, extract_batch_size=extract_batch_size)
    for row in scaling:
        row["extract_loop_s_per_clip"] = row["extract"]["loop_s"] / row["clips"]
        row["train_epoch_s_per_clip"] = row["train"]["epoch_s"] / row["clips"]
    train_gflops_per_s = dry["train_step_gflops_per_clip"] * n / memory_s
    encoder_gflops_per_s = sum(counted.values()) * n / encode["total_s"]
    ceiling = compute_ceiling(limit, train_gflops_per_s=train_gflops_per_s, encoder_gflops_per_s=encoder_gflops_per_s)
    return {
        "speedup_cached_vs_online": speedup,
        "speedup_flop_limit": limit,
        "fraction_of_flop_limit": speedup / limit,
        "speedup_compute_ceiling": ceiling,
        "fraction_of_compute_ceiling": speedup / ceiling,
        "loader_overhead_pct": 100.0 * (cached_s - memory_s) / memory_s,
        "extract_pipeline_efficiency": measured / min(decode_rate, encode_rate),
        "extract_pipeline_efficiency_marginal": None if marginal is None else marginal / min(decode_rate, encode_rate),
        "bottleneck": bottleneck,
        "bytes_per_clip": storage["bytes_per_clip"],
        "targets": TARGETS,
        "env": {**env, "setup_s": setup_s},
        "epochs": {"clips": epoch_clips, "epoch_runs_s": runs, "online_s_per_clip": online_s / n, "cached_s_per_clip": cached_s / n,
                   "in_memory_s_per_clip": memory_s / n, "forward_gflops_per_clip": dry["forward_gflops_per_clip"],
                   "train_step_gflops_per_clip": dry["train_step_gflops_per_clip"],
                   "encoder_gflops_per_clip": dry["encoder_gflops_per_clip"],
                   "encoder_gflops_counted": counted, "trainable_params": dry["trainable_params"],
                   "train_gflops_per_s": train_gflops_per_s},
        "extract": {"clips": n, "batch_size": extract_batch_size, "setup_s": full["setup_s"], "encoders_s": full["encoders_s"],
                    "first_batch_wait_s": full["first_batch_wait_s"], "loop_s": full["loop_s"], "wall_s": full["wall_s"],
                    "clips_per_s": measured, "clips_per_s_with_load": n / full["wall_s"],
                    "clips_per_s_marginal": marginal, "decode_only_clips_per_s": decode_rate,
                    "decode_first_pass_s": decode["first_pass_s"], "decode_workers": decode["workers"],
                    "encode_only_clips_per_s": encode_rate, "visual_encode_s_per_clip": encode["visual_s"] / n,
                    "audio_encode_s_per_clip": encode["audio_s"] / n,
                    "encoder_gflops_per_s": encoder_gflops_per_s},
        "storage": {**storage, "ravdess_epoch_read_s": RAVDESS_EPOCH_CLIPS * storage["cache_read_s_per_clip"],
                    "ravdess_epoch_cached_train_s": RAVDESS_EPOCH_CLIPS * cached_s / n},
        "scaling": scaling,
    }


def compute_ceiling(flop_limit: float, *, train_gflops_per_s: float, encoder_gflops_per_s: float) -> float:
    """The cached-vs-online speedup this machine's measured compute rates allow: an online clip costs the
    encoders' FLOPs at the encoders' rate plus the training step's at the training rate, a cached clip the
    latter only, so 1 + (flop_limit - 1) x train rate / encoder rate. (The shorthand flop_limit x train rate /
    encoder rate is a little lower when training runs slower than the encoders.)"""
    return 1.0 + (flop_limit - 1.0) * train_gflops_per_s / encoder_gflops_per_s


def marginal_clips_per_s(scaling: list, *, extract_batch_size: int) -> float | None:
    """Clips/s of the extra clips between the smallest and largest extract run (start-up cancels out), or None
    when it cannot be measured: the runs differ by less than one encoder batch (e.g. 1 vs 2 clips: the second
    clip is decoded beside the first, by another worker, and encoded in the same batch, so the difference is
    noise and can be negative), or the larger run was not slower."""
    if len(scaling) < 2:
        return None
    first, last = scaling[0], scaling[-1]
    extra_clips = last["clips"] - first["clips"]
    extra_s = last["extract"]["loop_s"] - first["extract"]["loop_s"]
    if extra_clips < extract_batch_size or extra_s <= 0:
        return None
    return extra_clips / extra_s


def format_report(r: dict) -> str:
    """The console table: each ratio with its target, then the details of each part."""
    e, x, s, env, t = r["epochs"], r["extract"], r["storage"], r["env"], r["targets"]
    ok = lambda good: "ok" if good else "MISSED"   # noqa: E731
    lines = [f"mmfer bench: {env['preset']} sizes, {env['num_clips']} clips, device {env['device']}"
             + (f" ({env['gpu']})" if "gpu" in env else "") + f", torch {env['torch']}, {env['threads']} threads, "
             f"{env['cores']} cores ({env['cpu']}), 1-min load avg (start, after part 5, after epochs, end) "
             + ", ".join(f"{env.get(k, 0):.1f}" for k in ("load_avg_start", "load_avg_children", "load_avg_epochs", "load_avg_end")),
             "", f"{'part':<34}{'measured':>14}{'target':>12}  ",
             f"{'1 cached vs online speedup':<34}{r['speedup_cached_vs_online']:>13.1f}x{'>= ' + str(t['speedup_cached_vs_online']) + 'x':>12}  "
             f"{ok(r['speedup_cached_vs_online'] >= t['speedup_cached_vs_online'])}",
             f"{'  FLOP limit / fraction of it':<34}{r['speedup_flop_limit']:>8.1f}x {r['fraction_of_flop_limit']:>4.0%}{'>= 90%':>12}  "
             f"{ok(r['fraction_of_flop_limit'] >= t['fraction_of_flop_limit'])}",
             f"{'  ceiling of the measured rates':<34}{r['speedup_compute_ceiling']:>8.1f}x "
             f"{r['fraction_of_compute_ceiling']:>4.0%}{'>= 90%':>12}  {ok(r['fraction_of_compute_ceiling'] >= t['fraction_of_compute_ceiling'])}"
             f" (training {r['epochs']['train_gflops_per_s']:.0f}, encoders {r['extract']['encoder_gflops_per_s']:.0f} GFLOP/s)",
             f"{'2 loader overhead':<34}{r['loader_overhead_pct']:>13.1f}%{'<= 5%':>12}  {ok(r['loader_overhead_pct'] <= t['loader_overhead_pct'])}",
             f"{'3 extract pipeline efficiency':<34}{r['extract_pipeline_efficiency']:>14.2f}{'>= 0.9':>12}  "
             f"{ok(r['extract_pipeline_efficiency'] >= t['extract_pipeline_efficiency'])} (bottleneck: {r['bottleneck']})"]
    busy = max(env.get(k, 0.0) for k in ("load_avg_start", "load_avg_children", "load_avg_epochs", "load_avg_end"))
    if busy > (env.get("cores") or 1) + 1:   # the bench itself keeps about cores + 1 busy
        lines.insert(1, f"WARNING: other jobs share this machine (load avg up to {busy:.1f} on {env.get('cores')} cores); "
                        "timings and ratios are inflated and noisy; re-run when it is idle")
    if r["extract_pipeline_efficiency_marginal"] is not None:
        lines.append(f"{'  same, marginal (no start-up)':<34}{r['extract_pipeline_efficiency_marginal']:>14.2f}")
    elif len(r["scaling"]) > 1:
        lines.append(f"{'  same, marginal (no start-up)':<34}{'n/a':>14}  (the extract runs of part 5 differ by less "
                     f"than one batch of {r['extract']['batch_size']} clips; use more --clips)")
    lines += [f"{'4 bytes per clip on disk':<34}{r['bytes_per_clip'] / 1e6:>11.2f} MB  (raw fp16 {s['raw_fp16_bytes_per_clip'] / 1e6:.2f} MB, "
              f"padded {s['raw_fp16_padded_bytes_per_clip'] / 1e6:.2f} MB)", "",
              f"1  s/clip (best of {len(e['epoch_runs_s']['cached'])} interleaved, epoch of {e['clips']} clips = whole "
              f"accumulation groups): online {e['online_s_per_clip']:.3f}, cached {e['cached_s_per_clip']:.3f}, in memory "
              f"{e['in_memory_s_per_clip']:.3f}; GFLOP/clip: encoders {e['encoder_gflops_per_clip']:.1f} (counted "
              + ", ".join(f"{k} {v:.1f}" for k, v in e["encoder_gflops_counted"].items())
              + f"), trainable forward {e['forward_gflops_per_clip']:.2f} x3; training runs at {e['train_gflops_per_s']:.0f} GFLOP/s",
              f"3  clips/s: extract {x['clips_per_s']:.3f} (with set-up {x['clips_per_s_with_load']:.3f}; set-up "
              f"{x['setup_s']:.1f} s of which encoders {x['encoders_s']:.1f} s while the decode workers start, loop "
              f"{x['loop_s']:.1f} s of which {x['first_batch_wait_s']:.1f} s waiting for the first batch, wall {x['wall_s']:.1f} s"
              + (f", marginal {x['clips_per_s_marginal']:.3f}" if x["clips_per_s_marginal"] else "")
              + f"), decode only {x['decode_only_clips_per_s']:.3f} ({x['decode_workers']} workers; first pass with worker "
              f"start {x['decode_first_pass_s']:.1f} s), encode only {x['encode_only_clips_per_s']:.3f} (visual "
              f"{x['visual_encode_s_per_clip']:.3f} + audio {x['audio_encode_s_per_clip']:.3f} s/clip, {x['encoder_gflops_per_s']:.0f} GFLOP/s)",
              f"4  read: cache {s['cache_read_mb_s']:.0f} MB/s on disk ({s['cache_read_decoded_mb_s']:.0f} MB/s decoded), plain "
              f"sequential {s['plain_read_mb_s']:.0f} MB/s; {s['cache_read_s_per_clip'] * 1e3:.1f} ms/clip -> a {RAVDESS_EPOCH_CLIPS}-clip "
              f"epoch reads in {s['ravdess_epoch_read_s']:.1f} s (cached training epoch {s['ravdess_epoch_cached_train_s']:.0f} s)",
              f"5  {'clips':>6}{'extract s':>11}{'s/clip':>8}{'RSS MB':>8}{'workers':>9}{'train epoch s':>15}{'s/clip':>8}{'RSS MB':>8}"]
    for row in r["scaling"]:
        ex, tr = row["extract"], row["train"]
        lines.append(f"   {row['clips']:>6}{ex['loop_s']:>11.1f}{row['extract_loop_s_per_clip']:>8.2f}{ex['peak_rss_mb']:>8.0f}"
                     f"{ex['peak_rss_children_mb']:>9.0f}{tr['epoch_s']:>15.2f}{row['train_epoch_s_per_clip']:>8.3f}{tr['peak_rss_mb']:>8.0f}")
    lines.append("   (extract s: the clip loop after set-up (extract's ExtractSummary.loop_s); RSS: peak of the process, "
                 "'workers': its largest child)")
    lines += format_scale_out(r.get("scale_out"))
    lines.append(f"bench took {env.get('bench_wall_s', 0):.0f} s")
    return "\n".join(lines)


def format_scale_out(p: dict | None) -> list[str]:
    """Part 6's line: extract clips/s with 1 process and with N torchrun processes, and the speedup (none if skipped)."""
    if p is None:
        return []
    if "skipped" in p:
        return [f"6  extract with {p['processes']} processes: skipped ({p['skipped']})"]
    return [f"6  extract clips/s on the same {p['clips']} clips: 1 process {p['clips_per_s_1']:.3f} ({p['threads_1']} threads), "
            f"{p['processes']} torchrun processes {p['clips_per_s_n']:.3f} ({p['threads_per_rank_n']} thread(s) each): "
            f"speedup {p['speedup']:.2f}x (with set-up: {p['with_setup_clips_per_s_1']:.3f} -> {p['with_setup_clips_per_s_n']:.3f})"]


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
