"""Stage-1 branch weights (`--pretrain audio|visual`, loaded by `--audio-branch/--visual-branch`).

`save_branch_weights` writes a branch's tensors as safetensors with its fold's actors in the file's
metadata; `branch_path` finds the file for a fold (a run folder or one file) and refuses it unless it
trained on that fold's training actors only; `load_branch_weights` reads the tensors (never a pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmfer.core.splits import Fold, LeakageError, check_reuse
from mmfer.train.checkpoint import CheckpointError


def branch_path(source: str, name: str, fold: Fold) -> Path:
    """The stage-1 branch file for `fold`: `<run dir>/<fold>/<name>_branch.safetensors`, or a file; checked
    against the split: the protocol stored in the file's metadata must have trained on this fold's
    training actors only (and not selected its epoch on this fold's test actors).

    Raises:
        FileNotFoundError: no such branch file.
        CheckpointError: not a safetensors file.
        LeakageError: no protocol recorded, or one that trained on actors outside this fold's training actors.
    """
    from safetensors import SafetensorError, safe_open
    path = Path(source)
    if path.is_dir():
        path = path / fold.name / f"{name}_branch.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {name} branch weights; run `train-fusion --pretrain {name} --out {source}` first")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except SafetensorError as err:   # e.g. a pickled .pt file: refused, never unpickled
        raise CheckpointError(f"{path}: not a safetensors file of {name} branch weights ({err}); pass the "
                              f"{name}_branch.safetensors that `train-fusion --pretrain {name}` wrote") from err
    if "train_actors" not in meta:
        raise LeakageError(f"{path}: records no split (train_actors), so it may have trained on {fold.name}'s test "
                           f"actors; re-run `train-fusion --pretrain {name}` with this run's split")
    check_reuse(fold, source=f"{path} ({name} branch, {meta.get('fold', '?')} of its run)",
                train_actors=json.loads(meta["train_actors"]), val_actors=json.loads(meta.get("val_actors", "[]")))
    return path


def load_branch_weights(path: Path, name: str) -> dict:
    """The tensors of a branch file that `branch_path` found and checked."""
    from safetensors.torch import load_file
    return load_file(str(path))


def save_branch_weights(path: Path, state: dict, fold: Fold) -> None:
    """The branch weights, with the fold's actors in the file's metadata (read by `branch_path`)."""
    from safetensors.torch import save_file
    meta = {"fold": fold.name, **{f"{p}_actors": json.dumps(list(getattr(fold, f"{p}_actors")))
                                  for p in ("train", "val", "test")}}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
