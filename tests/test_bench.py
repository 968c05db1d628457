"""`mmfer bench --preset tiny --clips 4` runs every part on real demo clips and reports finite, positive numbers.

No timing assertions: the numbers depend on the machine and its load; only their presence and sanity are checked.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest

from mmfer.pipeline.app.bench import add_bench_arguments, clip_counts, cmd_bench, format_report

pytestmark = pytest.mark.slow   # runs the whole bench (extract and train in child processes)

HEADLINE = ("speedup_cached_vs_online", "speedup_flop_limit", "loader_overhead_pct", "extract_pipeline_efficiency",
            "bytes_per_clip")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args(["--preset", "tiny", "--clips", "4", "--json", str(out / "bench.json"),
                              "--work-dir", str(out)])
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


def test_every_part_is_reported(report):
    assert report["env"]["preset"] == "tiny" and report["env"]["threads"] >= 1 and report["env"]["torch"]
    epochs = report["epochs"]
    assert epochs["online_s_per_clip"] > 0 and epochs["cached_s_per_clip"] > 0 and epochs["in_memory_s_per_clip"] > 0
    assert report["extract"]["decode_only_clips_per_s"] > 0 and report["extract"]["encode_only_clips_per_s"] > 0
    storage = report["storage"]
    # The store keeps fp16 tokens zstd-compressed: not more than the raw bytes plus the per-array metadata.
    assert 0 < storage["chunk_bytes_per_clip"] <= storage["raw_fp16_padded_bytes_per_clip"] * 1.1
    assert storage["cache_read_mb_s"] > 0 and storage["plain_read_mb_s"] > 0 and storage["ravdess_epoch_read_s"] > 0
    assert [row["clips"] for row in report["scaling"]] == clip_counts(4) == [2, 4]
    for row in report["scaling"]:
        assert row["extract"]["peak_rss_mb"] > 100 and row["train"]["peak_rss_mb"] > 100   # real processes
        assert row["extract"]["loop_s"] > 0 and row["train"]["epoch_s"] > 0
    table = format_report(report)
    for label in ("1 cached vs online", "2 loader overhead", "3 extract pipeline", "4 bytes per clip", "5 "):
        assert label in table, label
