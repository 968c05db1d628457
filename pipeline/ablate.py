"""`mmfer ablate`: the command half of the ablation study (train/studies/ablate.py holds the study).

Flags come from AblateConfig (the study's own settings) and TrainConfig (the base every entry changes);
`--config` and key=value overrides apply to the base.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmfer.pipeline.flags import TRAIN_ALIASES, add_config_flags, resolve_config
from mmfer.core.config import TrainConfig
from mmfer.pipeline.command_config import AblateConfig
from mmfer.core.errors import ConfigError

STUDY = "study:"   # argparse dest prefix of AblateConfig's flags


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Ablation study from one cache: every entry x seed trains with the same folds; writes "
                          "ablation.csv/.md/.png with means, 95% CIs and paired differences to the full model. "
                          "Finished entries (same config hash) are skipped.")
    add_config_flags(parser, AblateConfig, prefix=STUDY, layered=False)
    add_config_flags(parser, TrainConfig, TRAIN_ALIASES, skip=("out", "resume", "pretrain", "seeds"))   # the study's --seeds


def cmd_ablate(args: argparse.Namespace) -> int:
    from mmfer.train.studies.ablate import load_entries, run_ablation  # here: building the parser loads no torch

    study: AblateConfig = resolve_config(AblateConfig, args, prefix=STUDY, layered=False)
    base = resolve_config(TrainConfig, args)
    entries, reference = load_entries(study.entries)
    if study.only:
        wanted = [name.strip() for name in study.only.split(",")]
        unknown = sorted(set(wanted) - {e.name for e in entries})
        if unknown:
            raise ConfigError(f"--only: no entries named {unknown}; have {[e.name for e in entries]}")
        entries = [e for e in entries if e.name in wanted]
    devices = [d.strip() for d in study.devices.split(",")] if study.devices else None
    result = run_ablation(base, study.out, entries=entries, reference=reference, num_seeds=study.seeds,
                          keep_checkpoints=study.keep_checkpoints, workers=study.workers, devices=devices)
    print(result["table"])
    print(f"\n{len(result['ran'])} run(s) trained, {len(result['skipped'])} already done; "
          f"wrote {Path(study.out) / 'ablation.csv'}, ablation.md, ablation.png")
    return 0
