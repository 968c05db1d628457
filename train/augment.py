"""Feature-space augmentation of standardized training batches: what a cache still allows once each clip's
encoder tokens are frozen.

`augment_batch` takes a batch the model's FeatureNorm has standardized (0 = the training mean, so a hidden
value is neutral, as in mixup.py) and returns a changed copy: visual frame dropout (frame_mask False) and
time masking, patch-token dropout, SpecAugment-style time and channel masks of the audio frames, modality
dropout (has_audio / has_video False, so the model swaps in its learned missing-modality embedding),
Gaussian feature noise and CutMix in time (a block of frames from a partner clip; labels mixed by the
block's share). Only the training step calls it; evaluation, test and predict batches are never changed.
Randomness comes from the caller's numpy Generator (per epoch, so a resumed run draws the same numbers).
"""

from __future__ import annotations

import numpy as np
import torch

from mmfer.train.mixup import real_positions

AUGMENT_FIELDS = ("video_frame_drop", "video_time_mask", "patch_drop", "audio_time_mask", "audio_channel_mask",
                  "modality_dropout", "feature_noise", "cutmix_prob")


def is_augmenting(training) -> bool:
    """True when any feature-space augmentation of TrainingConfig `training` is on."""
    return any(getattr(training, name) > 0 for name in AUGMENT_FIELDS)


def _block(rng: np.random.Generator, length: int, max_share: float) -> tuple[int, int]:
    """A contiguous [start, stop) of up to round(max_share * length) positions (may be empty)."""
    width = int(rng.integers(0, int(round(max_share * length)) + 1)) if max_share > 0 and length > 0 else 0
    start = int(rng.integers(0, length - width + 1)) if width else 0
    return start, start + width


def _generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(rng.integers(0, 2**62)))
    return gen


