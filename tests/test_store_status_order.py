"""The order of a status change: a kill between writing a clip's reason/source and its status never
leaves DONE standing over another source signature (a redone DONE clip that fails goes PENDING first)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from synthetic_store import make_store

from mmfer.core.store import ClipStatus, open_store

MARK_FAILED = textwrap.dedent("""
    import sys
    from mmfer.core.store import ClipStatus, open_store
    entry = open_store(sys.argv[1], mode="r+").entry("video")
    entry.mark(sys.argv[2], ClipStatus.FAILED, "ffmpeg-error: the replaced file is broken", "999:123")
""")


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_kill_while_a_done_clip_is_marked_failed_leaves_it_not_done(tmp_path):
    path = make_store(tmp_path / "cache", repetitions=1)
    store = open_store(path)
    clip_id = store.clip_ids[0]
    index = store.index_of(clip_id)
    assert store.entry("video").statuses()[index] == ClipStatus.DONE
    proc = subprocess.run([sys.executable, "-c", MARK_FAILED, str(path), clip_id], capture_output=True, text=True,
                          env={**os.environ, "MMFER_CRASH_AT": "status_meta_written"}, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    entry = open_store(path).entry("video")
    status, source = entry.statuses()[index], entry.sources()[index]
    assert source == "999:123", "the kill did not land between the source and the status writes"
    assert status == ClipStatus.PENDING, f"status {ClipStatus(status).name} over the new source {source}"
