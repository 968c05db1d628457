"""`train(cfg)`: stage-2 training from the feature store, every chosen fold, read top to bottom.

Read the store once (core/cache_facts.py), settle the config from it, build the folds of the protocol and
check them all, build the data, then train each fold (train/fold.py) and write the run folder's predictions,
confusion matrix and summary. Under torchrun every rank runs it; only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mmfer.core.cache_facts import CacheFacts, read_cache_facts_if_any
from mmfer.core.config import TrainConfig
from mmfer.core.device import resolve_device
from mmfer.core.distributed import World, barrier, current_world, device_for_rank, process_group
from mmfer.core.errors import BadInputError, ConfigError
from mmfer.core.paths import record_path
from mmfer.core.splits import (Fold, assign_parts, check_no_leakage, check_validation, describe_protocol, make_folds,
                               runnable_folds, select_folds, validation_counts)
from mmfer.core.store import StoreError, writer_lock_holder
from mmfer.train.branch_weights import branch_path
from mmfer.train.checkpoint import RESUME_MAY_APPLY, changed_settings
from mmfer.train.curriculum import check_difficulty, load_difficulty
from mmfer.train.dataset import (ClipDataset, EpochSampler, apply_thread_budget, make_loader, open_cache,
                                 should_preload)
from mmfer.train.fold import RunContext, derive_seed, train_fold
from mmfer.train.metrics import HEADLINE, aggregate_folds, per_fold_means, seed_std_label
from mmfer.train.report import build_summary, write_config, write_confusion, write_predictions, write_summary
from mmfer.train.steps import autocast_dtype, dtype_name
from mmfer.train.studies.stats import mean_std_ci

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, facts: CacheFacts | None = None) -> dict:
    """Train and test every selected fold; write the run folder `cfg.out`; return summary.json's content.
    `facts`: cfg.cache as the command already read it (None: read here, once).

    Under torchrun every rank calls this: DDP over the ranks, evaluation gathered by clip id, and only
    rank 0 writes the run folder (the others return the same summary)."""
    world = current_world()
    device = device_for_rank(resolve_device(cfg.device), world)
    with process_group(device.type):
        return train_on(cfg, device, world, facts)


def train_on(cfg: TrainConfig, device: torch.device, world: World, facts: CacheFacts | None = None) -> dict:
    """`train` on one rank of `world` (rank 0 of 1 alone), inside its process group."""
    started = time.time()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out}: --out is a file, not a folder; give a folder for the run (created if absent)")
    if not cfg.resume and (any(out.glob("*/checkpoints/last*.pt")) or (out / "summary.json").exists()):
        raise FileExistsError(f"{out}: holds a previous run; pass --resume to continue it or choose another --out")
    seed_everything(cfg.seed)
    if cfg.pretrain != "none":   # stage 1 trains one branch alone with its own classifier
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, variant=cfg.pretrain))
    use_audio, use_video = cfg.model.uses_audio, cfg.model.uses_video
    facts = facts if facts is not None else read_cache_facts_if_any(cfg.cache)   # the one read of the store
    if facts is not None:   # C from the store's label names, split.protocol auto resolved (no store: open_cache says)
        cfg = facts.settle(cfg)
    holder = writer_lock_holder(cfg.cache)
    if holder and not cfg.allow_writing_cache:
        raise StoreError(f"{cfg.cache}: an extract is still writing this store ({holder}); wait for it to finish, "
                         "or pass --allow-writing-cache to train on the clips done so far")
    if holder:
        log.warning("%s: an extract is still writing this store (%s); training on the clips done so far", cfg.cache, holder)
    expected, resume_changes = None, []
    if cfg.resume and (out / "config.yaml").exists():   # a resumed run must read the features it started on
        started_with = yaml.safe_load((out / "config.yaml").read_text()) or {}
        changed = changed_settings(started_with, json.loads(json.dumps(dataclasses.asdict(cfg))))
        refused = [c for c in changed if c.split(":")[0] not in RESUME_MAY_APPLY]
        if refused:
            raise ConfigError(f"{out / 'config.yaml'}: --resume continues the run with the settings it started with, "
                              f"and this command changes {len(refused)}: {'; '.join(refused)}; drop the changes "
                              "(or set them back) to resume, or start a new --out")
        resume_changes = started_with.get("resume_changes", []) + changed
        for change in changed:
            log.warning("%s: resumed with %s (recorded in config.yaml resume_changes)", out, change)
        expected = started_with.get("cache_fingerprints")
    cache = open_cache(facts if facts is not None else cfg.cache, use_video=use_video, use_audio=use_audio,
                       video_entry=cfg.video_entry, audio_entry=cfg.audio_entry, expected=expected)
    if cfg.training.view_sampling != "clean" and cache.num_views == 0:
        raise ConfigError(f"{cfg.cache}: training.view_sampling={cfg.training.view_sampling} reads augmented views, and "
                          "this cache has none; extract with `mmfer extract --views K` (into a new --out), or set "
                          "training.view_sampling=clean")
    folds, skipped, difficulty = checked_folds(cfg, cache)
    log.info("device %s, torch %s, encoders %s", device, torch.__version__, cache.encoders)
    tuned_on_test = tuned_on_test_actors(cfg, folds)
    barrier()   # every rank has read --out (previous run, config.yaml) before rank 0 writes to it
    t = cfg.training
    distributed = {"world_size": world.world_size, "per_rank_batch": t.batch_size,
                   "accumulation": t.gradient_accumulation_steps,
                   "global_batch": t.batch_size * world.world_size * t.gradient_accumulation_steps}
    resolved = {**dataclasses.asdict(cfg), "resolved_device": str(device),
                "amp_dtype": dtype_name(autocast_dtype(device, cfg.training.mixed_precision)),
                "cache_fingerprints": {"video": cache.video_fingerprint, "audio": cache.audio_fingerprint},
                "label_names": list(cache.label_names),
                "cache_location": record_path(cfg.cache, out),   # found again after the run folder moves (core/paths.py)
                "distributed": distributed, **({"resume_changes": resume_changes} if resume_changes else {})}
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)   # only now: a refused command leaves no empty --out behind
        write_config(out, resolved)
    if world.is_distributed:
        log.info("rank %d of %d on %s; global batch %d (per-rank batch %d x %d ranks x accumulation %d)", world.rank,
                 world.world_size, device, distributed["global_batch"], t.batch_size, world.world_size,
                 t.gradient_accumulation_steps)

    preload = should_preload(cfg.preload, cache.bytes_per_clip * len(cache.clips))
    dataset = ClipDataset(cache, list(cache.clips["clip_id"]), preload=preload)
    num_workers = 0 if preload else cfg.num_workers   # preloaded clips are read in-process (a thread prefetches)
    sampler = EpochSampler()
    loader = make_loader(dataset, sampler, batch_size=cfg.training.batch_size, num_workers=num_workers, seed=cfg.seed,
                         pin_memory=device.type == "cuda")
    apply_thread_budget(cfg.compute_threads, num_workers)

    run = RunContext(cfg, out, cache, dataset, sampler, loader, device, world, resolved,
                     difficulty.confidence if difficulty is not None else None)
    fold_metrics, frames, timings, trained, fold_keys = {}, [], [], [], []
    seeds = cfg.seed_list
    for seed in seeds:   # --seeds: every fold once per seed, each in its own folder (<fold>-seed<S>)
        seed_run = run if len(seeds) == 1 else dataclasses.replace(run, cfg=dataclasses.replace(cfg, seed=seed))
        for base in folds:   # seeds follow the fold's protocol number, not its position
            fold = base if len(seeds) == 1 else dataclasses.replace(base, name=f"{base.name}-seed{seed}")
            first = not trained
            metrics, frame, epoch_times = train_fold(seed_run, fold, disk_estimate_folds=len(folds) * len(seeds) if first else 0)
            fold_metrics[fold.name], timings = {**metrics, "seed": seed}, timings + epoch_times
            frames.append(frame)
            trained.append((fold, seed))
            fold_keys.append(base.name)

    # mean, std and interval over folds, each fold the mean of its seeds (they share its test clips)
    per_fold = per_fold_means(list(fold_metrics.values()), fold_keys)
    mean, std = aggregate_folds(per_fold)
    mean_last, std_last = aggregate_folds(per_fold_means([m["last_epoch"] for m in fold_metrics.values()], fold_keys))
    confusion = np.sum([m["confusion_matrix"] for m in fold_metrics.values()], axis=0)
    if world.is_main:
        write_predictions(out, frames)
        write_confusion(out, confusion, f"{cfg.model.variant}: test clips of {len(folds)} fold(s)"
                        + (f" x {len(seeds)} seeds" if len(seeds) > 1 else ""),
                        class_names=cache.label_names)
    card = protocol_card(cfg, trained, fold_metrics, clips=cache.clips)
    spread = {k: mean_std_ci([m[k] for m in per_fold]) for k in HEADLINE}
    summary = build_summary([f.as_dict() for f, _ in trained], fold_metrics, mean, std, {
        "seeds": seeds, "std_kind": seed_std_label(len(seeds)),
        "ci95": {k: [v["ci_low"], v["ci_high"]] if v["n"] > 1 else None for k, v in spread.items()},
        "selection": SELECTION_RULE.format(monitor=cfg.training.monitor, tie_break=TIE_BREAKS[cfg.training.tie_break]),
        "protocol_card": card,
        "mean_last_epoch": mean_last, "std_last_epoch": std_last,
        **({"tuned_on_test_actors": tuned_on_test} if tuned_on_test is not None else {}),
        **({"optimistic": optimistic_note(cfg, tuned_on_test)} if tuned_on_test else {}),
        "variant": cfg.model.variant, "device": str(device), "amp_dtype": resolved["amp_dtype"],
        "cache_fingerprints": resolved["cache_fingerprints"], "distributed": distributed,
        **({"skipped_folds": skipped} if skipped else {}),
        "epoch_s_mean": float(np.mean([t for t, _ in timings])) if timings else None,
        "samples_per_s_mean": float(np.mean([s for _, s in timings])) if timings else None,
        "wall_s": time.time() - started})
    if world.is_main:
        write_summary(out, summary)
    barrier()   # the run folder is complete before any rank returns
    log.info("results (%s, test actors of each fold) written to %s", cfg.model.variant, out)   # the CLI prints the table
    return summary


def checked_folds(cfg: TrainConfig, cache) -> tuple[list[Fold], dict[str, str], object]:
    """(the folds to train: the protocol's folds that `--folds` chooses and that can run, restricted to the
    cache's actors; {fold name: why skipped}; the curriculum's difficulty scores or None), once every check
    (leakage, validation size, curriculum and stage-1 branch provenance) passed for every fold.

    Raises:
        ConfigError, LeakageError: before any fold trains.
    """
    all_actors = sorted(int(a) for a in cache.clips["actor"].unique())
    protocol = make_folds(cfg.split.protocol, num_val_actors=cfg.split.num_val_actors, fold_file=cfg.split.fold_file,
                          all_actors=all_actors, clips=cache.clips, num_folds=cfg.split.num_folds,
                          val_fraction=cfg.split.val_fraction, val_seed=cfg.split.val_seed)
    chosen = select_folds(protocol, cfg.folds, protocol=cfg.split.protocol)
    log.info("protocol %s (%d usable clips):\n%s", cfg.split.protocol, len(cache.clips), describe_protocol(cache.clips, chosen))
    runnable, skipped = runnable_folds(cache.clips, chosen, chosen=cfg.folds != "all", cache_path=cfg.cache)
    folds = [fold.restricted_to(all_actors) for fold in runnable]   # summaries and model cards name real actors
    check_validation(cache.clips, folds, allow_small=cfg.split.allow_small_val, cache_path=cfg.cache)
    difficulty = load_difficulty(cfg.training.curriculum) if cfg.training.curriculum else None
    for fold in folds:   # every check raises LeakageError before any fold trains
        check_no_leakage(cache.clips, fold)
        if difficulty is not None:
            part = assign_parts(cache.clips, fold)
            check_difficulty(difficulty, fold, list(cache.clips["clip_id"][part == "train"]))
        for name, source in (("audio", cfg.audio_branch), ("visual", cfg.visual_branch)):
            if source:
                branch_path(source, name, fold)
    return folds, skipped, difficulty


def tuned_on_test_actors(cfg: TrainConfig, folds: list[Fold]) -> list[int] | None:
    """The run's test actors among those its config was tuned on (None: not a tuned config); warns if any."""
    if cfg.tuned_on_actors is None:
        return None
    tuned = {int(a) for a in cfg.tuned_on_actors.split(",")}
    overlap = sorted(tuned & {a for fold in folds for a in fold.test_actors})
    if overlap:
        log.warning("this config was tuned on actors %s, and this run tests %s of them: their test scores helped "
                    "choose it (optimistic); report the nested score of `mmfer tune` (tune_summary.json) instead, "
                    "or use the best_config_<fold>.yaml of each fold with --folds <fold>", sorted(tuned), overlap)
    return overlap


