"""`mmfer tune`: Optuna search over the recipe's hyperparameters; objective = mean validation macro-F1 over folds.

A trial trains the selected folds one at a time (`train()` with `folds=k`) and reads each fold's best-epoch
validation macro-F1 (`val_f1_macro` in summary.json: validation actors only, test metrics are never read);
the running mean is reported after each fold so MedianPruner can stop a poor trial early. The study lives in
`<study-dir>/study.db` (SQLite): it resumes after a crash and several processes can share it, under the
base settings it was started with (a study user attr; others are refused). Writes
`best_config.yaml` (accepted by `train-fusion --config`) and `optimization_history.png`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import yaml

from mmfer.pipeline.config import ModelConfig, TrainConfig
from mmfer.pipeline.errors import ConfigError
from mmfer.pipeline.overrides import apply_overrides, flatten, to_dict

log = logging.getLogger(__name__)

STUDY_NAME = "mmfer"
OBJECTIVE = "val_f1_macro"          # best-epoch validation macro-F1 of a fold (train/loop.py's summary)
MAX_FUSION_LAYERS = 6               # the guide's depth; LFM2-700M has 16 layers, so every depth here exists
KEEP_TOKEN_CHOICES = (8, 16, 32, 48, 64, 96, 128)   # K, capped at the cache's P patch tokens
PRUNER_STARTUP_TRIALS = 4           # MedianPruner: no pruning until this many trials finished
PRUNER_WARMUP_FOLDS = 1             # ... and never on a trial's first fold
BASE_HASH_ATTR, BASE_CONFIG_ATTR = "base_config_sha256", "base_config"   # study user attrs (check_base)
HEARTBEAT_S, GRACE_S = 60, 180      # a trial silent this long (a killed process) is marked failed and retried


def suggest(trial, model: ModelConfig, num_patches: int) -> dict:
    """The search space, as dotted TrainConfig overrides; parts the variant lacks are not searched."""
    out = {
        "training.lr": trial.suggest_float("training.lr", 1e-5, 1e-3, log=True),
        "training.lr_branches": trial.suggest_float("training.lr_branches", 1e-6, 1e-3, log=True),
        "training.weight_decay": trial.suggest_float("training.weight_decay", 1e-4, 0.1, log=True),
        "training.dropout": trial.suggest_float("training.dropout", 0.0, 0.3),
        "training.mixup_alpha": trial.suggest_float("training.mixup_alpha", 0.0, 0.4),
    }
    if model.is_fused:
        out["training.loss_weight_audio"] = trial.suggest_float("training.loss_weight_audio", 0.0, 0.5)
        out["training.loss_weight_visual"] = trial.suggest_float("training.loss_weight_visual", 0.0, 0.5)
        out["training.contrastive_weight"] = trial.suggest_float("training.contrastive_weight", 0.0, 0.3)
    if model.uses_lfm2:
        out["training.lr_fusion"] = trial.suggest_float("training.lr_fusion", 1e-6, 1e-3, log=True)
        out["model.fusion.num_layers"] = trial.suggest_int("model.fusion.num_layers", 1, MAX_FUSION_LAYERS)
    if model.uses_video:
        choices = [k for k in KEEP_TOKEN_CHOICES if k <= num_patches] or [num_patches]
        out["model.visual.num_keep_tokens"] = trial.suggest_categorical("model.visual.num_keep_tokens", choices)
    return out


def run_study(base: TrainConfig, study_dir: str | Path, num_trials: int, *, keep_checkpoints: bool = False) -> dict:
    """Run trials until the study holds `num_trials` finished (complete or pruned) trials, then write the best
    config and the history plot. Returns {"num_trials", "best_value", "best_trial", "best_config", "plot"}."""
    import optuna
    from optuna.trial import TrialState

    from mmfer.pipeline.splits import make_folds
    from mmfer.train.dataset import open_cache
    from mmfer.train.loop import train

    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    cache = open_cache(base.cache, use_video=base.model.uses_video, use_audio=base.model.uses_audio,
                       video_entry=base.video_entry, audio_entry=base.audio_entry)
    folds = make_folds(base.split.protocol, num_val_actors=base.split.num_val_actors, fold_file=base.split.fold_file,
                       all_actors=sorted(int(a) for a in cache.clips["actor"].unique()))
    fold_numbers = list(range(1, len(folds) + 1)) if base.folds == "all" else [int(n) for n in base.folds.split(",")]

    def objective(trial) -> float:
        cfg = apply_overrides(base, suggest(trial, base.model, cache.video_shape[1]))
        trial_dir = study_dir / "trials" / f"{trial.number:04d}"
        if trial_dir.exists():   # left by a study.db that was deleted: trial numbers restart at 0
            shutil.rmtree(trial_dir)
        scores = []
        for step, k in enumerate(fold_numbers):
            summary = train(dataclasses.replace(cfg, folds=str(k), out=str(trial_dir / f"fold{k}")))
            (fold_metrics,) = summary["folds"].values()
            scores.append(fold_metrics[OBJECTIVE])
            if not keep_checkpoints:
                shutil.rmtree(trial_dir / f"fold{k}" / folds[k - 1].name / "checkpoints", ignore_errors=True)
            trial.report(sum(scores) / len(scores), step)
            if trial.should_prune():
                log.info("trial %d pruned after %d fold(s): mean %s %.4f", trial.number, step + 1, OBJECTIVE,
                         sum(scores) / len(scores))
                raise optuna.TrialPruned()
        return sum(scores) / len(scores)

    storage = optuna.storages.RDBStorage(
        f"sqlite:///{(study_dir / 'study.db').resolve()}", heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS,
                                                                   n_warmup_steps=PRUNER_WARMUP_FOLDS))
    check_base(study, base, study_dir)
    done = len(study.get_trials(deepcopy=False, states=finished))
    # a fresh sampler seed per session, so a resumed study does not replay its first random trials
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + len(study.trials))
    if done < num_trials:
        log.info("tune: %d of %d trials finished; running the rest in %s", done, num_trials, study_dir)
        study.optimize(objective, n_trials=num_trials - done,
                       callbacks=[optuna.study.MaxTrialsCallback(num_trials, states=finished)])
    result = {"num_trials": len(study.get_trials(deepcopy=False, states=finished)), "best_value": None,
              "best_trial": None, "best_config": None, "plot": str(plot_history(study, study_dir / "optimization_history.png"))}
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        path = write_best_config(base, best.params, study_dir / "best_config.yaml", best.value, best.number,
                                 result["num_trials"])
        result.update(best_value=best.value, best_trial=best.number, best_config=str(path))
    else:
        log.warning("tune: no trial completed (all pruned or failed); no best_config.yaml written")
    return result


def base_settings(base: TrainConfig) -> dict:
    """The base config every trial starts from, flat and JSON-plain (out and resume say nothing about a trial)."""
    flat = {k: v for k, v in flatten(to_dict(base)).items() if k not in ("out", "resume")}
    return json.loads(json.dumps(flat, default=str))


def check_base(study, base: TrainConfig, study_dir: Path) -> None:
    """A study's trials are comparable only under one base config: the first session records it (and its
    SHA-256) as study user attrs; a later session with other base settings is refused, naming them.

    Raises:
        ConfigError: the study was run with other base settings.
    """
    settings = base_settings(base)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    recorded = study.user_attrs.get(BASE_HASH_ATTR)
    if recorded is None:
        study.set_user_attr(BASE_HASH_ATTR, digest)
        study.set_user_attr(BASE_CONFIG_ATTR, settings)
        return
    if recorded == digest:
        return
    old = study.user_attrs.get(BASE_CONFIG_ATTR, {})
    changed = [f"{k} {old.get(k, '(unset)')!r} -> {settings.get(k, '(unset)')!r}"
               for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    raise ConfigError(f"{study_dir / 'study.db'}: this study's trials ran with other base settings "
                      f"({', '.join(changed) or 'unrecorded'}); resume with the same settings, or use a new --study-dir")


def write_best_config(base: TrainConfig, params: dict, path: Path, value: float, number: int, num_trials: int) -> Path:
    """The base config plus the best trial's values, as nested YAML of the fields that differ from the
    defaults (out, folds and resume left out), with a header giving the command and the score."""
    cfg = apply_overrides(base, params)
    current, defaults = flatten(to_dict(cfg)), flatten(to_dict(TrainConfig()))
    nested: dict = {}
    for key, v in current.items():
        if v == defaults[key] or key in ("out", "folds", "resume"):
            continue
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = v
    header = (f"# mmfer tune: best of {num_trials} trial(s) is trial {number}, mean validation macro-F1 {value:.4f}\n"
              f"# (validation actors of each fold; the test actors were not used)\n"
              f"# train-fusion --config {path.name} --out runs/tuned\n")
    path.write_text(header + yaml.safe_dump(nested, sort_keys=False))
    return path


def plot_history(study, path: Path) -> Path:
    """Objective per trial (pruned trials at their last reported mean) and the running best."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(7, 4))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in complete], [t.value for t in complete], label="complete", zorder=3)
    ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               marker="x", color="grey", label="pruned (last mean)", zorder=3)
    best, xs, ys = -math.inf, [], []
    for t in complete:
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("mean validation macro-F1")
    ax.set_title(f"optuna study {study.study_name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
