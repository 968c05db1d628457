"""`train(cfg)`: stage-2 training from the feature store, every fold, read top to bottom.

Build the data, then per fold: model, loss, optimizer, schedule; epochs of (mixup, AMP, accumulation,
clipping) with validation, early stopping and checkpoints; test with the best checkpoint. Then the run
folder's predictions, confusion matrix and summary. Each epoch's randomness derives from (seed, fold, epoch):
the shuffle is shared by every rank, mixup, augmentation and dropout also follow the rank (`epoch_streams`),
so `--resume` from an epoch's last checkpoint replays the same run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from mmfer.core.config import TrainConfig, TrainingConfig
from mmfer.core.device import has_native_bf16, resolve_device
from mmfer.core.distributed import (ALONE, World, all_reduce_mean_, all_reduce_sum_, barrier, current_world, device_for_rank,
                                        gather_objects, process_group)
from mmfer.core.errors import BadInputError, ConfigError
from mmfer.core.faults import crash_point
from mmfer.core.progress import Progress
from mmfer.core.labels import store_label_names
from mmfer.core.paths import record_path
from mmfer.core.splits import (Fold, assign_parts, check_no_leakage, check_validation, describe_protocol, make_folds,
                                   resolve_protocol, runnable_folds, validation_counts)
from mmfer.core.store import StoreError, open_store, writer_lock_holder
from mmfer.train.branch_weights import branch_path, load_branch_weights, save_branch_weights
from mmfer.train.checkpoint import (RESUME_MAY_APPLY, best_weights, changed_settings, checkpoint_bytes, load_checkpoint,
                                    previous_path, restore_rng_state, rng_state, save_checkpoint)
from mmfer.train.curriculum import check_difficulty, epoch_subset, load_difficulty
from mmfer.train.dataset import (ClipDataset, EpochSampler, apply_thread_budget, epoch_views, make_loader, open_cache,
                                 prefetch, rank_share, should_preload, to_device)
from mmfer.train.losses import ContrastiveLoss, MultimodalLoss, resolve_class_weights
from mmfer.train.metrics import HEADLINE, aggregate_folds, compute_metrics, mean_nll
from mmfer.train.augment import augment_batch, cutmix_time, is_augmenting
from mmfer.train.mixup import mix_batch, sample_mixup
from mmfer.train.model.normalize import feature_statistics
from mmfer.train.model.builder import build_model, param_groups
from mmfer.train.report import (build_summary, predictions_frame, write_config,
                                write_confusion, write_predictions, write_summary)
from mmfer.train.schedule import EarlyStopping, EpochSchedule, build_optimizer

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> dict:
    """Train and test every selected fold; write the run folder `cfg.out`; return summary.json's content.

    Under torchrun every rank calls this: DDP over the ranks, evaluation gathered by clip id, and only
    rank 0 writes the run folder (the others return the same summary)."""
    world = current_world()
    device = device_for_rank(resolve_device(cfg.device), world)
    with process_group(device.type):
        return train_on(cfg, device, world)


def train_on(cfg: TrainConfig, device: torch.device, world: World) -> dict:
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
    cfg = with_cache_settings(cfg)   # C from the store's label names, split.protocol auto resolved
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
    cache = open_cache(cfg.cache, use_video=use_video, use_audio=use_audio,
                       video_entry=cfg.video_entry, audio_entry=cfg.audio_entry, expected=expected)
    if cfg.training.view_sampling != "clean" and cache.num_views == 0:
        raise ConfigError(f"{cfg.cache}: training.view_sampling={cfg.training.view_sampling} reads augmented views, and "
                          "this cache has none; extract with `mmfer extract --views K` (into a new --out), or set "
                          "training.view_sampling=clean")
    all_actors = sorted(int(a) for a in cache.clips["actor"].unique())
    folds = make_folds(cfg.split.protocol, num_val_actors=cfg.split.num_val_actors, fold_file=cfg.split.fold_file,
                       all_actors=all_actors, clips=cache.clips, num_folds=cfg.split.num_folds,
                       val_fraction=cfg.split.val_fraction, val_seed=cfg.split.val_seed)
    fold_numbers = list(range(1, len(folds) + 1)) if cfg.folds == "all" else [int(n) for n in cfg.folds.split(",")]
    if max(fold_numbers) > len(folds):
        raise ConfigError(f"folds {cfg.folds}: split.protocol {cfg.split.protocol} has {len(folds)} fold(s), "
                          f"numbered 1..{len(folds)}; choose among them or pass --folds all")
    chosen = [folds[n - 1] for n in fold_numbers]
    log.info("protocol %s (%d usable clips):\n%s", cfg.split.protocol, len(cache.clips), describe_protocol(cache.clips, chosen))
    runnable, skipped = runnable_folds(cache.clips, chosen, chosen=cfg.folds != "all", cache_path=cfg.cache)
    fold_numbers = [n for n, fold in zip(fold_numbers, chosen) if fold.name not in skipped]
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
    confidence = difficulty.confidence if difficulty is not None else None

    fold_metrics, frames, timings = {}, [], []
    for fold_number, fold in zip(fold_numbers, folds):   # seeds follow the fold's number, not its position
        metrics, frame, epoch_times = train_fold(cfg, fold, fold_number, out / fold.name, cache, dataset, sampler,
                                                 loader, device, resolved, confidence, world,
                                                 disk_estimate_folds=len(folds) if fold is folds[0] else 0)
        fold_metrics[fold.name], timings = metrics, timings + epoch_times
        frames.append(frame)

    mean, std = aggregate_folds(list(fold_metrics.values()))
    mean_last, std_last = aggregate_folds([m["last_epoch"] for m in fold_metrics.values()])
    confusion = np.sum([m["confusion_matrix"] for m in fold_metrics.values()], axis=0)
    if world.is_main:
        write_predictions(out, frames)
        write_confusion(out, confusion, f"{cfg.model.variant}: test clips of {len(folds)} fold(s)",
                        class_names=cache.label_names)
    card = protocol_card(cfg, folds, fold_numbers, fold_metrics, clips=cache.clips)
    summary = build_summary([f.as_dict() for f in folds], fold_metrics, mean, std, {
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


def with_cache_settings(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with model.num_classes = the number of the cache's label names and split.protocol `auto`
    resolved to the cache's dataset's protocol (both recorded in config.yaml). A cache that is not there
    is left to open_cache to report."""
    try:
        store = open_store(cfg.cache, mode="r")
    except (StoreError, FileNotFoundError):
        return cfg
    names = store_label_names(store.attrs)
    if cfg.model.num_classes != len(names):
        log.info("%s: %d classes (%s); model.num_classes set to %d", cfg.cache, len(names), ", ".join(names), len(names))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(names)))
    weights = cfg.training.class_weights
    if weights not in ("none", "auto") and len(weights.split(",")) != len(names):
        raise ConfigError(f"training.class_weights has {len(weights.split(','))} numbers, but {cfg.cache} has "
                          f"{len(names)} classes ({', '.join(names)}); give one number per class, or auto / none")
    protocol = resolve_protocol(cfg.split.protocol, dataset=store.attrs.get("dataset"), clips=store.clip_table)
    return dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, protocol=protocol))


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


