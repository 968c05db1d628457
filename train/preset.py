"""Presets for configs built in code: `resolve_preset(TrainConfig(preset="tiny", ...))`.

The CLI applies the preset itself, before the user's values (pipeline/cli.py `resolve_config`); here,
in code, a field still equal to its full-size default counts as unset and takes the preset's value.
"""

from __future__ import annotations

from mmfer.pipeline.config import TINY_TRAIN_OVERRIDES, TrainConfig
from mmfer.pipeline.overrides import apply_overrides, flatten, to_dict


def resolve_preset(cfg: TrainConfig) -> TrainConfig:
    """--preset tiny: apply TINY_TRAIN_OVERRIDES to the fields still at their full-size default."""
    if cfg.preset != "tiny":
        return cfg
    current, defaults = flatten(to_dict(cfg)), flatten(to_dict(TrainConfig()))
    return apply_overrides(cfg, {k: v for k, v in TINY_TRAIN_OVERRIDES.items() if current[k] == defaults[k]})