def optimistic_note(cfg: TrainConfig, overlap: list[int]) -> str:
    """summary.json's `optimistic` mark (printed under the results table and in the model card)."""
    return (f"optimistic: this config was tuned on actors {cfg.tuned_on_actors}, and this run tests {overlap} of them "
            "(their test scores helped choose it); report the nested score of `mmfer tune` (tune_summary.json)")


SELECTION_RULE = ("each fold's test score is that of the epoch with the best validation {monitor} ({tie_break}; "
                  "validation actors only, test actors never select); the last epoch's test score is reported beside it")
TIE_BREAKS = {"val_nll": "ties broken by the lower validation cross-entropy", "none": "ties kept by the earliest epoch"}


def protocol_card(cfg: TrainConfig, trained: list[tuple[Fold, int]], fold_metrics: dict, *, clips) -> list[dict]:
    """Per trained (fold, seed): the actors of each part, the validation clips per class (of the clip table
    `clips`), the seeds, and what selected the reported epoch."""
    t = cfg.training
    return [{"fold": fold.name, "fold_number": fold.number, "test_actors": list(fold.test_actors),
             "val_actors": list(fold.val_actors), "train_actors": list(fold.train_actors),
             "val_clips_per_class": validation_counts(clips, fold),
             "seed": seed, "init_seed": derive_seed(seed, fold.number, -1),
             "epoch_seeds": f"derive_seed({seed}, {fold.number}, epoch, rank) for dropout; numpy [{seed}, "
                            f"{fold.number}, epoch] for shuffling, [{seed}, {fold.number}, epoch, rank] for mixup "
                            "and augmentation",
             "selection": f"best validation {t.monitor} ({TIE_BREAKS[t.tie_break]}; min delta {t.early_stopping_min_delta}, "
                          f"early-stopping patience {t.early_stopping_patience}, max {t.max_epochs} epochs)",
             "selected_epoch": fold_metrics[fold.name]["best_epoch"], "epochs_run": fold_metrics[fold.name]["epochs_run"]}
            for fold, seed in trained]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
