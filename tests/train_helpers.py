"""Helpers for the training-protocol tests: a tiny config on a synthetic store and fold files of several folds.

Shared by test modules (a test module never imports another test module).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmfer.core.config import TrainConfig, train_config_with_preset

# Two folds over the synthetic store's 8 actors: fold 2's test actors are fold 1's validation actors.
TWO_FOLDS = [{"name": "fold1", "test_actors": [1, 2], "val_actors": [3, 4]},
             {"name": "fold2", "test_actors": [3, 4], "val_actors": [5, 6]}]


# Training takes every core by default (compute_threads=0). The tests run in two pytest-xdist workers on two cores:
# two processes of two OpenMP threads each spin on each other (measured: ~10x the CPU time of one thread for the
# same tiny run), and the tiny widths gain nothing from a second thread. Tests that train through the CLI pass
# ONE_THREAD_ARG; tests about the thread budget itself set compute_threads as they need.
ONE_THREAD = {"compute_threads": 1}
ONE_THREAD_ARG = "compute_threads=1"


def write_folds(path: Path, folds: list[dict] = TWO_FOLDS) -> Path:
    path.write_text(json.dumps(folds))
    return path


def tiny_settings(cache: Path | None = None, fold_file: Path | None = None, out: Path | None = None, *,
                  variant: str | None = "early", epochs: int = 2, warmup: int = 0, batch_size: int = 8, seed: int = 7,
                  **settings) -> dict:
    """The tests' tiny training settings, as `train_config_with_preset` takes them: the tiny preset on CPU with
    8 visual tokens kept and one compute thread (ONE_THREAD), `epochs` epochs of which `warmup` warm up, batches
    of `batch_size`; with `fold_file` the folds it lists (`split.protocol: file`). `variant=None` keeps the preset's fusion (LFM2); the default,
    early fusion, is the fastest. `settings`: any other keys (dotted, e.g. **{"training.mixup_alpha": 0.4})."""
    base = {"preset": "tiny", "device": "cpu", "seed": seed, "model.visual.num_keep_tokens": 8, **ONE_THREAD,
            "training.max_epochs": epochs, "training.warmup_epochs": warmup, "training.batch_size": batch_size}
    if cache is not None:
        base["cache"] = str(cache)
    if out is not None:
        base["out"] = str(out)
    if fold_file is not None:
        base.update({"split.protocol": "file", "split.fold_file": str(fold_file)})
    if variant is not None:
        base["model.variant"] = variant
    return {**base, **settings}


def tiny_config(cache: Path | None = None, fold_file: Path | None = None, out: Path | None = None,
                **settings) -> TrainConfig:
    """The one tiny training config of the suite: `tiny_settings(...)` made into a TrainConfig."""
    return train_config_with_preset(tiny_settings(cache, fold_file, out, **settings))


def train_recording_inputs(cfg: TrainConfig) -> dict[str, list[dict]]:
    """Train `cfg` and return {'train': [...], 'eval': [...]}: a copy of every batch the fusion model saw, by mode."""
    import torch

    from mmfer.train.loop import train

    seen = {"train": [], "eval": []}

    def hook(module, args):
        if type(module).__name__ == "FusionModel" and args:
            batch = args[0]
            seen["train" if module.training else "eval"].append(
                {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        train(cfg)
    finally:
        handle.remove()
    return seen
