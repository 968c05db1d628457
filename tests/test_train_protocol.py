"""What a run's numbers mean: seeds by fold number, the sample std, the selection rule and protocol card,
and the splits that reused inputs (pretrained branches, curriculum files, tuned configs) were made on.

Tiny early-fusion runs on the synthetic store (tests/synthetic_store.py) with two folds.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from synthetic_store import make_store
from train_helpers import tiny_config, write_folds

from mmfer.train.loop import train


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("protocol")
    return {"root": root, "cache": make_store(root / "cache", repetitions=1), "folds": write_folds(root / "folds.json")}


@pytest.fixture(scope="module")
def both_folds(store) -> dict:
    """folds=all over the two folds (mixup on, so the per-epoch random draws matter)."""
    return train(tiny_config(store["cache"], store["folds"], store["root"] / "all", **{"training.mixup_alpha": 0.4}))


def test_a_fold_alone_equals_the_same_fold_of_a_full_run(store, both_folds, tmp_path):
    alone = train(tiny_config(store["cache"], store["folds"], tmp_path / "fold2", folds="2",
                              **{"training.mixup_alpha": 0.4}))
    assert list(alone["folds"]) == ["fold2"] and alone["amp_dtype"] == "float32"   # CPU: no AMP, recorded
    for key in ("accuracy", "uar", "f1_macro", "f1_weighted", "best_epoch", "val_f1_macro"):
        assert alone["folds"]["fold2"][key] == both_folds["folds"]["fold2"][key], key
    # the same weights, shuffles and mixup draws: identical losses and test probabilities, not just scores
    losses = [[json.loads(line)["loss"] for line in (run / "fold2" / "metrics.jsonl").read_text().splitlines()]
              for run in (tmp_path / "fold2", store["root"] / "all")]
    assert losses[0] == losses[1]
    a = pd.read_csv(tmp_path / "fold2" / "predictions.csv")
    b = pd.read_csv(store["root"] / "all" / "predictions.csv").query("fold == 'fold2'").reset_index(drop=True)
    diff = (a.filter(like="prob_") - b.filter(like="prob_")).abs().to_numpy()
    assert diff.max() == 0, f"max diff {diff.max()}, mean {diff.mean()}"
