"""Speaker-independent splits and the leakage guard that runs before every training.

The default is the 6-fold protocol of published RAVDESS audio-visual results (HiCMAE's split files):
fold k tests actors 4k-3..4k (two male, two female) and trains on the other 20. Validation actors
for early stopping come from the training actors only: the first `num_val_actors` of the next fold's
group (fold 1 -> actors 5, 6; fold 6 -> actors 1, 2), one male and one female for the default 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from mmfer.pipeline.errors import BadInputError

NUM_ACTORS = 24
ACTORS_PER_FOLD = 4
FIXED_SPLIT = {"train": list(range(1, 17)), "val": [17, 18, 19, 20], "test": [21, 22, 23, 24]}


class LeakageError(BadInputError, ValueError):
    """A split puts one actor or one recording in two of its parts."""


@dataclass(frozen=True)
class Fold:
    """One split: actors per part. Fold names are 1-based (`fold1` … `fold6`)."""

    name: str
    train_actors: tuple[int, ...]
    val_actors: tuple[int, ...]
    test_actors: tuple[int, ...]

    def part_of(self, actor: int) -> str | None:
        for part in ("train", "val", "test"):
            if actor in getattr(self, f"{part}_actors"):
                return part
        return None

    def as_dict(self) -> dict:
        return {"name": self.name, "train_actors": list(self.train_actors),
                "val_actors": list(self.val_actors), "test_actors": list(self.test_actors)}


def ravdess_folds(num_val_actors: int = 2) -> list[Fold]:
    """The six speaker-independent folds, validation actors taken from the next fold's group."""
    folds = []
    for k in range(1, NUM_ACTORS // ACTORS_PER_FOLD + 1):
        test = tuple(range(4 * k - 3, 4 * k + 1))
        rest = [a for a in range(1, NUM_ACTORS + 1) if a not in test]
        start = rest.index(4 * k + 1) if 4 * k + 1 in rest else 0
        ordered = rest[start:] + rest[:start]
        val = tuple(sorted(ordered[:num_val_actors]))
        train = tuple(a for a in rest if a not in val)
        folds.append(Fold(f"fold{k}", train, val, test))
    return folds


def fixed_split() -> list[Fold]:
    return [Fold("fixed", tuple(FIXED_SPLIT["train"]), tuple(FIXED_SPLIT["val"]), tuple(FIXED_SPLIT["test"]))]


def folds_from_file(path: str | Path, all_actors: list[int]) -> list[Fold]:
    """Folds from a YAML/JSON list of {name, test_actors, val_actors}; training takes every other actor."""
    text = Path(path).read_text()
    entries = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
    folds = []
    for i, entry in enumerate(entries):
        try:
            test, val = tuple(entry["test_actors"]), tuple(entry["val_actors"])
        except (KeyError, TypeError):
            raise ValueError(f"{path}: fold {i} needs test_actors and val_actors lists") from None
        train = tuple(a for a in all_actors if a not in test and a not in val)
        folds.append(Fold(str(entry.get("name", f"fold{i + 1}")), train, val, test))
    return folds


def make_folds(protocol: str, *, num_val_actors: int = 2, fold_file: str | None = None, all_actors: list[int] | None = None) -> list[Fold]:
    if protocol == "ravdess-6fold":
        return ravdess_folds(num_val_actors)
    if protocol == "fixed":
        return fixed_split()
    if protocol == "file":
        if not fold_file:
            raise ValueError("split.protocol=file needs split.fold_file")
        return folds_from_file(fold_file, all_actors or list(range(1, NUM_ACTORS + 1)))
    raise ValueError(f"unknown split.protocol {protocol!r}")


def assign_parts(clip_table: pd.DataFrame, fold: Fold) -> pd.Series:
    """'train' / 'val' / 'test' / None for each clip of the table, by its actor."""
    return clip_table["actor"].map(lambda a: fold.part_of(int(a)))


def check_no_leakage(clip_table: pd.DataFrame, fold: Fold) -> None:
    """Refuse a split that shares an actor or a recording between two of its parts.

    RAVDESS stores one take as 01 (AV), 02 (video-only) and 03 (audio-only) files: `recording_id`
    is the same for all three, so a random split by file would leak the take.

    Raises:
        LeakageError: naming the actor or recording and the two parts.
    """
    parts = {"train": set(fold.train_actors), "val": set(fold.val_actors), "test": set(fold.test_actors)}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = parts[a] & parts[b]
            if shared:
                raise LeakageError(f"{fold.name}: actors {sorted(shared)} are in both {a} and {b}")
    if "recording_id" in clip_table:
        part = assign_parts(clip_table, fold)
        per_recording = pd.DataFrame({"rec": clip_table["recording_id"], "part": part}).dropna()
        counts = per_recording.groupby("rec")["part"].nunique()
        leaking = counts[counts > 1]
        if len(leaking):
            rec = leaking.index[0]
            where = sorted(per_recording.loc[per_recording["rec"] == rec, "part"].unique())
            raise LeakageError(f"{fold.name}: recording {rec} is in {' and '.join(where)} ({len(leaking)} recordings leak)")


def describe_protocol(clip_table: pd.DataFrame, folds: list[Fold]) -> str:
    """One line per fold: actors and clip counts per part (each run prints this)."""
    lines = []
    for fold in folds:
        part = assign_parts(clip_table, fold)
        counts = {p: int((part == p).sum()) for p in ("train", "val", "test")}
        lines.append(
            f"{fold.name}: test actors {list(fold.test_actors)} ({counts['test']} clips), "
            f"val actors {list(fold.val_actors)} ({counts['val']} clips), "
            f"train {len(fold.train_actors)} actors ({counts['train']} clips)")
    return "\n".join(lines)


def check_reuse(fold: Fold, *, source: str, train_actors, val_actors=(), test_actors=None) -> None:
    """Refuse to reuse something learned on a split (branch weights, difficulty scores, a tuned config)
    for `fold` unless it learned from this fold's training actors only.

    train_actors / val_actors: the actors its model trained on / selected its epoch with. test_actors:
    when given, the split it was made on must test the same actors (a curriculum from another protocol).

    Raises:
        LeakageError: naming `source`, the actors it saw and the part of `fold` they belong to.
    """
    trained, selected = {int(a) for a in train_actors}, {int(a) for a in val_actors}
    outside = sorted(trained - set(fold.train_actors))
    if outside:
        parts = ", ".join(f"{a} ({fold.part_of(a) or 'not in this split'})" for a in outside)
        raise LeakageError(f"{source}: trained on actors {sorted(trained)}, but {fold.name} trains on "
                           f"{list(fold.train_actors)} only; actors {parts} are not this fold's training actors. "
                           "Make it with this run's split (same --split settings and fold).")
    seen_test = sorted(selected & set(fold.test_actors))
    if seen_test:
        raise LeakageError(f"{source}: its epoch was selected on actors {seen_test}, {fold.name}'s test actors; "
                           "make it with this run's split (same --split settings and fold).")
    if test_actors is not None and {int(a) for a in test_actors} != set(fold.test_actors):
        raise LeakageError(f"{source}: made on a split that tests actors {sorted(int(a) for a in test_actors)}, "
                           f"{fold.name} tests {list(fold.test_actors)}; make it with this run's split.")

