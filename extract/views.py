"""Augmented views of a decoded clip for `extract --views K`: video crop, flip and colour jitter; audio tempo,
pitch and noise.

In: a clip's face crops (Tv, h, w, 3) uint8 RGB or its waveform (S,) float32, its clip_id and a view number
1..K. Out: the augmented crops / waveform and the parameters drawn (the store keeps them per view). Each
view's randomness comes only from a hash of (modality, clip_id, view), so resume, rank sharding and batch
size give the same bytes. The encoders' own preprocessing runs afterwards, as for the clean clip.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from mmfer.core.media import run_ffmpeg

VIEWS_VERSION = 1             # bump with any change below that changes a view's values
CROP_SCALE = (0.8, 1.0)       # crop side as a share of the frame side (same aspect): 64-100% of the area
FLIP_PROB = 0.5               # horizontal flip
BRIGHTNESS = 0.2              # pixel values x a factor in [0.8, 1.2]
CONTRAST = 0.2                # distance from the clip's mean grey x a factor in [0.8, 1.2]
SATURATION = 0.2              # distance from each pixel's grey x a factor in [0.8, 1.2]
TEMPO = 0.1                   # speed factor in [0.9, 1.1] at the same pitch (ffmpeg atempo)
PITCH_SEMITONES = 2.0         # pitch shift in [-2, +2] semitones at the same tempo (asetrate + aresample + atempo)
SNR_DB = (10.0, 30.0)         # white noise added at a signal-to-noise ratio drawn in this range
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)   # ITU-R BT.601 grey


def view_settings(modality: str, num_views: int) -> dict:
    """What decides a modality's views, for the entry's attributes and fingerprint (extract/run.py)."""
    seed = f"sha256('{modality}:<clip_id>:<view>')[:8] as the numpy seed of view 1..K"
    if modality == "video":
        ops = {"random_resized_crop": {"scale": list(CROP_SCALE), "aspect": "the frame's"}, "hflip_prob": FLIP_PROB,
               "brightness": BRIGHTNESS, "contrast": CONTRAST, "saturation": SATURATION,
               "applied_to": "the face crops, before the image processor; one draw per clip and view for all Tv frames"}
    else:
        ops = {"tempo": TEMPO, "pitch_semitones": PITCH_SEMITONES, "snr_db": list(SNR_DB),
               "applied_to": "the decoded waveform, before the encoder's preprocessor (ffmpeg atempo/asetrate, numpy noise)"}
    return {"num_views": num_views, "version": VIEWS_VERSION, "seed": seed, **ops}


def view_rng(modality: str, clip_id: str, view: int) -> np.random.Generator:
    """The random stream of one view of one clip: the same whatever the run's order, ranks or batches."""
    digest = hashlib.sha256(f"{modality}:{clip_id}:{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_video_params(rng: np.random.Generator) -> dict:
    """Crop box (normalized x0, y0, x1, y1 of the crop), flip and jitter factors of one view."""
    scale = float(rng.uniform(*CROP_SCALE))
    x0, y0 = (float(rng.uniform(0.0, 1.0 - scale)) for _ in range(2))
    return {"crop": [x0, y0, x0 + scale, y0 + scale], "hflip": bool(rng.random() < FLIP_PROB),
            "brightness": float(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS)),
            "contrast": float(rng.uniform(1 - CONTRAST, 1 + CONTRAST)),
            "saturation": float(rng.uniform(1 - SATURATION, 1 + SATURATION))}


def video_view(crops: np.ndarray, clip_id: str, view: int) -> tuple[np.ndarray, dict]:
    """One augmented view of a clip's crops.

    crops: (Tv, h, w, 3) uint8 RGB -> returns ((Tv, h, w, 3) uint8 RGB, the parameters drawn)
    """
    params = draw_video_params(view_rng("video", clip_id, view))
    tv, h, w, _ = crops.shape
    x0, y0, x1, y1 = params["crop"]
    left, top = int(round(x0 * w)), int(round(y0 * h))
    right, bottom = max(left + 1, int(round(x1 * w))), max(top + 1, int(round(y1 * h)))
    frames = np.stack([cv2.resize(frame[top:bottom, left:right], (w, h), interpolation=cv2.INTER_LINEAR)
                       for frame in crops]).astype(np.float32)
    if params["hflip"]:
        frames = frames[:, :, ::-1]
    frames = frames * params["brightness"]
    grey = frames @ LUMA                                             # (Tv, h, w)
    frames = (frames - grey.mean()) * params["contrast"] + grey.mean()
    grey = (frames @ LUMA)[..., None]
    frames = grey + (frames - grey) * params["saturation"]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8), params


def draw_audio_params(rng: np.random.Generator) -> dict:
    """Tempo factor, pitch shift (semitones) and noise SNR (dB) of one view."""
    return {"tempo": float(rng.uniform(1 - TEMPO, 1 + TEMPO)),
            "pitch_semitones": float(rng.uniform(-PITCH_SEMITONES, PITCH_SEMITONES)),
            "snr_db": float(rng.uniform(*SNR_DB))}


def audio_view(wave: np.ndarray, clip_id: str, view: int, *, sample_rate_hz: int, timeout_s: float,
               path: str) -> tuple[np.ndarray, dict]:
    """One augmented view of a clip's waveform: tempo and pitch by ffmpeg, then white noise at the drawn SNR.

    wave: (S,) float32 mono at sample_rate_hz -> returns ((S',) float32, S' ~ S / tempo; the parameters drawn)

    Raises:
        FfmpegError: ffmpeg failed or took longer than timeout_s (the clip fails, named by `path`).
    """
    rng = view_rng("audio", clip_id, view)
    params = draw_audio_params(rng)
    if len(wave) == 0:
        return wave.astype(np.float32), params
    pitch = 2.0 ** (params["pitch_semitones"] / 12.0)
    # asetrate plays the samples `pitch` times faster (higher and shorter), aresample returns to the rate,
    # then atempo stretches by tempo / pitch, which leaves the pitch shifted and the speed changed by tempo
    chain = f"asetrate={sample_rate_hz * pitch:.6f},aresample={sample_rate_hz},atempo={params['tempo'] / pitch:.6f}"
    raw = run_ffmpeg(["-f", "f32le", "-ar", str(sample_rate_hz), "-ac", "1", "-i", "pipe:0", "-af", chain,
                      "-f", "f32le", "-ac", "1", "-ar", str(sample_rate_hz), "pipe:1"],
                     path=path, timeout_s=timeout_s, input_bytes=np.ascontiguousarray(wave, dtype="<f4").tobytes())
    out = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    power = float(np.mean(out.astype(np.float64) ** 2)) if len(out) else 0.0
    noise_std = np.sqrt(power / 10.0 ** (params["snr_db"] / 10.0))
    return (out + noise_std * rng.standard_normal(len(out))).astype(np.float32), params
