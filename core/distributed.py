"""The process group under `torchrun`: rank and world size from its environment, init and teardown.

Both stages call `process_group(device_type)`: under torchrun (WORLD_SIZE > 1) it joins the group with
nccl on CUDA and gloo on CPU; alone it does nothing, so one code path serves 1 process, N GPUs and
several nodes. The stages decide what each rank does; this module only answers who is who.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

GROUP_TIMEOUT_S = 1800   # a rank waiting this long at a collective gives up (a peer died or hangs)


@dataclass(frozen=True)
class World:
    """Who this process is among those torchrun started (rank 0 of 1 when run alone)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """True on the rank that writes run folders, summaries and the store's creation."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


ALONE = World(0, 1, 0)   # one process, no torchrun


def current_world() -> World:
    """The World from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (rank 0 of 1 without them)."""
    return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                 int(os.environ.get("LOCAL_RANK", "0")))


def device_for_rank(device: torch.device, world: World) -> torch.device:
    """cuda (no index) -> cuda:LOCAL_RANK under torchrun, so each rank of a node takes its own GPU."""
    if world.is_distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[World]:
    """Join torchrun's process group for the block (nccl for cuda, gloo otherwise) and leave it after."""
    world = current_world()
    joined = False
    if world.is_distributed and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
        joined = True
        log.info("rank %d of %d joined the process group (%s)", world.rank, world.world_size, backend)
    try:
        yield world
    finally:
        if joined:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if dist.is_initialized():
        dist.barrier()


def gather_objects(value: object) -> list:
    """Every rank's `value`, in rank order, on every rank ([value] alone)."""
    if not dist.is_initialized():
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: object) -> object:
    """Rank 0's `value` on every rank (`value` alone)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean_(tensor: torch.Tensor) -> None:
    """Average `tensor` over the ranks in place (no-op alone)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())


def all_reduce_sum_(tensor: torch.Tensor) -> None:
    """Sum `tensor` over the ranks in place (no-op alone)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
