"""`mmfer verify [--repair]`: what --help says is what it does, exit code included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmfer.pipeline.cli import build_parser, main as mmfer_main
from mmfer.core.store import ArraySpec, ClipStatus, create_store, open_store

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


@pytest.mark.slow
def test_verify_is_read_only_beside_a_running_extract_and_repair_waits_for_its_lock(tmp_path, tiny_models, capsys):
    """With a real concurrent extract: frozen (SIGSTOP) right after the first array of its 3rd clip was
    written, that clip's chunks on disk and its status still pending. `verify` reads without touching a file;
    `verify --repair` refuses, naming the extract's pid; let go, the extract finishes a store that verifies."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from mmfer.data.demo import make_demo

    root = tmp_path / "demo"
    make_demo(root, seed=0, overwrite=False, num_actors=1, clips_per_emotion=1, size_px=64, duration_s=1.0)
    cache = tmp_path / "cache"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MMFER_")}, "HF_HUB_OFFLINE": "1",
           "MMFER_CRASH_AT": "array_written:15", "MMFER_CRASH_SIGNAL": "SIGSTOP"}   # 7 arrays a clip
    extract = subprocess.Popen([sys.executable, "-m", "mmfer.pipeline.cli", "extract", "--root", str(root), "--out",
                                str(cache), "--preset", "tiny", "--models-dir", str(tiny_models), "--num-workers", "0",
                                "--face-crop", "center", "--batch-size", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while Path(f"/proc/{extract.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert extract.poll() is None and time.monotonic() < deadline, extract.stderr.read()[-3000:]
            time.sleep(0.1)
        files = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
        video = open_store(cache).entry("video")
        assert list(video.statuses()[:3]) == [ClipStatus.DONE, ClipStatus.DONE, ClipStatus.PENDING]
        assert any(f.exists() for f in video.clip_chunk_files(2))   # the clip being written has chunks already
        capsys.readouterr()
        assert mmfer_main(["verify", str(cache)]) == 0
        out = capsys.readouterr().out
        assert "checked 4 done clip entries, 0 damaged" in out and f"pid {extract.pid}" in out, out
        assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files   # not one file touched
        assert mmfer_main(["verify", "--repair", str(cache)]) == 2
        err = capsys.readouterr().err
        assert f"another extract is writing this store (pid {extract.pid}" in err, err
        assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == files
    finally:
        extract.send_signal(signal.SIGCONT)
    _, stderr = extract.communicate(timeout=300)
    assert extract.returncode == 0, stderr[-3000:]
    assert (open_store(cache).entry("video").statuses() == ClipStatus.DONE).all()
    assert mmfer_main(["verify", "--repair", str(cache)]) == 0
    assert "checked 16 done clip entries, 0 damaged" in capsys.readouterr().out
