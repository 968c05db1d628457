"""Atomic checkpoints: `torch.save` to a temporary file in the same folder, fsync, then rename.

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`
(never unpickling arbitrary objects). A fold keeps two: `last.pt`, the full training state resume reads (each
save keeps the one before as `last.prev.pt`; a checkpoint that fails to load is reported by name and the
previous good one is used instead), and `best.pt`, the selected epoch's weights alone (`best_weights`).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from mmfer.core.errors import BadInputError
from mmfer.core.faults import crash_point

log = logging.getLogger(__name__)

PREVIOUS_SUFFIX = ".prev.pt"


class CheckpointError(BadInputError, RuntimeError):
    """No loadable checkpoint (named in the message)."""


def save_checkpoint(path: str | os.PathLike, state: dict, *, keep_previous: bool = True) -> Path:
    """Write `state` to `path` atomically; the file it replaces becomes `<stem>.prev.pt` (unless truncated), or,
    with keep_previous=False, is replaced by the rename (a kill still leaves the old or the new file whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):   # left by a save that was killed
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("checkpoint_write")   # the new state is in the temp file; last.pt and .prev.pt untouched
        if keep_previous and path.exists() and zipfile.is_zipfile(path):   # a truncated file never replaces the previous good one
            os.replace(path, previous_path(path))
        crash_point("checkpoint_rotated")   # a good old file is now .prev.pt, so `path` may be absent
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)   # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return path


BEST_KEYS = ("model", "epoch", "metric", "val_metrics", "config", "cache_fingerprints", "model_spec", "feature_spec")


def best_weights(state: dict) -> dict:
    """What best.pt keeps of a training state: the weights and what predict, export and the test pass read
    (no optimizer moments, scheduler, scaler or RNG: resume reads last.pt), about a third of the full state."""
    return {k: state[k] for k in BEST_KEYS if k in state}


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(best.pt, last.pt) sizes of one fold, estimated before the first save: the weights, and the weights plus
    AdamW's two float32 moments per trained parameter."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(2 * 4 * p.numel() for group in optimizer.param_groups for p in group["params"] if p.requires_grad)
    return weights, weights + moments


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + PREVIOUS_SUFFIX)


def _load_one(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:   # torch's own text would suggest weights_only=False: never do that
        raise CheckpointError(f"{path}: refused: the file holds Python objects other than tensors and plain values "
                              f"({_culprit(err)}); mmfer never unpickles them. Do not load files "
                              "you do not trust; re-run training to get a clean checkpoint") from err
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from err


def _culprit(err: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names the forbidden global (e.g. `GLOBAL posix.system`)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or ["unsupported content"])[0][:200]


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load `path`, or its `.prev.pt` when `path` is absent, truncated or corrupt.

    Raises:
        CheckpointError: neither loads; the message names both files.
    """
    path = Path(path)
    previous = previous_path(path)
    errors = []
    for candidate in (path, previous):
        if not candidate.exists():
            errors.append(f"{candidate}: absent")
            continue
        try:
            state = _load_one(candidate)
        except CheckpointError as err:
            log.error("%s; trying the previous checkpoint %s", err, previous)
            errors.append(str(err))
            continue
        if candidate == previous:
            log.warning("%s: using the previous good checkpoint %s", path, previous)
        return state
    raise CheckpointError("no loadable checkpoint: " + "; ".join(errors))


def rng_state() -> dict:
    """Every RNG a run draws from (Python, numpy global, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Settings a resumed run may change: where things are and how fast they run, not what is trained.
RESUME_MAY_CHANGE = ("resume", "device", "preload", "num_workers", "allow_writing_cache", "cache", "out", "cache_location",
                     "resolved_device", "cache_fingerprints",   # the fingerprints are checked on their own
                     "resume_changes")
# Settings a resumed run applies and records in config.yaml's resume_changes (train longer: more epochs).
RESUME_MAY_APPLY = ("training.max_epochs",)


def changed_settings(started: dict, now: dict) -> list[str]:
    """`key: old -> new` for every setting (dotted key) a resumed run changes, except RESUME_MAY_CHANGE
    (RESUME_MAY_APPLY ones included: the caller applies and records those, refuses the rest).

    `started` is the run's config.yaml, `now` the resolved config of the resuming command (both nested
    plain dicts, tuples as lists)."""
    def flat(nested: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in nested.items():
            if isinstance(value, dict) and key != "cache_fingerprints":
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    old, new = flat(started), flat(now)   # a key only one side knows (a setting added or removed since) is no change
    return [f"{key}: {old[key]} -> {new[key]}" for key in sorted(old.keys() & new.keys())
            if key not in RESUME_MAY_CHANGE and old[key] != new[key]]
