"""The field's metrics for one fold (scikit-learn) and their mean / standard deviation across folds.

accuracy is WAR (weighted average recall), uar is balanced accuracy (unweighted average recall).
Spread across folds is the sample standard deviation (ddof=1), as `mmfer ablate` reports it; with one fold
it is undefined and given as None (null in summary.json), never 0.
"""

from __future__ import annotations

import numpy as np


HEADLINE = ("accuracy", "uar", "f1_macro", "f1_weighted")


def compute_metrics(labels: np.ndarray, preds: np.ndarray, *, class_names: tuple[str, ...]) -> dict:
    """labels, preds: (N,) int class ids; class_names: the C names (the cache's label_names). Returns headline metrics, per_class P/R/F1/support, confusion_matrix."""
    # imported here: predict, export and the report read HEADLINE from this module and never score (scikit-learn
    # costs ~2 s of a fresh process's start-up)
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_recall_fscore_support)

    classes = list(range(len(class_names)))
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("compute_metrics: no clips to score")
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        # uar and f1_macro as scikit-learn (and the design guide) compute them: over the classes that occur
        "uar": float(balanced_accuracy_score(labels, preds)),
        "f1_macro": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(labels, preds, average="weighted", zero_division=0)),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
        "num_clips": int(len(labels)),
    }


def mean_nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class; labels (N,) int, probs (N, C) rows summing to 1.

    The validation loss a user compares across epochs: plain cross-entropy, without the training loss's label
    smoothing, mixup, auxiliary heads or augmentation, so it moves when macro-F1 on few clips cannot.
    """
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    if len(labels) == 0:
        raise ValueError("mean_nll: no clips to score")
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


STD_LABEL = "sample std (ddof=1) over folds"   # what summary.json's "std" and the printed table's ± mean


def sample_std(values) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values (undefined, not 0)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.std(ddof=1)) if x.size >= 2 else None


def seed_std_label(num_seeds: int) -> str:
    """STD_LABEL, saying that a fold's seeds were averaged first when there are several."""
    return STD_LABEL if num_seeds <= 1 else f"{STD_LABEL}, each fold the mean of its {num_seeds} seeds"


def per_fold_means(rows: list[dict], fold_keys: list, keys: tuple[str, ...] = HEADLINE) -> list[dict]:
    """One row per fold from the rows of every trained (fold, seed): each key averaged over the rows of the same
    fold key, folds in first-seen order. Seeds of one fold are scored on the same test clips, so they are not
    independent samples of the protocol: spread and interval are taken over folds, each the mean of its seeds
    (with one seed per fold the rows come back as they are)."""
    groups: dict = {}
    for key, row in zip(fold_keys, rows, strict=True):
        groups.setdefault(key, []).append(row)
    return [{k: float(np.mean([r[k] for r in group])) for k in keys} for group in groups.values()]


def aggregate_folds(fold_metrics: list[dict], keys: tuple[str, ...] = HEADLINE) -> tuple[dict, dict]:
    """(mean, sample std) of the headline metrics over folds; std values are None for one fold."""
    values = {k: np.array([m[k] for m in fold_metrics], dtype=np.float64) for k in keys}
    return ({k: float(v.mean()) for k, v in values.items()}, {k: sample_std(v) for k, v in values.items()})
