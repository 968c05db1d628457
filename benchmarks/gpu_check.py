"""GPU figures from a bare box: torch + transformers + the store's libraries, no NeMo, no ffmpeg.

    python benchmarks/gpu_check.py write DIR [--clips 4] [--preset full]       # on a CPU machine with ffmpeg + NeMo
    python benchmarks/gpu_check.py run DIR --device cuda [--json OUT.json]       # on the GPU box (or --device cpu)

`write` makes demo clips, extracts them (a real store in DIR/cache) and keeps extract's decoded clips
(DIR/decoded.npz); carry DIR and the source tree. `run` prints encoder clips/s, cached and online training
clips/s and their ratio, the AMP dtype, and the peak memory of the fusion modes at batch 1, 4, 8 against 4 and
8 GB, and writes the same as JSON. The measuring code is pipeline/bench_decoded.py (the stages' own functions).
Runs from the source tree without `pip install`: when `mmfer` is not importable, a link to the tree is made.
See docs/performance.md ("GPU figures from a bare box") for the one-call recipe.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
from pathlib import Path


# What the check imports besides the standard library and the tree, by import name (pip names in
# docs/performance.md); checked before anything loads. PIL: transformers' PIL image processor; sklearn: train's
# metrics; peft: the LoRA rows. No NeMo, no ffmpeg(-python), no imageio-ffmpeg, no OpenCV.
REQUIRED = ("torch", "transformers", "PIL", "numpy", "pandas", "sklearn", "zarr", "numcodecs", "yaml", "tqdm", "peft",
            "safetensors")


def can_import(name: str) -> bool:
    """Whether this Python has module `name` (looked up, not imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:   # a finder that refuses it
        return False


def import_mmfer() -> None:
    """Make `import mmfer` work from a bare source tree: the tree's root is the `mmfer` package (pyproject's
    package-dir), so a link named mmfer to it in a temporary folder on sys.path is enough."""
    try:
        import mmfer  # noqa: F401
    except ImportError:
        link_parent = Path(tempfile.mkdtemp(prefix="mmfer-src-"))
        (link_parent / "mmfer").symlink_to(Path(__file__).resolve().parent.parent, target_is_directory=True)
        sys.path.insert(0, str(link_parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="on a CPU machine: demo clips -> DIR/cache (extract) + DIR/decoded.npz")
    write.add_argument("dir")
    write.add_argument("--clips", type=int, default=4, help="demo clips to extract and decode (full: ~5 MB each)")
    write.add_argument("--preset", choices=("full", "tiny"), default="full", help="encoder and model sizes")
    run = sub.add_parser("run", help="measure from DIR (no ffmpeg, no NeMo needed)")
    run.add_argument("dir")
    run.add_argument("--device", default="cuda")
    run.add_argument("--clips", type=int, default=16, help="clips (decoded ones cycled) for the encoder timing")
    run.add_argument("--json", help="also write the figures here")
    run.add_argument("--modes", default="finetune,frozen,lora", help="fusion modes of the memory table")
    run.add_argument("--batch-sizes", default="1,4,8", help="batch sizes of the memory table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import_mmfer()
    uses_lora = args.command == "write" or "lora" in args.modes.split(",")
    missing = [name for name in REQUIRED if not can_import(name) and (name != "peft" or uses_lora)]
    if missing:   # before anything loads: one line naming every module this Python lacks
        print(f"gpu_check: this Python ({sys.executable}) lacks {', '.join(missing)}; the check needs "
              f"{', '.join(REQUIRED)} (not NeMo, not ffmpeg; peft only for the lora rows, which "
              f"--modes finetune,frozen leaves out)", file=sys.stderr)
        return 2
    from mmfer.pipeline.bench_decoded import format_decoded_report, run_decoded_check, write_decoded

    if args.command == "write":
        meta = write_decoded(args.dir, num_clips=args.clips, preset=args.preset)
        print(f"wrote {args.dir}: {len(meta['clip_ids'])} clips, cache {meta['cache_bytes'] / 1e6:.1f} MB, "
              f"decoded {meta['decoded_bytes'] / 1e6:.1f} MB")
        return 0
    try:
        result = run_decoded_check(args.dir, device=args.device, num_clips=args.clips,
                                   modes=tuple(args.modes.split(",")),
                                   batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")))
    except FileNotFoundError as err:   # a folder `write` did not make: one line, no traceback
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    print(format_decoded_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
