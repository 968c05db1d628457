"""Peak memory and speed of `mmfer predict --stream` on a 1-minute and a 10-minute file.

    python benchmarks/stream_memory.py --run RUN_DIR [--fold 1] [--minutes 1 10] [--window 2] [--hop 2]

Makes the long files from one demo clip looped by ffmpeg (`-stream_loop`, stream copy), runs the real CLI once per
file in a child process (stdout: one JSON line per window), and reads the child's peak RSS from `os.wait4`. Prints
one line per file (minutes, windows, wall s, windows/s, median latency ms, peak RSS MiB) and the RSS ratio of the
longest to the shortest; the target is within 1.2x. `--window-file` also times `mmfer predict --window FILE` on the
shortest file. Not a test: numbers depend on the machine; docs/performance.md keeps the ones we measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmfer.core.media import run_ffmpeg
from mmfer.data.demo import write_demo_clip

CLIP_S = 2.0   # the looped demo clip's length


def looped_file(clip: Path, minutes: float, out: Path) -> Path:
    loops = int(round(minutes * 60 / CLIP_S)) - 1
    run_ffmpeg(["-y", "-stream_loop", str(loops), "-i", str(clip), "-c", "copy", str(out)], path=clip, timeout_s=600)
    return out


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; its wall time, stdout lines and peak RSS (the child's own, from wait4)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(cwd / "stdout.txt", "w") as stdout, open(cwd / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(cwd / 'stderr.txt').read_text()[-3000:]}")
    lines = [json.loads(x) for x in (cwd / "stdout.txt").read_text().splitlines() if x.startswith("{")]
    return {"wall_s": wall_s, "peak_rss_mib": usage.ru_maxrss / 1024, "lines": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a train-fusion run folder")
    parser.add_argument("--model", help="or a folder written by mmfer export")
    parser.add_argument("--fold", default=None)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--hop", type=float, default=2.0)
    parser.add_argument("--size-px", type=int, default=112)
    parser.add_argument("--window-file", action="store_true", help="also time `predict --window FILE` (same windows)")
    args = parser.parse_args()
    # the children run in their own temporary folders, so a relative folder is resolved here
    model = ["--run", str(Path(args.run).resolve())] if args.run else ["--model", str(Path(args.model).resolve())]
    model += ["--fold", args.fold] if args.fold else []
    cli = [sys.executable, "-m", "mmfer.pipeline.cli", "predict", *model, "--device", "cpu"]
    with tempfile.TemporaryDirectory(prefix="mmfer-stream-bench-") as tmp:
        tmp = Path(tmp)
        clip = write_demo_clip(tmp / "clip.mp4", "happy", 1, duration_s=CLIP_S, size_px=args.size_px)
        results = {}
        for minutes in args.minutes:
            video = looped_file(clip, minutes, tmp / f"long{minutes:g}.mp4")
            got = measure([*cli, "--stream", str(video), "--window", str(args.window), "--hop", str(args.hop)], tmp)
            latencies = [x["latency_ms"] for x in got["lines"]]
            results[minutes] = got
            print(f"stream {minutes:g} min: {len(got['lines'])} windows in {got['wall_s']:.1f} s "
                  f"({len(got['lines']) / got['wall_s']:.2f} windows/s, start-up included), median latency "
                  f"{np.median(latencies):.0f} ms, peak RSS {got['peak_rss_mib']:.0f} MiB", flush=True)
        low, high = min(args.minutes), max(args.minutes)
        print(f"peak RSS ratio {high:g} min / {low:g} min: {results[high]['peak_rss_mib'] / results[low]['peak_rss_mib']:.3f}")
        if args.window_file:
            video = tmp / f"long{low:g}.mp4"
            got = measure([*cli, "--window", str(args.window), "--hop", str(args.hop), str(video)], tmp)
            count = len(results[low]["lines"])
            print(f"--window FILE {low:g} min: {count} windows in {got['wall_s']:.1f} s "
                  f"({count / got['wall_s']:.2f} windows/s, start-up included), peak RSS {got['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
