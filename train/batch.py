"""Clips -> one batch of numpy arrays, the model's input contract, without torch.

`train/dataset.py`'s `collate_clips` wraps it as tensors for training, evaluate and PyTorch predict; predict's
onnxruntime path (`--runtime onnx`) feeds the arrays to the graphs as they are, so a deployment needs no torch.
"""

from __future__ import annotations

import numpy as np


def stack_clips(items: list[dict], video_shape: tuple[int, int, int] | None = None, audio_dim: int | None = None) -> dict:
    """Stack clips into the batch the model reads, as numpy arrays (keys and shapes below); masks are True for
    real frames. Tokens keep their stored dtype (fp16). Video is one `np.stack` into the batch array, audio one
    masked scatter of the concatenated frames. `video_shape` (Tv, P, Dv) and `audio_dim` (Da) size a modality that
    no clip of the batch has, so a batch of only no-audio clips still has the audio width the model expects.

    returns video_tokens (B, Tv, P, Dv) fp16, video_pooled (B, Tv, Dv), frame_mask (B, Tv) bool,
    has_video (B,) bool, audio_tokens (B, Ta, Da) fp16, audio_mask (B, Ta) bool, has_audio (B,) bool,
    labels (B,) int64, clip_ids list[str]. A missing modality is zeros with an all-False mask.
    """
    b = len(items)
    has_video = np.array([bool(it["has_video"]) for it in items])
    has_audio = np.array([bool(it["has_audio"]) for it in items])
    with_video = [it for it in items if it["has_video"]]
    with_audio = [it for it in items if it["has_audio"]]
    tv, p, dv = with_video[0]["video_tokens"].shape if with_video else (video_shape or (1, 1, 1))
    da = with_audio[0]["audio_tokens"].shape[1] if with_audio else (audio_dim or 1)
    for it in with_video:
        if it["video_tokens"].shape != (tv, p, dv):
            raise ValueError(f"clip {it['clip_id']}: video tokens {it['video_tokens'].shape}, batch has {(tv, p, dv)}")
    lengths = np.array([len(it["audio_tokens"]) if it["has_audio"] else 0 for it in items])
    ta = max(int(lengths.max(initial=0)), 1)
    video_dtype = with_video[0]["video_tokens"].dtype if with_video else np.float16
    audio_dtype = with_audio[0]["audio_tokens"].dtype if with_audio else np.float16
    video = np.zeros((b, tv, p, dv), video_dtype)
    pooled = np.zeros((b, tv, dv), video_dtype)
    if len(with_video) == b:
        np.stack([it["video_tokens"] for it in items], out=video)
        np.stack([it["video_pooled"] for it in items], out=pooled)
    elif with_video:
        video[has_video] = np.stack([it["video_tokens"] for it in with_video])
        pooled[has_video] = np.stack([it["video_pooled"] for it in with_video])
    audio_mask = np.arange(ta)[None, :] < lengths[:, None]
    audio = np.zeros((b, ta, da), audio_dtype)
    if with_audio:
        audio[audio_mask] = np.concatenate([it["audio_tokens"] for it in with_audio])
    return {
        "video_tokens": video, "video_pooled": pooled,
        "frame_mask": np.repeat(has_video[:, None], tv, axis=1),   # extract samples exactly Tv real frames
        "has_video": has_video,
        "audio_tokens": audio, "audio_mask": audio_mask,
        "has_audio": has_audio,
        "labels": np.array([int(it["label"]) for it in items], dtype=np.int64),
        "clip_ids": [it["clip_id"] for it in items],
    }
