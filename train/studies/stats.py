"""Spread and confidence intervals: train-fusion's summary and the report (over folds, each fold the mean of
its seeds: `train/metrics.py` `per_fold_means`), and `mmfer ablate` (over its folds x seeds values).

Inputs are plain value lists or {(fold, seed): value} dicts; outputs are floats. `mmfer ablate`'s intervals
treat the folds x seeds values as independent: seeds of one fold share test actors, so read them as a guide
to the spread, not as exact coverage.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as scipy_stats

from mmfer.train.metrics import sample_std

CONFIDENCE = 0.95


def mean_std_ci(values: list[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """mean, sample std (ddof=1, as train-fusion's summary), and the t-interval of the mean (std and
    interval NaN for one value: undefined, not 0)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 1}
    std = sample_std(x)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * std / math.sqrt(x.size)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": int(x.size)}


def paired_difference(values: dict[tuple, float], reference: dict[tuple, float],
                      confidence: float = CONFIDENCE) -> dict[str, float]:
    """mean_std_ci of value - reference over the (fold, seed) keys both have (the paired differences)."""
    keys = sorted(set(values) & set(reference))
    return mean_std_ci([values[k] - reference[k] for k in keys], confidence)
