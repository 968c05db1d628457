"""Curriculum learning: easy clips first, by a previous run's confidence in the true label.

`load_difficulty(predictions.csv)` gives each clip's confidence (prob of its true emotion) and which of the
previous run's fold models scored it (the folds in its summary.json, beside the CSV); `check_difficulty`
refuses scores for a fold's training clips made by a model that saw actors outside that fold's training
actors (a CV run's predictions.csv: the model of another fold trained on this fold's test actors, so its
confidence would leak their labels into the training order). `epoch_subset` keeps the easiest share of
the training clips, growing linearly from half to all over `curriculum_epochs`. Clips the previous run
never scored count as hardest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmfer.core.errors import BadInputError
from mmfer.core.splits import Fold, check_reuse

START_FRACTION = 0.5   # the curriculum's first epoch sees the easiest half


@dataclass(frozen=True)
class Difficulty:
    """Per clip_id: confidence in the true label, and the name of the fold model that scored it; per fold
    model of the previous run: its protocol entry (train_actors, val_actors, test_actors)."""

    path: str
    confidence: dict[str, float]
    scored_by: dict[str, str]
    models: dict[str, dict]


def load_difficulty(path: str) -> Difficulty:
    """From a train-fusion predictions.csv (columns clip_id, fold, label, prob_<emotion>) and the
    summary.json beside it (the protocol of the models that scored the clips).

    Raises:
        BadInputError: not a predictions.csv, or no summary.json protocol that names its folds.
    """
    frame = pd.read_csv(path)
    missing = {"clip_id", "label", "fold"} - set(frame.columns)
    if missing:
        raise BadInputError(f"{path}: not a predictions.csv of train-fusion (missing columns {sorted(missing)})")
    try:
        confidence = [float(row[f"prob_{row['label']}"]) for _, row in frame.iterrows()]
    except KeyError as err:
        raise BadInputError(f"{path}: no probability column {err} for a label; was it written by train-fusion?") from None
    summary_path = Path(path).with_name("summary.json")
    try:
        models = {f["name"]: f for f in json.loads(summary_path.read_text())["protocol"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadInputError(f"{path}: no readable summary.json beside it ({type(err).__name__}: {err}), so the "
                            "actors its models trained on are unknown; keep the run folder together") from None
    unknown = sorted(set(frame["fold"].astype(str)) - set(models))
    if unknown:
        raise BadInputError(f"{path}: folds {unknown} are not in {summary_path}'s protocol; keep the run folder together")
    ids = frame["clip_id"].astype(str)
    return Difficulty(str(path), dict(zip(ids, confidence)), dict(zip(ids, frame["fold"].astype(str))), models)


def check_difficulty(difficulty: Difficulty, fold: Fold, train_clip_ids: list[str]) -> None:
    """Refuse scores of `fold`'s training clips made by a model that trained on (or selected its epoch on)
    actors outside this fold's training actors.

    Raises:
        LeakageError: naming the predictions file, its fold model and the actors.
    """
    for name in sorted({difficulty.scored_by[c] for c in train_clip_ids if c in difficulty.scored_by}):
        model = difficulty.models[name]
        check_reuse(fold, source=f"--curriculum {difficulty.path} (scores by its {name} model)",
                    train_actors=model["train_actors"], val_actors=model["val_actors"])


def epoch_subset(positions: np.ndarray, clip_ids: list[str], confidence: dict[str, float], epoch: int,
                 curriculum_epochs: int) -> np.ndarray:
    """The easiest clips of `positions` for this epoch (0-based), most confident first."""
    fraction = 1.0 if curriculum_epochs <= 0 else min(1.0, START_FRACTION + (1 - START_FRACTION) * epoch / curriculum_epochs)
    scores = np.array([confidence.get(clip_ids[p], -math.inf) for p in positions])
    order = np.argsort(-scores, kind="stable")
    keep = max(1, math.ceil(fraction * len(positions)))
    return np.asarray(positions)[order[:keep]]
