"""Folds match the published RAVDESS actor groups, and the leakage guard refuses leaking splits."""

import pandas as pd
import pytest

from mmfer.core.config import SplitConfig
from mmfer.core.errors import ConfigError
from mmfer.core.splits import (Fold, LeakageError, check_no_leakage, clip_level_validation, make_folds, ravdess_folds,
                               select_folds)


def clip_table():
    rows = []
    for actor in range(1, 25):
        for emotion in range(8):
            rec = f"01-{emotion + 1:02d}-01-01-01-{actor:02d}"
            rows.append({"clip_id": "01-" + rec, "actor": actor, "recording_id": rec, "label": emotion})
    return pd.DataFrame(rows)


def test_six_folds_are_the_published_actor_groups():
    folds = ravdess_folds(num_val_actors=SplitConfig().num_val_actors)
    assert [f.test_actors for f in folds] == [tuple(range(4 * k - 3, 4 * k + 1)) for k in range(1, 7)]
    for fold in folds:
        genders = {a % 2 for a in fold.test_actors}
        assert genders == {0, 1}                      # 2 male (odd) + 2 female (even)
        assert len(fold.val_actors) == 2 and {a % 2 for a in fold.val_actors} == {0, 1}
        assert set(fold.train_actors) | set(fold.val_actors) | set(fold.test_actors) == set(range(1, 25))
        assert len(fold.train_actors) == 18
        check_no_leakage(clip_table(), fold)
    assert folds[0].val_actors == (5, 6) and folds[5].val_actors == (1, 2)


def test_every_actor_is_tested_exactly_once():
    tested = [a for f in ravdess_folds(num_val_actors=2) for a in f.test_actors]
    assert sorted(tested) == list(range(1, 25))


def test_leaking_actor_is_refused():
    fold = Fold("bad", train_actors=tuple(range(1, 21)), val_actors=(21,), test_actors=(20, 22, 23, 24))
    with pytest.raises(LeakageError, match="actors \\[20\\] are in both train and test"):
        check_no_leakage(clip_table(), fold)


def test_leaking_recording_is_refused():
    table = clip_table()
    # The same take as a video-only file credited to a test actor: a recording shared between parts.
    leak = table.iloc[[0]].assign(clip_id="02-x", actor=24)
    with pytest.raises(LeakageError, match="recording .* is in test and train"):
        check_no_leakage(pd.concat([table, leak]), ravdess_folds(num_val_actors=2)[0])


def test_fixed_and_file_protocols(tmp_path):
    (fixed,) = make_folds("fixed", num_val_actors=2, fold_file=None, clips=None, num_folds=5, val_fraction=0.1, val_seed=0)
    assert fixed.test_actors == (21, 22, 23, 24)
    check_no_leakage(clip_table(), fixed)
    fold_file = tmp_path / "folds.yaml"
    fold_file.write_text("- {name: a, test_actors: [1, 2], val_actors: [3]}\n")
    (fold,) = make_folds("file", num_val_actors=2, fold_file=str(fold_file), all_actors=list(range(1, 7)),
                         clips=None, num_folds=5, val_fraction=0.1, val_seed=0)
    assert fold.train_actors == (4, 5, 6) and fold.name == "a"


def dfew_sized_table(num_clips: int = 11_697, num_classes: int = 7) -> pd.DataFrame:
    """A DFEW-sized clip table: each clip its own actor, 5 official folds, unbalanced classes (fear the rarest)."""
    import numpy as np
    rng = np.random.default_rng(0)
    labels = rng.choice(num_classes, num_clips, p=[0.22, 0.2, 0.17, 0.15, 0.14, 0.1, 0.02])
    names = ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"]
    ids = [f"{n:05d}" for n in range(1, num_clips + 1)]
    return pd.DataFrame({"clip_id": ids, "actor": range(1, num_clips + 1), "label": labels,
                         "emotion": [names[i] for i in labels], "recording_id": ids,
                         "fold": rng.integers(1, 6, num_clips)})


@pytest.mark.slow   # five folds of a DFEW-sized table (~55 s on 2 shared cores)
def test_clip_level_validation_is_a_stratified_fraction_of_each_fold():
    from mmfer.core.splits import (assign_parts, check_validation, is_clip_level, resolve_protocol,
                                       validation_counts)
    table = dfew_sized_table()
    assert is_clip_level(table) and resolve_protocol("auto", dataset="dfew", clips=table) == "manifest"
    split = SplitConfig()
    folds = make_folds("manifest", num_val_actors=split.num_val_actors, fold_file=None, clips=table, num_folds=5,
                       val_fraction=split.val_fraction, val_seed=split.val_seed)
    assert len(folds) == 5
    for k, fold in enumerate(folds, start=1):
        check_no_leakage(table, fold)
        part = assign_parts(table, fold)
        assert set(table["fold"][part == "test"]) == {k}
        trainable = table[part.isin(["train", "val"])]
        assert len(trainable) == (part == "train").sum() + (part == "val").sum() == (table["fold"] != k).sum()
        counts = validation_counts(table, fold)
        for name, group in trainable.groupby("emotion"):   # round(0.1 * n) of every class: stratified
            assert counts[name] == round(0.1 * len(group)), (k, name, counts[name], len(group))
        assert 0.095 < sum(counts.values()) / len(trainable) < 0.105
    check_validation(table, folds, allow_small=False, cache_path="dfew")
    again = make_folds("manifest", num_val_actors=2, fold_file=None, clips=table.sample(frac=1, random_state=1),
                       num_folds=5, val_fraction=0.1, val_seed=0)
    assert [f.val_actors for f in again] == [f.val_actors for f in folds]   # seeded: not the table's order
    other = make_folds("manifest", num_val_actors=2, fold_file=None, clips=table, num_folds=5, val_fraction=0.1, val_seed=1)
    assert other[0].val_actors != folds[0].val_actors