def cutmix_time(batch: dict, rng: np.random.Generator, *, alpha: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """CutMix in time: in each clip, one block of its real visual frames and the same stretch of its real audio
    frames comes from a partner clip (a permutation of the batch). The block's width is (1 - lam) of the clip's
    own real length (frame_mask / audio_mask), lam ~ Beta(alpha, alpha), never of the batch's padded length.

    returns (batch, labels_b (B,) long, lam (B,) float): lam[i] is the share of clip i's real positions that
    stay its own, averaged over its present modalities, counting only partner positions that are real (a
    partner shorter than the block leaves the neutral 0 there, which weights neither label); the label
    weights of the mixup-aware loss. Masks and presence flags stay the clip's own, as in mixup."""
    b = batch["frame_mask"].shape[0]
    lam = float(rng.beta(alpha, alpha))
    perm_np = rng.permutation(b)
    perm = torch.as_tensor(perm_np, dtype=torch.long, device=batch["labels"].device)
    real = real_positions(batch)
    is_real = {"video": real["video_pooled"][..., 0] > 0, "audio": real["audio_tokens"][..., 0] > 0}   # (B, T)
    out = {name: batch[name] * real[name] for name in ("video_tokens", "video_pooled", "audio_tokens")}
    mixed = {name: x.clone() for name, x in out.items()}
    own_share = torch.ones(b, dtype=torch.float32)
    for i in range(b):
        j = int(perm_np[i])
        length_v, length_a = int(is_real["video"][i].sum()), int(is_real["audio"][i].sum())
        width_v = int(round((1.0 - lam) * length_v))
        start_v = int(rng.integers(0, length_v - width_v + 1))
        shares = []
        if length_v:
            stop_v = start_v + width_v
            for name in ("video_tokens", "video_pooled"):
                mixed[name][i, start_v:stop_v] = out[name][j, start_v:stop_v]
            shares.append(float(is_real["video"][j, start_v:stop_v].sum()) / length_v)
        if length_a:   # the same stretch of the clip, in its own audio frames
            frac_start, frac_stop = (start_v / length_v, (start_v + width_v) / length_v) if length_v else (0.0, 1.0 - lam)
            start_a, stop_a = int(round(frac_start * length_a)), int(round(frac_stop * length_a))
            mixed["audio_tokens"][i, start_a:stop_a] = out["audio_tokens"][j, start_a:stop_a]
            shares.append(float(is_real["audio"][j, start_a:stop_a].sum()) / length_a)
        if shares:
            own_share[i] = 1.0 - sum(shares) / len(shares)
    return {**batch, **mixed}, batch["labels"][perm], own_share.to(batch["labels"].device)


def augment_batch(batch: dict, rng: np.random.Generator, training) -> dict:
    """The masking, dropout and noise augmentations of TrainingConfig `training` on a standardized batch.

    batch: collate_clips keys after FeatureNorm (`is_standardized`); video_tokens (B, Tv, P, Dv),
    video_pooled (B, Tv, Dv), frame_mask (B, Tv), audio_tokens (B, Ta, Da), audio_mask (B, Ta).
    returns a new dict (the input is not modified); labels, clip_ids and padding are kept.

    Raises:
        ValueError: the batch was not standardized (raw tokens have no neutral value to mask with).
    """
    if not batch.get("is_standardized"):
        raise ValueError("augment_batch: standardize the batch first (model.input_norm), so masking is neutral")
    t = training
    out = dict(batch)
    b, tv = batch["frame_mask"].shape
    ta, da = batch["audio_tokens"].shape[1:]
    device = batch["video_tokens"].device
    video = batch["video_tokens"].clone()
    pooled = batch["video_pooled"].clone()
    audio = batch["audio_tokens"].clone()
    frame_mask = batch["frame_mask"].clone()
    has_audio, has_video = batch["has_audio"].clone(), batch["has_video"].clone()
    if t.video_frame_drop > 0:   # each frame dropped from attention with probability p; one always stays
        drop = rng.random((b, tv)) < t.video_frame_drop
        drop[np.arange(b), rng.integers(0, tv, size=b)] = False
        frame_mask &= ~torch.as_tensor(drop, device=device)
    for i in range(b):
        if t.video_time_mask > 0:
            start, stop = _block(rng, tv, t.video_time_mask)
            video[i, start:stop] = 0.0
            pooled[i, start:stop] = 0.0
        length = int(batch["audio_mask"][i].sum())
        if t.audio_time_mask > 0:
            start, stop = _block(rng, length, t.audio_time_mask)
            audio[i, start:stop] = 0.0
        if t.audio_channel_mask > 0:
            start, stop = _block(rng, da, t.audio_channel_mask)
            audio[i, :, start:stop] = 0.0
    if t.patch_drop > 0:   # each (frame, patch) token of the grid replaced by the training mean
        keep = torch.as_tensor(rng.random(video.shape[:3]) >= t.patch_drop, device=device)
        video = video * keep[..., None]
    if t.modality_dropout > 0:   # only clips with both: drop audio with p, else video with p (never both)
        draw = rng.random(b)
        both = (has_audio & has_video).cpu().numpy()
        drop_audio = both & (draw < t.modality_dropout)
        drop_video = both & (draw >= t.modality_dropout) & (draw < 2 * t.modality_dropout)
        has_audio &= ~torch.as_tensor(drop_audio, device=device)
        has_video &= ~torch.as_tensor(drop_video, device=device)
    if t.feature_noise > 0:   # N(0, sigma^2) in standardized units, on real positions only
        gen = _generator(rng, device)
        real = real_positions(dict(batch, frame_mask=frame_mask))
        for name, x in (("video_tokens", video), ("video_pooled", pooled), ("audio_tokens", audio)):
            x += t.feature_noise * torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype) * real[name]
    out.update(video_tokens=video, video_pooled=pooled, audio_tokens=audio, frame_mask=frame_mask,
               has_audio=has_audio, has_video=has_video)
    return out
