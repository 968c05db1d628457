"""`mmfer tune`: nested Optuna search over the recipe's hyperparameters, one study per outer fold.

For each outer fold (the run's folds, `--folds`) a study of its own (`mmfer-<fold>` in `<study-dir>/study.db`)
sees only that fold's non-test actors: a trial trains on the fold's training actors and is scored by the
best-epoch validation macro-F1 of its validation actors (`val_f1_macro`; the inner split). The fold's test
score is then that of its best trial (same seeds as `train-fusion --folds k` with that config), so every
outer test score comes from a config chosen without its test actors; their mean ± sample std is the honest
tuned number. In a plain (non-nested) search over folds, fold k's validation actors are fold k+1's test
actors, so the reported test scores would have helped choose the config.

Writes `tune_summary.json` (per outer fold: test_actors, tuning_actors, best_params, test_metrics; mean and
sample std of the outer test scores), `best_config_<fold>.yaml` per outer fold and `best_config.yaml` (the
best inner validation score), each recording the actors it was tuned on (`tuned_on_actors`, which
`train-fusion` checks against its test actors), and `optimization_history.png`. The SQLite study resumes
after a crash and several processes can share it, under the base settings it was started with (a study user
attr; other settings are refused, by name).
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

from mmfer.core.config import ModelConfig, TrainConfig
from mmfer.core.errors import ConfigError
from mmfer.core.overrides import apply_overrides, flatten, to_dict

log = logging.getLogger(__name__)

STUDY_NAME = "mmfer"                # one study per outer fold: mmfer-<fold name>
OBJECTIVE = "val_f1_macro"          # best-epoch validation macro-F1 of a fold (train/cross_validation.py's summary)
MAX_FUSION_LAYERS = 6               # the design guide's depth; LFM2-700M has 16 layers, so every depth here exists
KEEP_TOKEN_CHOICES = (8, 16, 32, 48, 64, 96, 128)   # K, capped at the cache's P patch tokens
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


def run_study(base: TrainConfig, study_dir: str | Path, num_trials: int, *, keep_checkpoints: bool,
              storage_url: str | None) -> dict:
    """Per outer fold, run trials until its study holds `num_trials` finished ones; then write the summary,
    the best configs and the plot. Returns {"num_trials" (finished, all folds), "best_value", "best_trial",
    "best_fold", "best_config", "summary", "test_mean", "test_std", "folds" (tune_summary's entries), "plot"}.
    `storage_url` (see make_storage) lets processes on several machines share the studies' trials."""

    from mmfer.core.cache_facts import read_cache_facts
    from mmfer.core.splits import make_folds, select_folds
    from mmfer.train.dataset import open_cache
    from mmfer.train.metrics import HEADLINE, STD_LABEL, aggregate_folds

    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    facts = read_cache_facts(base.cache)   # the study's one read of the store; every trial's train reuses it
    cache = open_cache(facts, use_video=base.model.uses_video, use_audio=base.model.uses_audio,
                       video_entry=base.video_entry, audio_entry=base.audio_entry)
    protocol = facts.protocol(base.split.protocol)
    folds = make_folds(protocol, num_val_actors=base.split.num_val_actors, fold_file=base.split.fold_file,
                       all_actors=sorted(int(a) for a in cache.clips["actor"].unique()), clips=cache.clips,
                       num_folds=base.split.num_folds, val_fraction=base.split.val_fraction,
                       val_seed=base.split.val_seed)
    storage = make_storage(storage_url, study_dir)
    entries, studies = [], []
    for fold in select_folds(folds, base.folds, protocol=protocol):
        study, entry = tune_fold(base, fold, study_dir, num_trials, storage, facts,
                                 num_patches=cache.video_shape[1], keep_checkpoints=keep_checkpoints)
        studies.append(study)
        if entry is not None:
            entries.append(entry)
    finished = sum(e["num_trials"] for e in entries)
    result = {"num_trials": finished, "best_value": None, "best_trial": None, "best_fold": None, "best_config": None,
              "summary": None, "test_mean": None, "test_std": None, "folds": entries,
              "plot": str(plot_history(studies, study_dir / "optimization_history.png"))}
    if not entries:
        log.warning("tune: no trial completed (all pruned or failed); no best_config.yaml written")
        return result
    test_mean, test_std = aggregate_folds([e["test_metrics"] for e in entries], HEADLINE)
    best = max(entries, key=lambda e: e["best_value"])
    path = write_best_config(base, best["best_params"], study_dir / "best_config.yaml", best["best_value"],
                             best["best_trial"], best["num_trials"], tuned_on=best["tuning_actors"], fold=best["fold"])
    summary = {"objective": f"{OBJECTIVE}: best-epoch macro-F1 of each outer fold's own validation actors",
               "nested": "one study per outer fold; its trials train and validate on that fold's non-test actors",
               "num_trials_per_fold": num_trials, "folds": entries, "test_mean": test_mean, "test_std": test_std,
               "std_kind": STD_LABEL.replace("folds", "outer folds"), "best_config": str(path), "best_fold": best["fold"]}
    (study_dir / "tune_summary.json").write_text(json.dumps(summary, indent=2))
    result.update(best_value=best["best_value"], best_trial=best["best_trial"], best_fold=best["fold"],
                  best_config=str(path), summary=str(study_dir / "tune_summary.json"), test_mean=test_mean,
                  test_std=test_std)
    return result


def make_storage(url: str | None, study_dir: Path):
    """The Optuna storage: SQLite <study_dir>/study.db (None), an RDB URL (`scheme://...`, e.g. PostgreSQL
    for several machines), or else a journal file path (Optuna's JournalFileBackend, on a shared filesystem).
    RDB storages retry a trial whose process stopped sending heartbeats; the journal has no heartbeats."""
    import optuna

    if url is not None and "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(url)))
    return optuna.storages.RDBStorage(
        url or f"sqlite:///{(study_dir / 'study.db').resolve()}", heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))


def tune_fold(base: TrainConfig, fold, study_dir: Path, num_trials: int, storage, facts, *, num_patches: int,
              keep_checkpoints: bool) -> tuple:
    """One outer fold's study: trials train on `fold`'s training actors (the protocol's fold `fold.number`)
    and are scored on its validation actors; `facts` is the cache as the study read it (core/cache_facts.py).
    Returns (study, tune_summary entry or None when no trial completed)."""
    import optuna
    from optuna.trial import TrialState

    from mmfer.train.cross_validation import train
    from mmfer.train.metrics import HEADLINE

    number = fold.number

    def trial_dir(n: int) -> Path:
        return study_dir / "trials" / fold.name / f"{n:04d}"

    def objective(trial) -> float:
        cfg = apply_overrides(base, suggest(trial, base.model, num_patches))
        out = trial_dir(trial.number)
        if out.exists():   # left by a study.db that was deleted: trial numbers restart at 0
            shutil.rmtree(out)
        summary = train(dataclasses.replace(cfg, folds=str(number), out=str(out)), facts)
        if not keep_checkpoints:
            shutil.rmtree(out / fold.name / "checkpoints", ignore_errors=True)
        return summary["folds"][fold.name][OBJECTIVE]   # validation actors only; test metrics are not read here

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    study = optuna.create_study(storage=storage, study_name=f"{STUDY_NAME}-{fold.name}", direction="maximize",
                                load_if_exists=True)
    check_base(study, base, study_dir)
    done = len(study.get_trials(deepcopy=False, states=finished))
    # a fresh sampler seed per session, so a resumed study does not replay its first random trials
    study.sampler = optuna.samplers.TPESampler(seed=base.seed + number * 1000 + len(study.trials))
    if done < num_trials:
        log.info("tune %s: %d of %d trials finished; running the rest in %s", fold.name, done, num_trials, study_dir)
        study.optimize(objective, n_trials=num_trials - done,
                       callbacks=[optuna.study.MaxTrialsCallback(num_trials, states=finished)])
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return study, None
    best = study.best_trial
    # the outer test score: the best trial's own run (the config tuned without this fold's test actors),
    # read only now that the choice is made; retrained when its folder is gone
    summary_path = trial_dir(best.number) / "summary.json"
    if summary_path.is_file():
        fold_summary = json.loads(summary_path.read_text())
    else:
        fold_summary = train(dataclasses.replace(apply_overrides(base, best.params), folds=str(number),
                                                 out=str(study_dir / "outer" / fold.name), resume=True), facts)
    test_metrics = {k: fold_summary["folds"][fold.name][k] for k in HEADLINE}
    tuning_actors = sorted(set(fold.train_actors) | set(fold.val_actors))
    config = write_best_config(base, best.params, study_dir / f"best_config_{fold.name}.yaml", best.value, best.number,
                               len(study.get_trials(deepcopy=False, states=finished)), tuned_on=tuning_actors,
                               fold=fold.name)
    return study, {"fold": fold.name, "test_actors": list(fold.test_actors), "tuning_actors": tuning_actors,
                   "inner_train_actors": list(fold.train_actors), "inner_val_actors": list(fold.val_actors),
                   "num_trials": len(study.get_trials(deepcopy=False, states=finished)), "best_trial": best.number,
                   "best_value": best.value, "best_params": best.params, "best_config": str(config),
                   "test_metrics": test_metrics}


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


def write_best_config(base: TrainConfig, params: dict, path: Path, value: float, number: int, num_trials: int, *,
                      tuned_on: list[int], fold: str) -> Path:
    """The base config plus a trial's values, as nested YAML of the fields that differ from the defaults
    (out, folds and resume left out) and `tuned_on_actors`, with a header giving the command and the score."""
    cfg = dataclasses.replace(apply_overrides(base, params), tuned_on_actors=",".join(map(str, tuned_on)))
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
    header = (f"# mmfer tune ({fold}'s study): best of {num_trials} trial(s) is trial {number}, validation macro-F1 "
              f"{value:.4f}\n# tuned on actors {tuned_on} (training and validation actors of {fold}); a run that tests "
              f"any of them is marked tuned_on_test_actors\n"
              f"# train-fusion --config {path.name} --out runs/tuned\n")
    path.write_text(header + yaml.safe_dump(nested, sort_keys=False))
    return path


def plot_history(studies: list, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = history_figure(studies)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def history_figure(studies: list):
    """Objective per trial and the running best, one colour per outer fold's study; whole trial numbers on x."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, study in enumerate(studies):
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        name = study.study_name.removeprefix(f"{STUDY_NAME}-")
        ax.scatter([t.number for t in complete], [t.value for t in complete], color=f"C{i}", label=name, zorder=3)
        best, xs, ys = -math.inf, [], []
        for t in complete:
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color=f"C{i}", alpha=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # trial numbers are whole: no 0.5 ticks
    ax.set_xlabel("trial")
    ax.set_ylabel("validation macro-F1 (inner split)")
    ax.set_title("optuna studies per outer fold (line: best so far)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
