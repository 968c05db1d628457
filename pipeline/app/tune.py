"""`mmfer tune`: the command half of the Optuna study (train/studies/tune.py holds the study).

Flags come from TuneConfig (the study's own settings) and TrainConfig (the base every trial changes);
`--config` and key=value overrides apply to the base.
"""

from __future__ import annotations

import argparse

from mmfer.pipeline.app.flags import TRAIN_ALIASES, add_config_flags, resolve_config
from mmfer.pipeline.config import TrainConfig, TuneConfig
from mmfer.pipeline.errors import ConfigError

STUDY = "study:"   # argparse dest prefix of TuneConfig's flags


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Optuna search over learning rates, weight decay, dropout, mixup, loss weights, LFM2 depth "
                          "and tokens kept; objective = mean validation macro-F1 over the folds (never the test "
                          "actors), MedianPruner after each fold. The SQLite study resumes and can be shared, "
                          "with the base settings it was started with (other settings are refused, by name).")
    add_config_flags(parser, TuneConfig, prefix=STUDY, layered=False)
    add_config_flags(parser, TrainConfig, TRAIN_ALIASES, skip=("out", "resume", "pretrain"))


def cmd_tune(args: argparse.Namespace) -> int:
    from mmfer.train.studies.tune import run_study  # here: building the parser loads no torch or optuna

    study: TuneConfig = resolve_config(TuneConfig, args, prefix=STUDY, layered=False)
    if study.trials < 1:
        raise ConfigError("tune needs --trials N (N >= 1): the finished trials the study should hold")
    base = resolve_config(TrainConfig, args)
    result = run_study(base, study.study_dir, study.trials, keep_checkpoints=study.keep_checkpoints)
    if result["best_config"]:
        print(f"best: trial {result['best_trial']}, mean validation macro-F1 {result['best_value']:.4f} "
              f"({result['num_trials']} trials)\nwrote {result['best_config']} and {result['plot']}")
    else:
        print(f"no trial completed ({result['num_trials']} finished); wrote {result['plot']}")
    return 0
