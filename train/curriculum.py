"""Curriculum learning: easy clips first, by a previous run's confidence in the true label.

`load_difficulty(predictions.csv)` gives each clip's confidence (prob of its true emotion); `epoch_subset`
keeps the easiest share of the training clips, growing linearly from half to all over `curriculum_epochs`.
Clips the previous run never scored count as hardest.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

START_FRACTION = 0.5   # the curriculum's first epoch sees the easiest half


def load_difficulty(path: str) -> dict[str, float]:
    """clip_id -> confidence in the true label, from a predictions.csv (columns label, prob_<emotion>)."""
    frame = pd.read_csv(path)
    missing = {"clip_id", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a predictions.csv (missing columns {sorted(missing)})")
    try:
        confidence = [float(row[f"prob_{row['label']}"]) for _, row in frame.iterrows()]
    except KeyError as err:
        raise ValueError(f"{path}: no probability column {err} for a label; was it written by train-fusion?") from None
    return dict(zip(frame["clip_id"].astype(str), confidence))


def epoch_subset(positions: np.ndarray, clip_ids: list[str], confidence: dict[str, float], epoch: int,
                 curriculum_epochs: int) -> np.ndarray:
    """The easiest clips of `positions` for this epoch (0-based), most confident first."""
    fraction = 1.0 if curriculum_epochs <= 0 else min(1.0, START_FRACTION + (1 - START_FRACTION) * epoch / curriculum_epochs)
    scores = np.array([confidence.get(clip_ids[p], -math.inf) for p in positions])
    order = np.argsort(-scores, kind="stable")
    keep = max(1, math.ceil(fraction * len(positions)))
    return np.asarray(positions)[order[:keep]]