def protocol_card(cfg: TrainConfig, folds: list[Fold], fold_numbers: list[int], fold_metrics: dict, *,
                  clips) -> list[dict]:
    """Per fold: the actors of each part, the validation clips per class (of the clip table `clips`), the
    seeds, and what selected the reported epoch."""
    t = cfg.training
    return [{"fold": fold.name, "fold_number": number, "test_actors": list(fold.test_actors),
             "val_actors": list(fold.val_actors), "train_actors": list(fold.train_actors),
             "val_clips_per_class": validation_counts(clips, fold),
             "seed": cfg.seed, "init_seed": derive_seed(cfg.seed, number, -1),
             "epoch_seeds": f"derive_seed({cfg.seed}, {number}, epoch, rank) for dropout; numpy [{cfg.seed}, {number}, epoch] "
                            f"for shuffling, [{cfg.seed}, {number}, epoch, rank] for mixup and augmentation",
             "selection": f"best validation {t.monitor} ({TIE_BREAKS[t.tie_break]}; min delta {t.early_stopping_min_delta}, "
                          f"early-stopping patience {t.early_stopping_patience}, max {t.max_epochs} epochs)",
             "selected_epoch": fold_metrics[fold.name]["best_epoch"], "epochs_run": fold_metrics[fold.name]["epochs_run"]}
            for fold, number in zip(folds, fold_numbers)]


