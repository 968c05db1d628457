"""One fold: model, loss, optimizer and schedule (`setup_fold`), its epochs with validation, early stopping and
checkpoints (resumable), then the test pass with the best checkpoint (`train_fold`).

Takes a `RunContext` (what every fold of a run shares, built by train/cross_validation.py) and a `Fold` (its
actors and protocol number, core/splits.py); an epoch's steps are train/steps.py's. Each epoch's randomness
derives from (seed, fold number, epoch): the shuffle is shared by every rank, mixup, augmentation and dropout
also follow the rank (`epoch_streams`), so `--resume` from an epoch's last checkpoint replays the same run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from mmfer.core.config import TrainConfig
from mmfer.core.distributed import World, barrier
from mmfer.core.errors import BadInputError
from mmfer.core.progress import Progress
from mmfer.core.splits import Fold, assign_parts
from mmfer.core.store import StoreError
from mmfer.train.branch_weights import branch_path, load_branch_weights, save_branch_weights
from mmfer.train.checkpoint import (best_weights, checkpoint_bytes, load_checkpoint, previous_path, restore_rng_state,
                                    rng_state, save_checkpoint)
from mmfer.train.curriculum import epoch_subset
from mmfer.train.dataset import CacheInfo, ClipDataset, EpochSampler, epoch_views, rank_share
from mmfer.train.losses import ContrastiveLoss, MultimodalLoss, resolve_class_weights
from mmfer.train.metrics import HEADLINE, compute_metrics, mean_nll
from mmfer.train.model.builder import build_model, param_groups
from mmfer.train.model.normalize import feature_statistics
from mmfer.train.report import predictions_frame
from mmfer.train.schedule import EarlyStopping, EpochSchedule, build_optimizer
from mmfer.train.steps import autocast_dtype, predict, train_epoch

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every fold of one run shares: built once by the cross-validation driver, read by `train_fold`."""

    cfg: TrainConfig          # resolved: num_classes and protocol settled from the cache (core/cache_facts.py)
    out: Path                 # the run folder; a fold writes <out>/<fold.name>/
    cache: CacheInfo          # entries, usable clips, label names
    dataset: ClipDataset      # every usable clip; a fold picks its parts by position
    sampler: EpochSampler     # which positions (and views) the loader reads next
    loader: torch.utils.data.DataLoader
    device: torch.device
    world: World              # this rank and the world size (alone: rank 0 of 1)
    record: dict              # config.yaml's content (resolved config, fingerprints), saved in every checkpoint
    confidence: dict | None   # --curriculum: per clip id, the confidence in its label; None without one


def train_fold(run: RunContext, fold: Fold, *, disk_estimate_folds: int = 0) -> tuple:
    """One fold of `run`: train with validation and checkpoints in <run.out>/<fold.name>, then test the best
    checkpoint. The fold's protocol number (`fold.number`) seeds its model and epochs.

    Under DDP each rank trains on its share of each epoch (`rank_share`), evaluates a disjoint share of the
    clips and gathers the predictions by clip id; rank 0 alone writes checkpoints (of the unwrapped model,
    so they do not depend on the world size), metrics.jsonl and TensorBoard.

    `disk_estimate_folds` > 0 (the run's first fold): log the checkpoints' disk estimate for that many folds first.
    Returns (test metrics, predictions frame, [(epoch_s, samples_per_s)] of the epochs run now).
    """
    cfg, cache, dataset, sampler, loader, device, world = (run.cfg, run.cache, run.dataset, run.sampler, run.loader,
                                                           run.device, run.world)
    fold_dir, resolved, t = run.out / fold.name, run.record, cfg.training
    part = assign_parts(cache.clips, fold).to_numpy()
    train_pos, val_pos, test_pos = (np.flatnonzero(part == p) for p in ("train", "val", "test"))
    for name, positions in (("train", train_pos), ("val", val_pos), ("test", test_pos)):
        if len(positions) == 0:   # runnable_folds refused it already; a guard for direct callers
            raise BadInputError(f"{fold.name}: no usable {name} clips in {cache.path}; check the split and the cache")
    if world.is_main:
        (fold_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    last_path, best_path = fold_dir / "checkpoints" / "last.pt", fold_dir / "checkpoints" / "best.pt"

    fit = setup_fold(cfg, cache, dataset, train_pos, device, fold_number=fold.number, fold=fold)
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
    from torch.utils.tensorboard import SummaryWriter   # here, so importing fold.py stays light
    writer = SummaryWriter(str(fold_dir / "tb")) if world.is_main else None
    timings = []
    epochs = Progress(t.max_epochs - start_epoch, desc=fold.name, unit="epoch", logger=log, with_bar=False)
    for epoch in range(start_epoch, t.max_epochs):
        if stopper.should_stop:
            break
        shuffle_rng, rng = epoch_streams(cfg.seed, fold.number, epoch, world.rank)   # rng: this rank's mixup + augmentation
        positions = train_pos if run.confidence is None else epoch_subset(
            train_pos, dataset.clip_ids, run.confidence, epoch, t.curriculum_epochs)
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


def keep_metrics_lines(path: Path, up_to_epoch: int) -> None:
    """On resume, drop metrics.jsonl lines of epochs after the checkpoint (written before a kill)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= up_to_epoch + 1]
        path.write_text("".join(line + "\n" for line in lines))


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
