"""How DataLoader worker processes start: forked from one clean server process, never from the parent.

A worker forked from the parent itself can deadlock once the parent has used Zarr (its event-loop thread) or
started OpenMP threads, so workers used to be spawned. But a spawned worker imports torch, transformers and the
pipeline again before its first clip: ~9 CPU-s each on a 2-core machine, paid again by every loader.
multiprocessing's forkserver starts one fresh process per parent, which never reads a store or runs a model; it
imports `preload` once, and each worker is a fork of it, ready in under a second.

multiprocessing gives each fork the parent's current working folder and import path, but not its environment:
a fork keeps the server's (the parent's when the server started), so `WorkerStart` gives each worker the parent's
current environment first (crash points, offline flags), as a spawned worker would have had.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

_PRELOAD: set[str] = set()   # every module asked for in this process; the server imports those known when it starts


@dataclass(frozen=True)
class WorkerStart:
    """A DataLoader `worker_init_fn`: take the parent's environment (as it was at the loader's making), then run
    `then`."""

    environ: dict[str, str] = field(repr=False)
    then: Callable[[int], None] | None = None

    def __call__(self, worker_id: int) -> None:
        os.environ.clear()
        os.environ.update(self.environ)
        if self.then is not None:
            self.then(worker_id)


def worker_settings(preload: Iterable[str], then: Callable[[int], None] | None = None) -> dict:
    """DataLoader keyword arguments for worker processes: the forkserver context and a `WorkerStart`.

    `preload`: modules the workers use (the dataset's module, the image processor's), imported once by the server.
    A server already running in this process keeps what it imported; the workers then import the rest themselves.
    """
    _PRELOAD.update(preload)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted(_PRELOAD))
    return {"multiprocessing_context": context, "worker_init_fn": WorkerStart(dict(os.environ), then)}
