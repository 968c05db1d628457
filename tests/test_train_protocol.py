"""What a run's numbers mean: seeds by fold number, the sample std, the selection rule and protocol card,
and the splits that reused inputs (pretrained branches, curriculum files) were made on; tuned configs are
checked in test_ablate.py, next to the tune study that writes them.

Tiny early-fusion runs on the synthetic store (tests/synthetic_store.py) with two folds.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from synthetic_store import make_store
from train_helpers import tiny_config, write_folds

from mmfer.core.errors import BadInputError
from mmfer.core.labels import EMOTIONS
from mmfer.core.splits import LeakageError
from mmfer.train.loop import train


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("protocol")
    return {"root": root, "cache": make_store(root / "cache", repetitions=1), "folds": write_folds(root / "folds.json")}


@pytest.fixture(scope="module")
def both_folds(store) -> dict:
    """folds=all over the two folds (mixup on, so the per-epoch random draws matter)."""
    return train(tiny_config(store["cache"], store["folds"], store["root"] / "all", **{"training.mixup_alpha": 0.4}))


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
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


def test_pretrained_branch_must_have_trained_on_this_folds_training_actors(store, tmp_path):
    """Stage 1's fold 1 trained on actors 5-8; fold 2 tests 3, 4 and trains on 1, 2, 7, 8: refused."""
    stage1 = tmp_path / "stage1"
    train(dataclasses.replace(tiny_config(store["cache"], store["folds"], stage1, variant="audio", epochs=1, folds="1"),
                              pretrain="audio"))
    fold1_file = stage1 / "fold1" / "audio_branch.safetensors"
    for source in (str(fold1_file), str(stage1)):   # one file for every fold, or a run folder lacking fold2
        with pytest.raises((LeakageError, FileNotFoundError)) as err:
            train(dataclasses.replace(tiny_config(store["cache"], store["folds"], tmp_path / "stage2", epochs=1),
                                      audio_branch=source))
        assert not (tmp_path / "stage2" / "fold1" / "checkpoints" / "best.pt").exists(), "checked before any fold trained"
    # the file alone, for fold 2: the message names the file, the actors and their part in fold 2
    with pytest.raises(LeakageError, match=r"audio_branch\.safetensors.*actors 5 \(val\), 6 \(val\)"):
        train(dataclasses.replace(tiny_config(store["cache"], store["folds"], tmp_path / "s2", epochs=1, folds="2"),
                                  audio_branch=str(fold1_file)))
    # another split that tests actors stage 1 trained on is refused too; the same split loads (test_train.py)
    other = write_folds(tmp_path / "other.json", [{"name": "fold1", "test_actors": [5, 6], "val_actors": [3, 4]}])
    with pytest.raises(LeakageError, match=r"5 \(test\), 6 \(test\)"):
        train(dataclasses.replace(tiny_config(store["cache"], other, tmp_path / "s3", epochs=1), audio_branch=str(stage1)))
    # a branch file that records no split cannot be checked: refused
    from safetensors.torch import load_file, save_file
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(fold1_file)), str(bare))
    with pytest.raises(LeakageError, match="records no split"):
        train(dataclasses.replace(tiny_config(store["cache"], store["folds"], tmp_path / "s4", epochs=1, folds="1"),
                                  audio_branch=str(bare)))


def test_curriculum_from_models_that_saw_this_folds_test_actors_is_refused(store, both_folds, tmp_path):
    """both_folds' fold 1 model (trained on actors 5-8) scored actors 1, 2; a fold that trains on 1, 2 and
    tests 5, 6 would order its training clips by a model that learned its test actors' labels."""
    predictions = store["root"] / "all" / "predictions.csv"
    other = write_folds(tmp_path / "other.json", [{"name": "fold1", "test_actors": [5, 6], "val_actors": [3, 4]}])
    cfg = tiny_config(store["cache"], other, tmp_path / "run", epochs=1, **{"training.curriculum": str(predictions)})
    with pytest.raises(LeakageError, match=r"predictions\.csv \(scores by its fold1 model\).*5 \(test\), 6 \(test\)"):
        train(cfg)
    # the same run's own CV predictions: fold 2's training clips of actors 1, 2 were scored by a model that
    # trained on 5, 6 (fold 2's validation actors)
    with pytest.raises(LeakageError, match=r"fold1 model.*fold2 trains on"):
        train(tiny_config(store["cache"], store["folds"], tmp_path / "run2", epochs=1,
                          **{"training.curriculum": str(predictions)}))
    assert not list(tmp_path.glob("run*/fold*/checkpoints/*.pt")), "checked before any fold trained"
    # without the summary.json beside it, the models' actors are unknown: refused
    alone = tmp_path / "alone" / "predictions.csv"
    alone.parent.mkdir()
    alone.write_bytes(predictions.read_bytes())
    with pytest.raises(BadInputError, match="no readable summary.json beside it"):
        train(tiny_config(store["cache"], store["folds"], tmp_path / "run3", epochs=1, **{"training.curriculum": str(alone)}))


