"""One epoch's steps: `train_epoch` (mixup/CutMix, augmentation, AMP, accumulation, clipping, the optimizer
step) and `predict` (evaluation of given clips, gathered over the ranks under torchrun), plus the AMP dtype.

Takes a built model, loss, optimizer and loader; knows nothing of folds, checkpoints or the run folder
(train/fold.py drives the epochs, train/cross_validation.py the folds).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from mmfer.core.config import TrainingConfig
from mmfer.core.device import has_native_bf16
from mmfer.core.distributed import ALONE, World, all_reduce_mean_, all_reduce_sum_, gather_objects
from mmfer.core.faults import crash_point
from mmfer.core.progress import Progress
from mmfer.train.augment import augment_batch, cutmix_time, is_augmenting
from mmfer.train.dataset import EpochSampler, prefetch, to_device
from mmfer.train.mixup import mix_batch, sample_mixup

log = logging.getLogger(__name__)


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


def autocast_dtype(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """bf16 on a CUDA device with native bf16 (core/device.py `has_native_bf16`), else fp16 (with
    GradScaler); None (fp32) on CPU or when turned off."""
    if device.type != "cuda" or not mixed_precision:
        return None
    return torch.bfloat16 if has_native_bf16(device) else torch.float16


def dtype_name(dtype: torch.dtype | None) -> str:
    """What summary.json and config.yaml record as the training compute dtype."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
