"""core/loader_workers.py: DataLoader workers are forks of a clean server, yet see what a spawned worker would."""

from __future__ import annotations

import os

import pytest
import torch

from mmfer.core.loader_workers import worker_settings


def where_am_i(_item: int) -> dict:
    """Runs in the worker (a DataLoader's collate_fn with batch_size=None)."""
    return {"pid": os.getpid(), "parent": os.getppid(), "cwd": os.getcwd(), "mark": os.environ.get("MMFER_TEST_MARK")}


@pytest.mark.slow   # over 4 s on two shared cores: the forkserver imports torch (the fast tier is the edit-test loop)
def test_workers_are_forked_from_the_server_with_the_parents_current_folder_and_environment(tmp_path, monkeypatch):
    """A first loader starts the forkserver here; then this process moves and changes its environment. A second
    loader's worker is a child of that server (not of this process, whose Zarr or OpenMP state a fork would copy)
    and still has this process's folder and environment as they are now, as a spawned worker would."""
    first = torch.utils.data.DataLoader([0], batch_size=None, num_workers=1, collate_fn=where_am_i,
                                        **worker_settings([__name__]))
    started = next(iter(first))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMFER_TEST_MARK", "set after the server started")
    second = torch.utils.data.DataLoader([0], batch_size=None, num_workers=1, collate_fn=where_am_i,
                                         **worker_settings([__name__]))
    seen = next(iter(second))
    assert seen["pid"] != os.getpid() and seen["parent"] != os.getpid()   # a fork of the server
    assert seen["parent"] == started["parent"]                            # the same server as the first loader's
    assert seen["mark"] == "set after the server started"   # core/loader_workers.py WorkerStart
    assert seen["cwd"] == str(tmp_path)                     # multiprocessing's own preparation data