def test_summary_reports_the_last_epoch_and_a_protocol_card(store, both_folds):
    from mmfer.train.report import format_summary_table

    on_disk = json.loads((store["root"] / "all" / "summary.json").read_text())
    assert on_disk["protocol_card"] == both_folds["protocol_card"]
    cards = {c["fold"]: c for c in on_disk["protocol_card"]}
    assert cards["fold2"]["test_actors"] == [3, 4] and cards["fold2"]["val_actors"] == [5, 6]
    assert cards["fold2"]["seed"] == 7 and cards["fold2"]["fold_number"] == 2
    assert "best validation f1_macro" in cards["fold2"]["selection"] and "validation actors only" in on_disk["selection"]
    for name, fold in on_disk["folds"].items():
        assert set(fold["last_epoch"]) == {"accuracy", "uar", "f1_macro", "f1_weighted"}
        assert cards[name]["selected_epoch"] == fold["best_epoch"] and cards[name]["epochs_run"] == fold["epochs_run"] == 2
        if fold["best_epoch"] == fold["epochs_run"]:   # the selected epoch is the last: the same model, the same score
            assert fold["last_epoch"]["f1_macro"] == fold["f1_macro"]
    values = [f["last_epoch"]["f1_macro"] for f in on_disk["folds"].values()]
    assert on_disk["mean_last_epoch"]["f1_macro"] == pytest.approx(sum(values) / 2)
    table = format_summary_table(on_disk)
    assert "last-ep F1" in table and "selection: each fold's test score is that of the epoch" in table
    # the validation set's size per class: actors 5, 6, one clip of each emotion; actor 6's calm clip failed
    per_class = {e: 1 if e == "calm" else 2 for e in EMOTIONS}
    assert cards["fold2"]["val_clips_per_class"] == per_class
    assert ("fold2: test actors [3, 4], val actors [5, 6] (15 clips: " + ", ".join(f"{e} {n}" for e, n in per_class.items())
            + "), seed 7 (fold number 2), epoch") in table


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_seeds_train_every_fold_once_per_seed_into_one_run(store, tmp_path):
    """`--seeds 7,8`: each fold per seed in its own folder; the summary's mean is over all, its std and interval
    over the folds, each fold the mean of its seeds (a fold's seeds share its test clips: four rows of two folds
    are two samples, not four)."""
    from mmfer.pipeline.bundle import choose_folds, run_fold_numbers
    from mmfer.pipeline.command_config import ReportConfig
    from mmfer.pipeline.report import read_run
    from mmfer.train.metrics import sample_std
    from mmfer.train.report import format_summary_table
    from mmfer.train.studies.stats import mean_std_ci

    both = train(tiny_config(store["cache"], store["folds"], tmp_path / "seeds", seeds="7,8"))
    names = ["fold1-seed7", "fold2-seed7", "fold1-seed8", "fold2-seed8"]
    assert list(both["folds"]) == names and both["seeds"] == [7, 8]
    assert [(c["fold"], c["fold_number"], c["seed"]) for c in both["protocol_card"]] == [
        ("fold1-seed7", 1, 7), ("fold2-seed7", 2, 7), ("fold1-seed8", 1, 8), ("fold2-seed8", 2, 8)]
    alone = train(tiny_config(store["cache"], store["folds"], tmp_path / "seed7", folds="2", seed=7))
    for key in ("accuracy", "f1_macro", "best_epoch"):   # a seed's model does not depend on the other seeds
        assert both["folds"]["fold2-seed7"][key] == alone["folds"]["fold2"][key], key
    losses = {seed: [json.loads(line)["loss"] for line in (tmp_path / "seeds" / f"fold2-seed{seed}" / "metrics.jsonl")
                     .read_text().splitlines()] for seed in (7, 8)}
    assert losses[7] != losses[8]   # the seeds really differ
    score = {name: both["folds"][name]["f1_macro"] for name in names}
    fold_means = [(score[f"fold{k}-seed7"] + score[f"fold{k}-seed8"]) / 2 for k in (1, 2)]
    assert both["mean"]["f1_macro"] == pytest.approx(sum(score.values()) / 4)
    assert both["std"]["f1_macro"] == pytest.approx(sample_std(fold_means))
    expected = mean_std_ci(fold_means)
    assert both["ci95"]["f1_macro"] == pytest.approx([expected["ci_low"], expected["ci_high"]])
    assert both["std_kind"] == "sample std (ddof=1) over folds, each fold the mean of its 2 seeds"
    assert set(pd.read_csv(tmp_path / "seeds" / "predictions.csv")["fold"]) == set(names)
    assert "95% t-interval of the mean over 2 folds (each the mean of its 2 seeds)" in format_summary_table(both)
    page = read_run(tmp_path / "seeds", ReportConfig(thumbnails=False))["aggregate"]["validation"]["f1_macro"]
    assert page["n"] == 2 and page["ci_low"] == pytest.approx(expected["ci_low"])   # the report says the same
    # predict/export --fold 2: every seed's model of that fold, averaged
    assert choose_folds(names, "2", False, "run", run_fold_numbers(both)) == ["fold2-seed7", "fold2-seed8"]
