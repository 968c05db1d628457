"""The store's writer lock: one extract (or `verify --repair`) writes a store at a time.

An flock on `.<store name>.extract.lock` beside the store, holding "PID WHAT" so a refused writer and
`writer_lock_holder` (read only: status, verify, export, train) can name the holder. No store file is read here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from mmfer.core.store.layout import StoreError

LOCK_FILE = ".extract.lock"


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the store at `path` (beside it, so it outlives a store renamed into place)."""
    path = Path(path)
    return path.parent / f".{path.name}{LOCK_FILE}"


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str = "extract") -> Iterator[None]:
    """Hold an exclusive lock on the store for one extract run (or `verify --repair`); a second writer refuses at
    once, naming the holder's pid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held_path = lock_path(path)
    with open(held_path, "a+") as handle:   # not "w": truncating would erase the holder's pid before the lock is tried
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid, _, holder = handle.read().strip().partition(" ")
            raise StoreError(f"{path}: another {holder or 'extract'} is writing this store (pid {pid or '?'}, lock "
                             f"{held_path}); wait for it{' or use another --out' if what == 'extract' else ''}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {what}")   # "PID WHAT": read by a refused writer and by writer_lock_holder
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def group_writer_lock(path: str | os.PathLike) -> Iterator[None]:
    """`writer_lock` for every rank of a torchrun group: rank 0 holds it for the group until every rank is
    done, and each rank learns whether it was granted, so a second, independent run is still refused.

    Raises:
        StoreError: another run holds the lock (on every rank of this group).
    """
    from mmfer.core.distributed import barrier, broadcast_object, current_world   # torch only for extract

    world = current_world()
    if not world.is_distributed:
        with writer_lock(path):
            yield
        return
    with contextlib.ExitStack() as held:
        refused = None
        if world.is_main:
            try:
                held.enter_context(writer_lock(path))
            except StoreError as err:
                refused = str(err)
        refused = broadcast_object(refused)
        if refused:
            raise StoreError(refused)
        yield
        barrier()   # rank 0 lets go only when every rank has written its last clip


def writer_lock_holder(path: str | os.PathLike) -> str | None:
    """Read-only: who holds the store's writer lock ("pid N, lock FILE" for an extract, "verify --repair, pid N,
    lock FILE"), or None when nothing is writing it. Creates nothing and never blocks."""
    held_path = lock_path(path)
    try:
        handle = open(held_path)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = handle.read().strip().partition(" ")
            role = "" if holder in ("", "extract") else f"{holder}, "   # an extract's: "pid N, lock F"
            return f"{role}pid {pid or '?'}, lock {held_path}"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
