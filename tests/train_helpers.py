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


def write_folds(path: Path, folds: list[dict] = TWO_FOLDS) -> Path:
    path.write_text(json.dumps(folds))
    return path


def tiny_config(cache: Path, fold_file: Path, out: Path, *, variant: str = "early", epochs: int = 2,
                **overrides) -> TrainConfig:
    """The tiny preset on CPU, early fusion (no LFM2: fastest), `epochs` epochs, no warmup."""
    return train_config_with_preset({
        "cache": str(cache), "out": str(out), "preset": "tiny", "device": "cpu", "seed": 7,
        "split.protocol": "file", "split.fold_file": str(fold_file), "model.visual.num_keep_tokens": 8,
        "model.variant": variant, "training.max_epochs": epochs, "training.warmup_epochs": 0,
        "training.batch_size": 8, **overrides})


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