def test_a_validation_set_without_a_training_class_is_refused_unless_allowed(caplog):
    from mmfer.core.errors import ConfigError
    from mmfer.core.splits import check_validation
    table = dfew_sized_table(1000)
    table = table.drop(columns=["fold"]).assign(split=["test"] * 200 + ["val"] * 2 + ["train"] * 798)
    (fold,) = make_folds("manifest", num_val_actors=2, fold_file=None, clips=table, num_folds=5, val_fraction=0.1, val_seed=0)
    assert len(fold.val_actors) == 2   # a given split column is kept as given ...
    with pytest.raises(ConfigError, match=r"validation too small to choose with in 1 fold\(s\): manifest: its 2 "
                                          r"validation clip\(s\) hold no clip of class\(es\) .*split.allow_small_val=true"):
        check_validation(table, [fold], allow_small=False, cache_path="c")   # ... and refused: 2 clips, 7 classes
    check_validation(table, [fold], allow_small=True, cache_path="c")
    assert "validation clip(s) hold no clip" in caplog.text


def test_actor_level_validation_comes_from_the_actors_the_cache_holds():
    from mmfer.core.labels import CREMA_D_ACTORS
    from mmfer.core.splits import runnable_folds
    # 12 CREMA-D actors, from every one of the 5 blocks (18 actors each, the last 19): 2 or 3 per block.
    actors = [CREMA_D_ACTORS[i] for i in (0, 5, 10, 18, 25, 30, 36, 45, 54, 60, 72, 80)]
    table = pd.DataFrame([{"clip_id": f"{a}_{e}", "actor": a, "label": e, "recording_id": f"{a}_{e}"}
                          for a in actors for e in range(6)])
    folds = make_folds("crema-d-5fold", num_val_actors=2, fold_file=None, all_actors=actors, clips=table, num_folds=5, val_fraction=0.1, val_seed=0)
    runnable, skipped = runnable_folds(table, folds, chosen=False, cache_path="c")
    assert len(runnable) == 5 and not skipped
    for fold in folds:
        assert len(fold.val_actors) == 2 and set(fold.val_actors) <= set(actors) - set(fold.test_actors)
        check_no_leakage(table, fold)
    # the full cache keeps the published choice: the first 2 actors of the next block
    full = make_folds("crema-d-5fold", num_val_actors=2, fold_file=None, clips=None, num_folds=5, val_fraction=0.1, val_seed=0)
    assert full[0].val_actors == tuple(CREMA_D_ACTORS[18:20])
    # RAVDESS actors 1..8: fold 2 (tests 5-8) validates on actors it holds (1, 2), not on the absent 9, 10
    ravdess = clip_table()[lambda t: t["actor"] <= 8]
    folds = make_folds("ravdess-6fold", num_val_actors=2, fold_file=None, all_actors=list(range(1, 9)), clips=ravdess,
                       num_folds=5, val_fraction=0.1, val_seed=0)
    assert folds[0].val_actors == (5, 6) and folds[1].val_actors == (1, 2)
    assert [f.name for f in runnable_folds(ravdess, folds, chosen=False, cache_path="c")[0]] == ["fold1", "fold2"]


def test_a_fold_carries_its_protocol_number_through_selection_and_restriction():
    """One identity: the number `--folds` takes is the fold's own (`Fold.number`), kept by every later step."""
    settings = dict(num_val_actors=2, fold_file=None, num_folds=5, val_fraction=0.1, val_seed=0)
    folds = make_folds("ravdess-6fold", clips=None, **settings)
    assert [(f.name, f.number) for f in folds] == [(f"fold{k}", k) for k in range(1, 7)]
    chosen = select_folds(folds, "3,1", protocol="ravdess-6fold")   # in the order given
    assert [(f.name, f.number) for f in chosen] == [("fold3", 3), ("fold1", 1)]
    assert chosen[0].restricted_to([1, 2, 9, 10, 11]).number == 3
    assert select_folds(folds, "all", protocol="ravdess-6fold") == folds
    with pytest.raises(ConfigError, match="folds 1,7: split.protocol ravdess-6fold has 6 fold\\(s\\), numbered 1..6"):
        select_folds(folds, "1,7", protocol="ravdess-6fold")
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        select_folds(folds, "one", protocol="ravdess-6fold")
    # a manifest's fold column 3 and 7: folders fold3 and fold7, protocol folds 1 and 2
    table = pd.DataFrame({"clip_id": [f"c{i}" for i in range(8)], "actor": range(1, 9), "label": [0, 1] * 4,
                          "fold": [3, 3, 3, 3, 7, 7, 7, 7]})
    column = make_folds("manifest", clips=table, **settings)
    assert [(f.name, f.number) for f in column] == [("fold3", 1), ("fold7", 2)]
    assert select_folds(column, "2", protocol="manifest")[0].name == "fold7"
    assert clip_level_validation(column[1], table, val_fraction=0.5, val_seed=0).number == 2