def train_fold(cfg: TrainConfig, fold, fold_number: int, fold_dir: Path, cache, dataset: ClipDataset,
               sampler: EpochSampler, loader, device: torch.device, resolved: dict, confidence,
               world: World = ALONE, *, disk_estimate_folds: int = 0) -> tuple:
    """One fold: train with validation and checkpoints, then test the best checkpoint.

    Under DDP each rank trains on its share of each epoch (`rank_share`), evaluates a disjoint share of the
    clips and gathers the predictions by clip id; rank 0 alone writes checkpoints (of the unwrapped model,
    so they do not depend on the world size), metrics.jsonl and TensorBoard.

    `disk_estimate_folds` > 0 (the run's first fold): log the checkpoints' disk estimate for that many folds first.
    Returns (test metrics, predictions frame, [(epoch_s, samples_per_s)] of the epochs run now).
    """
    t = cfg.training
    part = assign_parts(cache.clips, fold).to_numpy()
    train_pos, val_pos, test_pos = (np.flatnonzero(part == p) for p in ("train", "val", "test"))
    for name, positions in (("train", train_pos), ("val", val_pos), ("test", test_pos)):
        if len(positions) == 0:   # runnable_folds refused it already; a guard for direct callers
            raise BadInputError(f"{fold.name}: no usable {name} clips in {cache.path}; check the split and the cache")
    if world.is_main:
        (fold_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    last_path, best_path = fold_dir / "checkpoints" / "last.pt", fold_dir / "checkpoints" / "best.pt"

    fit = setup_fold(cfg, cache, dataset, train_pos, device, fold_number=fold_number, fold=fold)
    model, criterion, optimizer, schedule, scaler, amp_dtype = (fit.model, fit.criterion, fit.optimizer, fit.schedule,
                                                                fit.scaler, fit.amp_dtype)
    stopper = EarlyStopping(t.early_stopping_patience, t.early_stopping_min_delta)
    if disk_estimate_folds and world.is_main:
        log_checkpoint_estimate(fold_dir.parent, model, optimizer, disk_estimate_folds)

    start_epoch = 0
    if cfg.resume and (last_path.exists() or previous_path(last_path).exists()):
        state = load_checkpoint(last_path)
        if state["cache_fingerprints"] != resolved["cache_fingerprints"]:
            raise StoreError(f"{last_path}: trained on features {state['cache_fingerprints']}, the cache now gives "
                             f"{resolved['cache_fingerprints']}; pass --video-entry/--audio-entry or start a new --out")
        model.load_state_dict(state["model"])
        criterion.load_state_dict(state["criterion"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        restore_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
        barrier()   # every rank has read the checkpoint before rank 0 trims metrics.jsonl or saves the next
        if world.is_main:
            keep_metrics_lines(fold_dir / "metrics.jsonl", up_to_epoch=state["epoch"])
        log.info("%s: resuming after epoch %d (best %s %.4f at epoch %d)", fold.name, state["epoch"] + 1,
                 t.monitor, stopper.best, stopper.best_epoch + 1)

    ddp = None
    # find_unused_parameters stays on: a batch without audio (video) skips that auxiliary head's loss
    # (train/losses.py), so which parameters get a gradient changes per step and rank (frozen ones DDP leaves out)
    if world.is_distributed:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    from torch.utils.tensorboard import SummaryWriter   # here, so importing loop.py stays light
    writer = SummaryWriter(str(fold_dir / "tb")) if world.is_main else None
    timings = []
    epochs = Progress(t.max_epochs - start_epoch, desc=fold.name, unit="epoch", logger=log, with_bar=False)
    for epoch in range(start_epoch, t.max_epochs):
        if stopper.should_stop:
            break
        shuffle_rng, rng = epoch_streams(cfg.seed, fold_number, epoch, world.rank)   # rng: this rank's mixup + augmentation
        positions = train_pos if confidence is None else epoch_subset(
            train_pos, dataset.clip_ids, confidence, epoch, t.curriculum_epochs)
        share, step_weights = rank_share(shuffle_rng.permutation(positions), batch_size=t.batch_size, rank=world.rank,
                                         world_size=world.world_size)
        views = (epoch_views(dataset.clip_ids, share, seed=cfg.seed, epoch=epoch, num_views=cache.num_views)
                 if t.view_sampling == "uniform" else None)   # validation and test below always read the clean view
        sampler.set_indices(share, chosen_views=views)
        stats = train_epoch(model, criterion, optimizer, scaler, loader, device, amp_dtype, rng,
                            training=t, desc=f"{fold.name} epoch {epoch + 1}/{t.max_epochs}",
                            ddp=ddp, step_weights=step_weights)
        _, val_labels, val_probs = predict(model, loader, sampler, val_pos, device, amp_dtype, world=world)
        val = {**compute_metrics(val_labels, val_probs.argmax(1), class_names=cache.label_names),
               "nll": mean_nll(val_labels, val_probs)}
        # recorded only, never read by the stopper: the report's test-selected ORACLE column (papers that pick on test)
        _, test_labels, test_probs = predict(model, loader, sampler, test_pos, device, amp_dtype, world=world)
        test = compute_metrics(test_labels, test_probs.argmax(1), class_names=cache.label_names)
        lrs = schedule.lrs()
        is_best = stopper.update(val[t.monitor], epoch, tie_loss=val["nll"] if t.tie_break == "val_nll" else math.inf)
        schedule.step(val[t.monitor])
        state = {"model": model.state_dict(), "criterion": criterion.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": schedule.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                 "metric": {"name": t.monitor, "value": val[t.monitor]}, "val_metrics": {k: val[k] for k in HEADLINE},
                 "early_stopping": stopper.state_dict(),
                 "rng": rng_state(), "config": resolved, "cache_fingerprints": resolved["cache_fingerprints"],
                 "model_spec": model.spec, "feature_spec": cache.feature_spec.to_dict()}
        record = {"fold": fold.name, "epoch": epoch + 1, **stats, **{f"val_{k}": val[k] for k in (*HEADLINE, "nll")},
                  **{f"test_{k}": test[k] for k in HEADLINE}, **{f"lr_{k}": v for k, v in lrs.items()}, "is_best": is_best}
        if world.is_main:
            if is_best:   # best before last: a kill between the two replays this epoch on resume
                save_checkpoint(best_path, best_weights(state), keep_previous=False)
            save_checkpoint(last_path, state)
            with open(fold_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    writer.add_scalar(key, value, epoch + 1)
        timings.append((stats["epoch_s"], stats["samples_per_s"]))
        log.info("%s epoch %d: loss %.4f acc %.3f | val %s %.4f%s | %.1f clips/s", fold.name, epoch + 1, stats["loss"],
                 stats["accuracy"], t.monitor, val[t.monitor], " (best)" if is_best else "", stats["samples_per_s"])
        epochs.update(1)
    if writer is not None:
        writer.close()
    barrier()   # rank 0's checkpoints are on disk before any rank reads them

    last = load_checkpoint(last_path)   # the last epoch's test score, reported beside the selected one
    model.load_state_dict(last["model"])
    _, last_labels, last_probs = predict(model, loader, sampler, test_pos, device, amp_dtype, world=world)
    last_metrics = compute_metrics(last_labels, last_probs.argmax(1), class_names=cache.label_names)
    best = load_checkpoint(best_path)
    model.load_state_dict(best["model"])
    clip_ids, labels, probs = predict(model, loader, sampler, test_pos, device, amp_dtype, world=world)
    metrics = {**compute_metrics(labels, probs.argmax(1), class_names=cache.label_names), "best_epoch": best["epoch"] + 1,
               "epochs_run": int(last["epoch"]) + 1,
               "last_epoch": {k: last_metrics[k] for k in HEADLINE},
               # validation actors' metrics at the best epoch: what model selection (tune) may look at
               **{f"val_{k}": v for k, v in best.get("val_metrics", {best["metric"]["name"]: best["metric"]["value"]}).items()},
               "trainable_params": sum(p.numel() for g in optimizer.param_groups for p in g["params"])}
    if cfg.pretrain != "none" and world.is_main:   # the design guide's stage 1: keep the branch for `--{audio,visual}-branch <out>`
        save_branch_weights(fold_dir / f"{cfg.pretrain}_branch.safetensors", model.branch_state_dict(cfg.pretrain), fold)
    log.info("%s test: %s", fold.name, ", ".join(f"{k} {metrics[k]:.4f}" for k in HEADLINE))
    return metrics, predictions_frame(fold.name, clip_ids, labels, probs, class_names=cache.label_names), timings


def log_checkpoint_estimate(out: Path, model: torch.nn.Module, optimizer, num_folds: int) -> None:
    """The disk the run's checkpoints take, logged before the first epoch: per fold best.pt (weights) and
    last.pt (full state) plus last.prev.pt, its copy from the epoch before; a warning when it exceeds the free space."""
    best_b, last_b = checkpoint_bytes(model, optimizer)
    per_fold = best_b + 2 * last_b
    free = shutil.disk_usage(out).free
    log.log(logging.WARNING if num_folds * per_fold > free else logging.INFO,
            "checkpoint disk estimate: %d fold(s) x (best.pt %.1f MB + last.pt and last.prev.pt 2 x %.1f MB) = %.1f MB; "
            "%.1f MB free at %s", num_folds, best_b / 1e6, last_b / 1e6, num_folds * per_fold / 1e6, free / 1e6, out)


@dataclasses.dataclass
class FoldSetup:
    """One fold's trainable state before its first epoch (what `setup_fold` builds)."""

    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: EpochSchedule
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None


def setup_fold(cfg: TrainConfig, cache, dataset: ClipDataset, train_pos: np.ndarray, device: torch.device, *,
               fold_number: int, fold: Fold | None) -> FoldSetup:
    """The model (seeded by the fold's number) with its input standardization from the training clips'
    statistics and any stage-1 branch weights (checked against `fold`), the loss (class weights from the
    training labels), AdamW groups, schedule and AMP scaler. train_fold and `mmfer bench` both start from it."""
    t = cfg.training
    torch.manual_seed(derive_seed(cfg.seed, fold_number, -1))
    _, num_patches, video_dim = cache.video_shape
    model = build_model(cfg.model, video_dim=video_dim, num_patches=num_patches, audio_dim=cache.audio_shape[1],
                        dropout=t.dropout)
    model.input_norm.set_statistics(feature_statistics(dataset[i] for i in train_pos))   # training actors only
    if t.gradient_checkpointing:
        model.set_gradient_checkpointing(True)
    for name, source in (("audio", cfg.audio_branch), ("visual", cfg.visual_branch)):
        if source:   # the design guide's stage 2: start from stage-1 branch weights
            if fold is None:
                raise ValueError("stage-1 branch weights are chosen per fold: setup_fold needs the fold")
            model.load_branch_state_dict(name, load_branch_weights(branch_path(source, name, fold), name),
                                         freeze=cfg.freeze_branches)
    contrastive = None
    if t.contrastive_weight > 0 and cfg.model.is_fused:
        contrastive = ContrastiveLoss(cfg.model.audio.feature_dim, cfg.model.visual.out_dim, t.contrastive_temperature)
    criterion = MultimodalLoss(
        label_smoothing=t.label_smoothing, class_weights=resolve_class_weights(t.class_weights, dataset.labels[train_pos], cfg.model.num_classes),
        alpha_fusion=t.loss_weight_fusion, alpha_audio=t.loss_weight_audio, alpha_visual=t.loss_weight_visual,
        contrastive=contrastive, contrastive_weight=t.contrastive_weight)
    model.to(device)
    criterion.to(device)
    groups = param_groups(model)
    groups["classifier"] += list(criterion.parameters())   # InfoNCE projections train with the heads
    optimizer = build_optimizer(groups, lr_branches=t.lr_branches, lr_fusion=t.lr_fusion, lr=t.lr,
                                weight_decay=t.weight_decay, betas=t.betas)
    schedule = EpochSchedule(optimizer, kind=t.scheduler, warmup_epochs=t.warmup_epochs, cosine_t0=t.cosine_t0,
                             cosine_t_mult=t.cosine_t_mult, eta_min=t.eta_min, plateau_factor=t.plateau_factor,
                             plateau_patience=t.plateau_patience)
    amp_dtype = autocast_dtype(device, t.mixed_precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return FoldSetup(model, criterion, optimizer, schedule, scaler, amp_dtype)


def train_epoch(model, criterion, optimizer, scaler, loader, device, amp_dtype, rng: np.random.Generator, *,
                training: TrainingConfig, desc: str, ddp: torch.nn.Module | None = None,
                step_weights: list[float] | None = None) -> dict:
    """One pass over the sampler's clips: CutMix in time or mixup, feature-space augmentation (train/augment.py;
    training batches only), AMP forward, scaled backward, every `training.gradient_accumulation_steps` batches
    unscale -> clip -> step. Returns mean loss, accuracy (vs. the dominant mixed label), epoch_s, samples_per_s
    (summed over the ranks under DDP).

    `ddp` (the DistributedDataParallel wrapper of `model`) runs the forward under torchrun; `step_weights`
    (from `rank_share`) scales each batch's loss so the mean over ranks is the global batch's mean."""
    accumulation, max_grad_norm = training.gradient_accumulation_steps, training.gradient_clip
    model.train()
    net = ddp if ddp is not None else model
    optimizer.zero_grad(set_to_none=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    num_batches = len(loader)
    total_loss, correct, seen, started = 0.0, 0, 0, time.time()
    batches = loader if loader.num_workers > 0 else prefetch(loader)
    progress = Progress(num_batches, desc=desc, unit="batch", logger=log, leave=False)
    for step, batch in enumerate(batches):
        crash_point("train_batch")   # mid-epoch: earlier batches of this epoch already stepped the optimizer
        batch = to_device(batch, device)
        labels = batch["labels"]
        labels_b = None
        if training.cutmix_prob > 0 and rng.random() < training.cutmix_prob:   # instead of mixup for this batch
            batch, labels_b, lam = cutmix_time(model.input_norm(batch), rng, alpha=training.cutmix_alpha)
        else:
            lam, perm = sample_mixup(rng, training.mixup_alpha, len(labels))
            if lam < 1.0:   # mixed after standardization, where padding (0) is neutral
                batch, labels_b = mix_batch(model.input_norm(batch), lam, perm)
        if is_augmenting(training):
            batch = augment_batch(model.input_norm(batch), rng, training)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = net(batch)
            losses = criterion(outputs, labels, labels_b, lam, has_audio=batch["has_audio"], has_video=batch["has_video"])
        group_size = min(accumulation, num_batches - (step // accumulation) * accumulation)   # last group may be short
        weight = step_weights[step] if step_weights is not None else 1.0
        scaler.scale(losses["loss"] * weight / group_size).backward()
        if (step + 1) % accumulation == 0 or step + 1 == num_batches:
            if ddp is not None:   # the loss's own parameters (InfoNCE projections) are outside the DDP wrapper
                sync_gradients(list(criterion.parameters()))
            scaler.unscale_(optimizer)   # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        if labels_b is None:
            target = labels
        elif isinstance(lam, torch.Tensor):   # CutMix in time: each clip's own share
            target = torch.where(lam.to(labels.device) >= 0.5, labels, labels_b)
        else:
            target = labels if lam >= 0.5 else labels_b
        total_loss += float(losses["loss"].detach()) * len(labels)
        correct += int((outputs["logits"].argmax(1) == target).sum())
        seen += len(labels)
        progress.update(1, loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                        samples_s=f"{seen / max(time.time() - started, 1e-9):.1f}")
    progress.close()
    elapsed = time.time() - started
    if ddp is not None:   # the epoch's numbers over every rank's clips
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device)
        all_reduce_sum_(totals)
        total_loss, correct, seen = float(totals[0]), int(totals[1]), int(totals[2])
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "epoch_s": elapsed,
            "samples_per_s": seen / max(elapsed, 1e-9)}


def sync_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over the ranks (a parameter without one on a rank counts as zero)."""
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            all_reduce_mean_(p.grad)


@torch.inference_mode()
def predict(model, loader, sampler: EpochSampler, positions: np.ndarray, device, amp_dtype, *,
            world: World = ALONE) -> tuple:
    """(clip_ids, labels (N,) int, probabilities (N, C) float32) for the clips at `positions`, in order.

    Under torchrun each rank predicts positions[rank::world_size] (no clip padded or repeated) and the
    ranks' results are gathered and put back in the order of `positions` by clip id.
    """
    if world.is_distributed:
        local = predict(model, loader, sampler, positions[world.rank::world.world_size], device, amp_dtype)
        by_clip = {}
        for ids, labels, probs in gather_objects(local):
            by_clip.update({clip_id: (label, prob) for clip_id, label, prob in zip(ids, labels, probs)})
        clip_ids = [loader.dataset.clip_ids[i] for i in positions]
        return (clip_ids, np.array([by_clip[c][0] for c in clip_ids]),
                np.stack([by_clip[c][1] for c in clip_ids]).astype(np.float32))
    model.eval()
    sampler.set_indices(positions)
    if len(positions) == 0:   # a rank whose share of a small split is empty
        return [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    clip_ids, labels, probs = [], [], []
    batches = loader if loader.num_workers > 0 else prefetch(loader)
    for batch in batches:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model(batch)
        clip_ids += batch["clip_ids"]
        labels.append(batch["labels"].cpu().numpy())
        probs.append(outputs["probabilities"].float().cpu().numpy())
    return clip_ids, np.concatenate(labels), np.concatenate(probs)


def keep_metrics_lines(path: Path, up_to_epoch: int) -> None:
    """On resume, drop metrics.jsonl lines of epochs after the checkpoint (written before a kill)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= up_to_epoch + 1]
        path.write_text("".join(line + "\n" for line in lines))




def autocast_dtype(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """bf16 on a CUDA device with native bf16 (core/device.py `has_native_bf16`), else fp16 (with
    GradScaler); None (fp32) on CPU or when turned off."""
    if device.type != "cuda" or not mixed_precision:
        return None
    return torch.bfloat16 if has_native_bf16(device) else torch.float16


def dtype_name(dtype: torch.dtype | None) -> str:
    """What summary.json and config.yaml record as the training compute dtype."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def derive_seed(seed: int, fold_number: int, epoch: int, rank: int | None = None) -> int:
    """The torch seed of one fold's epoch (-1: model initialisation, the same on every rank), by the fold's
    1-based number; with `rank`, that rank's own seed (dropout draws differ across DDP ranks)."""
    entropy = [seed, fold_number, epoch + 1] + ([rank] if rank is not None else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def epoch_streams(seed: int, fold_number: int, epoch: int, rank: int) -> tuple[np.random.Generator, np.random.Generator]:
    """One epoch's random streams: (the shuffle, the same on every rank so the ranks split one order; this
    rank's mixup, CutMix and augmentation stream, by (seed, fold, epoch, rank)); also seeds torch's global
    generator (dropout) by (seed, fold, epoch, rank). Under DDP each rank thus draws its own masks, as one
    process drawing for the whole global batch would; a resumed epoch replays the same streams."""
    torch.manual_seed(derive_seed(seed, fold_number, epoch, rank))
    return np.random.default_rng([seed, fold_number, epoch]), np.random.default_rng([seed, fold_number, epoch, rank])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
