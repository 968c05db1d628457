"""`mmfer verify [--repair]`: what --help says is what it does, exit code included (issue 15, item 14)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmfer.pipeline.app.cli import build_parser, main as mmfer_main
from mmfer.pipeline.store import ArraySpec, ClipStatus, create_store, open_store

SPECS = {"tokens": ArraySpec((4, 6, 8), "float16")}


def damaged_store(path):
    """Two done clips; c0's chunk has a flipped byte."""
    store = create_store(path, pd.DataFrame({"clip_id": ["c0", "c1"], "actor": [1, 2], "label": [0, 0]}), {})
    entry = store.ensure_entry("video", "fp1", {}, SPECS)
    for i in range(2):
        entry.write_clip(f"c{i}", {"tokens": np.random.default_rng(i).standard_normal((4, 6, 8))}, "s")
    chunk = entry.clip_chunk_files(0)[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    return path


def verify_help() -> str:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["verify"].format_help()


def test_verify_repair_does_what_its_help_says(tmp_path, capsys):
    text = " ".join(verify_help().split())
    assert "Mark damaged clips failed" in text and "exits 0 once marked" in text, text
    assert "Exits 1 when damage is found and not repaired" in text, text

    cache = damaged_store(tmp_path / "cache")
    assert mmfer_main(["verify", str(cache)]) == 1
    assert open_store(cache).entry("video").statuses()[0] == ClipStatus.DONE   # without --repair: only reported
    assert mmfer_main(["verify", "--repair", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "video c0" in out and "marked 1 damaged clip entries failed" in out, out
    entry = open_store(cache).entry("video")
    assert entry.statuses()[0] == ClipStatus.FAILED and entry.reasons()[0].startswith("damaged: ")
    assert mmfer_main(["verify", str(cache)]) == 0   # the failed clip is no longer a done clip to check
