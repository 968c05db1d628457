"""A small real feature store for the training tests: learnable synthetic features, written with store.py.

Every clip's video and audio tokens are a class-dependent mean plus noise, so a few epochs separate the
8 emotions. Actors 1..NUM_ACTORS, 8 emotions, `repetitions` clips each; one clip has no audio (MISSING),
one failed video (not usable). The fold file tests actors 1-2 and validates on 3-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmfer.core.labels import EMOTIONS
from mmfer.core.store import ArraySpec, ClipStatus, create_store

NUM_ACTORS = 8
TV, P, DV = 4, 16, 32      # frames, patches (4 x 4 grid), video width
TA_MAX, DA = 12, 16        # audio frames (padded), audio width
VIDEO_FP, AUDIO_FP = "v" * 12, "a" * 12
NO_AUDIO_CLIP = "01-01-01-01-01-01-05"
FAILED_VIDEO_CLIP = "01-01-02-01-01-01-06"


def clip_table(repetitions: int = 2) -> pd.DataFrame:
    rows = []
    for actor in range(1, NUM_ACTORS + 1):
        for label, emotion in enumerate(EMOTIONS):
            for rep in range(1, repetitions + 1):
                rec = f"01-{label + 1:02d}-01-01-{rep:02d}-{actor:02d}"
                rows.append({"clip_id": f"01-{rec}", "actor": actor, "label": label, "emotion": emotion,
                             "recording_id": rec, "gender": "male" if actor % 2 else "female"})
    return pd.DataFrame(rows)


def make_store(path: Path, *, repetitions: int = 2, seed: int = 0, noise: float = 1.0) -> Path:
    table = clip_table(repetitions)
    rng = np.random.default_rng(seed)
    video_means = rng.normal(0, 1, (len(EMOTIONS), DV))
    audio_means = rng.normal(0, 1, (len(EMOTIONS), DA))
    store = create_store(path, table, {"made_by": "tests/synthetic_store.py"})
    video = store.ensure_entry("video", VIDEO_FP, {"encoder": {"name": "synthetic-video", "dim": DV}}, {
        "tokens": ArraySpec((TV, P, DV), "float16"), "pooled": ArraySpec((TV, DV), "float16"),
        "timestamps_s": ArraySpec((TV,), "float32"), "boxes": ArraySpec((TV, 4), "float32")})
    audio = store.ensure_entry("audio", AUDIO_FP, {"encoder": {"name": "synthetic-audio", "dim": DA}}, {
        "tokens": ArraySpec((TA_MAX, DA), "float16"), "length": ArraySpec((), "int32"),
        "duration_s": ArraySpec((), "float32")})
    for row in table.itertuples():
        tokens = video_means[row.label] + noise * rng.normal(0, 1, (TV, P, DV))
        if row.clip_id == FAILED_VIDEO_CLIP:
            video.mark(row.clip_id, ClipStatus.FAILED, "ffmpeg-error")
        else:
            video.write_clip(row.clip_id, {"tokens": tokens, "pooled": tokens.mean(1),
                                           "timestamps_s": np.linspace(0, 3, TV), "boxes": np.zeros((TV, 4))}, "synthetic")
        if row.clip_id == NO_AUDIO_CLIP:
            audio.mark(row.clip_id, ClipStatus.MISSING, "no audio stream")
            continue
        length = int(rng.integers(6, TA_MAX + 1))
        a = np.zeros((TA_MAX, DA))
        a[:length] = audio_means[row.label] + noise * rng.normal(0, 1, (length, DA))
        audio.write_clip(row.clip_id, {"tokens": a, "length": np.int32(length), "duration_s": np.float32(length * 0.08)},
                         "synthetic")
    return path


def write_fold_file(path: Path) -> Path:
    path.write_text(json.dumps([{"name": "fold1", "test_actors": [1, 2], "val_actors": [3, 4]}]))
    return path
