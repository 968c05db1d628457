"""Job claims in a shared study folder: several processes (or machines on a shared filesystem) share the
jobs of one study without running a job twice.

A claim is a file created with O_CREAT | O_EXCL (atomic, also on NFS v3+), holding the claimant's host
and pid; a heartbeat thread refreshes its mtime. A claim whose process is gone (same host: the pid is
dead; another host: no heartbeat for CLAIM_STALE_S) is taken over. The job's own output says it is done.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CLAIM_HEARTBEAT_S = 30.0   # how often a live claim's mtime is refreshed
CLAIM_STALE_S = 600.0      # 20 missed heartbeats: the claimant on another host is taken to be gone
TAKEOVER_SUFFIX = ".takeover"


class Claim:
    """A held claim: refreshes its file until `release()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"claim-{path.name}")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(CLAIM_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:   # taken over (we were thought gone): the job's output decides
                return

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(path: Path) -> Claim | None:
    """Claim the job of `path`, or None when a live process holds it. A stale claim is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _take_over(path):
                return None
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, handle)
        return Claim(path)
    return None


def claim_holder(path: Path) -> dict | None:
    """The claim's {"host", "pid", "since"}, or None when it is absent or not yet written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_stale(path: Path) -> bool:
    """True when the claim's process is gone: dead pid on this host, or no heartbeat for CLAIM_STALE_S."""
    try:
        age_s = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    holder = claim_holder(path)
    if holder is not None and holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:   # alive, another user's
            return False
        return False
    return age_s > CLAIM_STALE_S


def _take_over(path: Path) -> bool:
    """Remove a stale claim so the caller may create its own; one taker at a time (its own O_EXCL file)."""
    if not is_stale(path):
        return False
    guard = path.with_name(path.name + TAKEOVER_SUFFIX)
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if time.time() - guard.stat().st_mtime > CLAIM_STALE_S:   # a taker that died in these few lines
            guard.unlink(missing_ok=True)
        return False
    os.close(fd)
    try:
        if not is_stale(path):   # re-checked under the guard: another taker may have claimed it meanwhile
            return False
        log.warning("%s: its process is gone (%s); taking the job over", path, claim_holder(path))
        path.unlink(missing_ok=True)
        return True
    finally:
        guard.unlink(missing_ok=True)
