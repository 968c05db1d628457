"""Reader comparison: the same clips read from a Zarr store (zarr-python) and from its HDF5 export (h5py).

MB/s (decoded) and clips/s reading video tokens + pooled through the store's one reading interface
(checksums checked), with 1 and 2 reader threads, cold (the store's files dropped from the page cache with
posix_fadvise DONTNEED before each pass, store reopened) and warm (the same clips just read); best of 3.
Finished study: the figures are in docs/performance.md; rerun it with

    python benchmarks/reader_comparison.py --store cache/ [--clips 32] [--work-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmfer.core.store import ClipStatus, drop_from_page_cache, open_store
from mmfer.core.store.export import export_h5


def reader_comparison(store_path: str, num_clips: int, work_dir: Path) -> list[dict]:
    """One row per reader x threads x cache: reader, readers, cache, clips_per_s, mb_per_s."""
    entry = open_store(store_path).entry("video")
    clip_ids = [cid for cid, s in zip(entry.store.clip_ids, entry.statuses()) if s == ClipStatus.DONE][:num_clips]
    h5_path = work_dir / "reader-comparison.h5"
    if not h5_path.exists():
        export_h5(store_path, h5_path)
    rows = []
    for name, path in (("zarr-python", store_path), ("hdf5 (h5py)", h5_path)):
        for cache in ("cold", "warm"):
            for readers in (1, 2):
                seconds, size = zip(*(timed_reads(path, clip_ids, readers=readers, cold=cache == "cold")
                                      for _ in range(3)))
                rows.append({"reader": name, "readers": readers, "cache": cache, "clips_per_s": len(clip_ids) / min(seconds),
                             "mb_per_s": size[0] * len(clip_ids) / min(seconds) / 1e6})
    return rows


def timed_reads(path, clip_ids: list[str], *, readers: int, cold: bool) -> tuple[float, int]:
    """Seconds to read `clip_ids` with `readers` threads from a freshly opened store, and one clip's decoded bytes."""
    if cold:
        drop_from_page_cache(path)
    entry = open_store(path).entry("video")
    read = lambda cid: entry.read_clip(cid, ("tokens", "pooled"))   # noqa: E731
    if not cold:
        for cid in clip_ids:
            read(cid)
    with ThreadPoolExecutor(readers) as pool:
        started = time.perf_counter()
        list(pool.map(read, clip_ids))
        seconds = time.perf_counter() - started
    return seconds, sum(v.nbytes for v in read(clip_ids[0]).values())


def format_rows(rows: list[dict]) -> list[str]:
    """One line per reader and thread count: cold and warm MB/s and clips/s."""
    by_key = {(r["reader"], r["readers"], r["cache"]): r for r in rows}
    lines = [f"{'reader':<14}{'threads':>8}{'cold MB/s':>11}{'clips/s':>9}{'warm MB/s':>11}{'clips/s':>9}"]
    for reader, readers in dict.fromkeys((r["reader"], r["readers"]) for r in rows):
        cells = "".join(f"{row['mb_per_s']:>11.0f}{row['clips_per_s']:>9.1f}" if row else f"{'-':>11}{'-':>9}"
                        for row in (by_key.get((reader, readers, "cold")), by_key.get((reader, readers, "warm"))))
        lines.append(f"{reader:<14}{readers:>8}{cells}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a feature store made by extract")
    parser.add_argument("--clips", type=int, default=32, help="done clips to read (the first ones)")
    parser.add_argument("--work-dir", help="where the HDF5 export is written (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmfer-readers-") as tmp:
        rows = reader_comparison(args.store, args.clips, Path(args.work_dir or tmp))
    print("\n".join(format_rows(rows)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
