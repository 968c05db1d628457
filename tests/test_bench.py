"""`mmfer bench --preset tiny --clips 2` runs every part on real demo clips and reports finite, positive numbers.

No timing assertions: the numbers depend on the machine and its load; only their presence and sanity are checked.
The bench's trainer is train's own fold set-up, and its extract timings are extract's own summary.
"""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
import torch
from synthetic_store import make_store

from mmfer.pipeline.bench import (add_bench_arguments, clip_counts, cmd_bench, format_report,
                                      marginal_clips_per_s)
from mmfer.pipeline.flags import resolve_config
from mmfer.pipeline.command_config import BenchConfig

pytestmark = pytest.mark.slow   # runs the whole bench (extract and train in child processes)

HEADLINE = ("speedup_cached_vs_online", "speedup_flop_limit", "loader_overhead_pct", "extract_pipeline_efficiency",
            "bytes_per_clip")


NUM_CLIPS = 2   # 2 clips (1 vs 2 in the scaling part) once printed negative efficiencies


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    return run_bench_command(out, NUM_CLIPS)


def run_bench_command(out, num_clips: int, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args(["--preset", "tiny", "--clips", str(num_clips), "--json", str(out / "bench.json"),
                              "--work-dir", str(out), *extra])
    assert cmd_bench(args) == 0
    assert [p.name for p in out.iterdir()] == ["bench.json"], "the temporary folder must be removed"
    return json.loads((out / "bench.json").read_text())


def test_headline_numbers_are_finite_and_positive(report):
    for key in HEADLINE:
        assert math.isfinite(report[key]), (key, report[key])
    for key in ("speedup_cached_vs_online", "speedup_flop_limit", "extract_pipeline_efficiency", "bytes_per_clip"):
        assert report[key] > 0, (key, report[key])
    assert report["bottleneck"] in ("decode", "encode")
    assert report["speedup_flop_limit"] > 1   # encoders cost something on top of the training step
    # the target: the speedup against what this run's measured training and encoder rates allow
    rates = report["epochs"]["train_gflops_per_s"] / report["extract"]["encoder_gflops_per_s"]
    assert report["speedup_compute_ceiling"] == pytest.approx(1 + (report["speedup_flop_limit"] - 1) * rates)
    assert report["fraction_of_compute_ceiling"] == pytest.approx(report["speedup_cached_vs_online"] / report["speedup_compute_ceiling"])
    assert "ceiling of the measured rates" in format_report(report)


def test_every_part_is_reported(report):
    assert report["env"]["preset"] == "tiny" and report["env"]["threads"] >= 1 and report["env"]["torch"]
    epochs = report["epochs"]
    assert epochs["online_s_per_clip"] > 0 and epochs["cached_s_per_clip"] > 0 and epochs["in_memory_s_per_clip"] > 0
    assert report["extract"]["decode_only_clips_per_s"] > 0 and report["extract"]["encode_only_clips_per_s"] > 0
    storage = report["storage"]
    # The store keeps fp16 tokens zstd-compressed: not more than the raw bytes plus the per-array metadata.
    assert 0 < storage["chunk_bytes_per_clip"] <= storage["raw_fp16_padded_bytes_per_clip"] * 1.1
    assert storage["cache_read_mb_s"] > 0 and storage["plain_read_mb_s"] > 0 and storage["ravdess_epoch_read_s"] > 0
    assert [row["clips"] for row in report["scaling"]] == clip_counts(NUM_CLIPS) == [1, 2]
    for row in report["scaling"]:
        assert row["extract"]["peak_rss_mb"] > 100 and row["train"]["peak_rss_mb"] > 100   # real processes
        assert row["extract"]["loop_s"] > 0 and row["train"]["epoch_s"] > 0
        # extract's own timings (ExtractSummary), not a log line: set-up and loop add up to at most the wall time
        ex = row["extract"]
        assert ex["setup_s"] > 0 and ex["setup_s"] + ex["loop_s"] <= ex["wall_s"]
        assert 0 < ex["encoders_s"] < ex["setup_s"] and 0 <= ex["first_batch_wait_s"] <= ex["loop_s"]
    assert report["extract"]["setup_s"] == report["scaling"][-1]["extract"]["setup_s"]
    table = format_report(report)
    for label in ("1 cached vs online", "2 loader overhead", "3 extract pipeline", "4 bytes per clip", "4  read:", "5 "):
        assert label in table, label


def test_extract_with_one_and_two_processes_is_reported(report):
    """Part 6: the same clips extracted by 1 process and by 2 real torchrun processes."""
    six = report["scale_out"]
    assert six["clips"] == NUM_CLIPS and six["processes"] == 2
    assert six["clips_per_s_1"] == pytest.approx(NUM_CLIPS / report["scaling"][-1]["extract"]["loop_s"])   # part 5's own run
    assert six["clips_per_s_n"] > 0 and six["speedup"] == pytest.approx(six["clips_per_s_n"] / six["clips_per_s_1"])
    assert six["threads_per_rank_n"] >= 1 and six["with_setup_clips_per_s_n"] > 0
    line = next(line for line in format_report(report).splitlines() if line.startswith("6  "))
    assert f"1 process {six['clips_per_s_1']:.3f}" in line and f"2 torchrun processes {six['clips_per_s_n']:.3f}" in line
    assert f"speedup {six['speedup']:.2f}x" in line


def test_bench_trainer_is_trains_fold_setup(tmp_path):
    """The bench trains what train-fusion trains: train/loop.py's setup_fold, input standardization included."""
    from mmfer.pipeline.bench_parts import build_trainer, cached_loader, open_bench_cache
    from mmfer.pipeline.bench_setup import bench_train_config
    from mmfer.train.loop import setup_fold
    from mmfer.train.model.normalize import feature_statistics

    cfg = bench_train_config("tiny", "cpu")
    cache = open_bench_cache(make_store(tmp_path / "cache", repetitions=1))
    dataset, loader = cached_loader(cache, cfg)
    trainer = build_trainer(cfg, cache, dataset)
    norm = trainer.fold.model.input_norm
    stats = feature_statistics(dataset[i] for i in range(len(dataset)))   # every bench clip is a training clip
    assert set(stats) == {"video_mean", "video_std", "audio_mean", "audio_std"}
    for name, value in stats.items():
        np.testing.assert_allclose(getattr(norm, name).numpy(), value.reshape(getattr(norm, name).shape), rtol=1e-5,
                                   err_msg=name)
    assert norm.video_mean.abs().max() > 0.1 and norm.audio_mean.abs().max() > 0.1   # not the identity it starts as

    fold = setup_fold(cfg, cache, dataset, np.arange(len(dataset)), torch.device("cpu"), fold_number=1, fold=None)
    bench_state, train_state = trainer.fold.model.state_dict(), fold.model.state_dict()
    assert bench_state.keys() == train_state.keys()
    for key in bench_state:
        assert torch.equal(bench_state[key], train_state[key]), key
    batch = next(iter(loader))
    trainer.fold.model.eval()
    fold.model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(trainer.fold.model(batch)["logits"], fold.model(batch)["logits"])
    assert type(trainer.fold.criterion) is type(fold.criterion)
    assert [g["lr"] for g in trainer.fold.optimizer.param_groups] == [g["lr"] for g in fold.optimizer.param_groups]


def test_marginal_rate_needs_a_batch_of_extra_clips():
    """`bench --clips 2` compares 1- and 2-clip extract runs: the second clip decodes beside the first and is
    encoded in the same batch, so their loop times differ by noise, often negatively. No rate from that."""
    rows = lambda a, b, s_a, s_b: [{"clips": a, "extract": {"loop_s": s_a}}, {"clips": b, "extract": {"loop_s": s_b}}]  # noqa: E731
    assert marginal_clips_per_s(rows(1, 2, 6.0, 5.8), extract_batch_size=4) is None    # was -5 clips/s
    assert marginal_clips_per_s(rows(1, 2, 6.0, 6.1), extract_batch_size=4) is None    # was 10 clips/s: noise
    assert marginal_clips_per_s(rows(4, 8, 6.0, 5.9), extract_batch_size=4) is None    # not slower: unmeasurable
    assert marginal_clips_per_s(rows(4, 8, 6.0, 8.0), extract_batch_size=4) == pytest.approx(2.0)
    assert marginal_clips_per_s(rows(4, 4, 6.0, 6.0)[:1], extract_batch_size=4) is None


def test_two_clips_print_no_negative_efficiency(report):
    """`mmfer bench --clips 2`: every efficiency is absent or >= 0, in the JSON and the table."""
    assert report["extract_pipeline_efficiency"] > 0
    marginal = report["extract_pipeline_efficiency_marginal"]
    assert marginal is None or marginal >= 0
    table = format_report(report)
    efficiency_lines = [line for line in table.splitlines() if "efficiency" in line or "marginal" in line]
    assert efficiency_lines and not any(re.search(r"(?<![\w.])-\d", line) for line in efficiency_lines), efficiency_lines


def test_no_scale_out_leaves_part_six_out(report):
    """--no-scale-out: the flag reaches the bench's config, and a report without part 6 prints no line for it."""
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    assert resolve_config(BenchConfig, parser.parse_args(["--no-scale-out"]), layered=False).scale_out is False
    assert resolve_config(BenchConfig, parser.parse_args([]), layered=False).scale_out is True
    without = {key: value for key, value in report.items() if key != "scale_out"}
    assert "\n6  " in format_report(report) and "\n6  " not in format_report(without)


def test_gpu_check_runs_on_cpu_without_nemo_or_ffmpeg(tmp_path):
    """benchmarks/gpu_check.py: `write` here (ffmpeg, NeMo), then `run` in a child that cannot
    import NeMo, ffmpeg-python, imageio-ffmpeg or OpenCV and has no ffmpeg on PATH, with the tiny encoders on CPU."""
    import subprocess
    import sys
    from pathlib import Path

    from bare_box import bare_box_env

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    folder, out = tmp_path / "decoded", tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(script), "write", str(folder), "--clips", "2", "--preset", "tiny"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, str(script), "run", str(folder), "--device", "cpu", "--clips", "4",
                           "--json", str(out)], env=bare_box_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["env"]["device"] == "cpu" and r["env"]["decoded_clips"] == 2 and r["amp_dtype"] is None   # no AMP on CPU
    assert r["env"]["cores"] >= 1 and r["env"]["load_avg_end"] >= 0   # other jobs' share of the machine, reported
    assert r["encoders"]["visual_clips_per_s"] > 0
    # the transformers FastConformer is the registry's NeMo-free audio kind: audio is measured on the bare box too
    assert r["encoders"]["audio_clips_per_s"] > 0 and r["env"]["audio_encoder"].startswith("parakeet"), r["env"]
    assert done.stderr.count("clips are not usable") == 1, done.stderr[-3000:]   # the store is opened once
    training = r["training"]
    assert training["cached_clips_per_s"] > 0 and training["online_clips_per_s"] > 0
    assert training["speedup_cached_vs_online"] == pytest.approx(training["cached_clips_per_s"] / training["online_clips_per_s"])
    assert [(m["mode"], m["batch_size"]) for m in r["memory"]] == [
        (mode, b) for mode in ("finetune", "frozen", "lora") for b in (1, 4, 8)]
    for row in r["memory"]:   # CPU: no per-config peak, no verdict; the process's RSS, labelled as such
        assert row["peak_allocated_gb"] is None and row["fits_4gb"] is None and row["fits_8gb"] is None
        assert row["process_peak_rss_gb"] > 0 and row["step_s"] > 0
    printed = done.stdout
    for label in ("encoder clips/s", "training clips/s", "cached vs online speedup", "AMP dtype", "fits 4 GB", "lora"):
        assert label in printed, label
