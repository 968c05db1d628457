"""`mmfer tune`: the command half of the Optuna study (train/studies/tune.py holds the study).

Flags come from TuneConfig (the study's own settings) and TrainConfig (the base every trial changes);
`--config` and key=value overrides apply to the base.
"""

from __future__ import annotations

import argparse

from mmfer.pipeline.flags import TRAIN_ALIASES, add_config_flags, resolve_config
from mmfer.core.config import TrainConfig
from mmfer.pipeline.command_config import TuneConfig
from mmfer.core.errors import ConfigError

STUDY = "study:"   # argparse dest prefix of TuneConfig's flags


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Nested Optuna search over learning rates, weight decay, dropout, mixup, loss weights, LFM2 "
                          "depth and tokens kept: one study per outer fold, whose trials see only that fold's non-test "
                          "actors (objective: its validation macro-F1); the fold's test score comes from its best "
                          "trial. Writes tune_summary.json (mean ± sample std of the outer test scores) and best "
                          "configs that record the actors they were tuned on. The SQLite study resumes and can be "
                          "shared, with the base settings it was started with (other settings are refused, by name).")
    add_config_flags(parser, TuneConfig, prefix=STUDY, layered=False)
    add_config_flags(parser, TrainConfig, TRAIN_ALIASES, skip=("out", "resume", "pretrain", "tuned_on_actors"))


def cmd_tune(args: argparse.Namespace) -> int:
    from mmfer.train.studies.tune import run_study  # here: building the parser loads no torch or optuna

    study: TuneConfig = resolve_config(TuneConfig, args, prefix=STUDY, layered=False)
    if study.trials < 1:
        raise ConfigError("tune needs --trials N (N >= 1): the finished trials the study should hold")
    base = resolve_config(TrainConfig, args)
    result = run_study(base, study.study_dir, study.trials, keep_checkpoints=study.keep_checkpoints,
                       storage_url=study.storage)
    if result["best_config"]:
        for entry in result["folds"]:
            print(f"{entry['fold']}: tuned on actors {entry['tuning_actors']}, best trial {entry['best_trial']} "
                  f"(validation macro-F1 {entry['best_value']:.4f}), test actors {entry['test_actors']}: "
                  f"macro-F1 {entry['test_metrics']['f1_macro']:.4f}")
        std = result["test_std"]["f1_macro"]
        print(f"nested test macro-F1 over {len(result['folds'])} outer fold(s): {result['test_mean']['f1_macro']:.4f} ± "
              + ("n/a" if std is None else f"{std:.4f}") + " (sample std)\n"
              f"wrote {result['summary']}, {result['best_config']} (tuned on {result['best_fold']}'s non-test actors) "
              f"and {result['plot']}")
    else:
        print(f"no trial completed ({result['num_trials']} finished); wrote {result['plot']}")
    return 0
