"""Token-size study: visual-token bytes per clip and reconstruction error of each cache size option.

For `extract --token-pool 1|2` x `--token-dtype float|int8`, on the clips of an existing store: the bytes of one
clip's visual tokens and the relative error ||x - x'|| / ||x|| of the tokens after the option's round trip
(extract's own `pool_tokens` / `unpool_tokens`, the store's own int8 quantization). Finished study: the figures
are in docs/performance.md; rerun it on your own store with

    python benchmarks/token_size_study.py --store cache/ [--clips 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from mmfer.core.store import ClipStatus, dequantize_tokens, open_store, quantize_tokens
from mmfer.extract.shrink import pool_tokens, unpool_tokens


def size_options(store_path: str, num_clips: int) -> list[dict]:
    """One row per option: option, tokens_per_frame, token_bytes_per_clip, relative_error."""
    entry = open_store(store_path).entry("video")
    done = [cid for cid, s in zip(entry.store.clip_ids, entry.statuses()) if s == ClipStatus.DONE][:num_clips]
    tokens = np.stack([entry.read_clip(cid, ("tokens",))["tokens"] for cid in done]).astype(np.float32)
    norm = float(np.linalg.norm(tokens))
    rows = []
    for pool in (1, 2):
        pooled = pool_tokens(tokens, pool).astype(np.float16)
        for dtype in ("float", "int8"):
            stored = dequantize_tokens(*quantize_tokens(pooled.astype(np.float32))) if dtype == "int8" else pooled
            restored = unpool_tokens(stored.astype(np.float32), pool)
            tv, p, dv = pooled.shape[1:]
            num_bytes = tv * p * dv * (1 if dtype == "int8" else 2) + (tv * p * 2 if dtype == "int8" else 0)
            rows.append({"option": f"--token-pool {pool} --token-dtype {dtype}", "tokens_per_frame": p,
                         "token_bytes_per_clip": num_bytes,
                         "relative_error": float(np.linalg.norm(tokens - restored)) / max(norm, 1e-12)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a feature store made by extract")
    parser.add_argument("--clips", type=int, default=32, help="done clips to measure on (the first ones)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    rows = size_options(args.store, args.clips)
    print(f"{'option':<38}{'tokens/frame':>13}{'MB/clip':>10}{'rel. error':>12}")
    for row in rows:
        print(f"{row['option']:<38}{row['tokens_per_frame']:>13}{row['token_bytes_per_clip'] / 1e6:>10.3f}"
              f"{row['relative_error']:>12.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
