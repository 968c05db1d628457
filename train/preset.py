"""Named presets: `--preset tiny` applies TINY_TRAIN_OVERRIDES (pipeline/config.py) to a TrainConfig.

A preset only changes fields still at their default, so an explicit value (CLI, YAML) always wins.
"""

from __future__ import annotations

from mmfer.pipeline.config import TINY_TRAIN_OVERRIDES, TrainConfig
from mmfer.pipeline.overrides import apply_overrides, flatten, to_dict


def resolve_preset(cfg: TrainConfig) -> TrainConfig:
    """--preset tiny: apply TINY_TRAIN_OVERRIDES to fields still at their default (explicit values win)."""
    if cfg.preset != "tiny":
        return cfg
    current, defaults = flatten(to_dict(cfg)), flatten(to_dict(TrainConfig()))
    return apply_overrides(cfg, {k: v for k, v in TINY_TRAIN_OVERRIDES.items() if current[k] == defaults[k]})
