"""Folds match the published RAVDESS actor groups, and the leakage guard refuses leaking splits."""

import pandas as pd
import pytest

from mmfer.pipeline.config import SplitConfig
from mmfer.pipeline.splits import Fold, LeakageError, check_no_leakage, make_folds, ravdess_folds


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
    (fixed,) = make_folds("fixed", num_val_actors=2, fold_file=None, clips=None, num_folds=5)
    assert fixed.test_actors == (21, 22, 23, 24)
    check_no_leakage(clip_table(), fixed)
    fold_file = tmp_path / "folds.yaml"
    fold_file.write_text("- {name: a, test_actors: [1, 2], val_actors: [3]}\n")
    (fold,) = make_folds("file", num_val_actors=2, fold_file=str(fold_file), all_actors=list(range(1, 7)),
                         clips=None, num_folds=5)
    assert fold.train_actors == (4, 5, 6) and fold.name == "a"
