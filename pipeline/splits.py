"""Speaker-independent splits and the leakage guard that runs before every training.

`auto` picks the cache's dataset's protocol. RAVDESS: the 6-fold protocol of published audio-visual
results (HiCMAE's split files): fold k tests actors 4k-3..4k and trains on the other 20. CREMA-D:
HiCMAE's 5 folds of consecutive actors (18 each, the last 19). A manifest: its fold or split column,
else k folds of consecutive speakers. Validation actors for early stopping come from the training
actors only: the first `num_val_actors` of the next fold's group (RAVDESS fold 1 -> actors 5, 6).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmfer.pipeline.errors import BadInputError, ConfigError
from mmfer.pipeline.labels import CREMA_D_ACTORS, RAVDESS_NUM_ACTORS
from mmfer.pipeline.overrides import read_yaml

log = logging.getLogger(__name__)

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

    def restricted_to(self, actors: list[int]) -> "Fold":
        """The same fold listing only `actors` (those the cache holds), so logs, summaries and model
        cards name the actors a run really used."""
        keep = set(actors)
        return Fold(self.name, *(tuple(a for a in getattr(self, f"{p}_actors") if a in keep) for p in ("train", "val", "test")))

    def as_dict(self) -> dict:
        return {"name": self.name, "train_actors": list(self.train_actors),
                "val_actors": list(self.val_actors), "test_actors": list(self.test_actors)}


def ravdess_folds(*, num_val_actors: int) -> list[Fold]:
    """The six speaker-independent folds, validation actors taken from the next fold's group."""
    folds = []
    for k in range(1, RAVDESS_NUM_ACTORS // ACTORS_PER_FOLD + 1):
        test = tuple(range(4 * k - 3, 4 * k + 1))
        rest = [a for a in range(1, RAVDESS_NUM_ACTORS + 1) if a not in test]
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
    if Path(path).suffix in (".yaml", ".yml"):
        entries = read_yaml(path)
    else:
        try:
            entries = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err}); fix the fold file") from None
    folds = []
    for i, entry in enumerate(entries):
        try:
            test, val = tuple(entry["test_actors"]), tuple(entry["val_actors"])
        except (KeyError, TypeError):
            raise ConfigError(f"{path}: fold {i} needs test_actors and val_actors lists") from None
        train = tuple(a for a in all_actors if a not in test and a not in val)
        folds.append(Fold(str(entry.get("name", f"fold{i + 1}")), train, val, test))
    return folds


def block_folds(actors: list[int], *, num_folds: int, num_val_actors: int) -> list[Fold]:
    """`num_folds` folds of consecutive actors (len // num_folds each, the last takes the rest); fold k tests
    block k, validates on the first `num_val_actors` of the next block, trains on the others."""
    actors = sorted(actors)
    if len(actors) < num_folds:
        raise ConfigError(f"{num_folds} speaker folds need at least {num_folds} speakers, the cache has {len(actors)}; "
                          "lower split.num_folds")
    size = len(actors) // num_folds
    blocks = [actors[i * size:(i + 1) * size] for i in range(num_folds - 1)] + [actors[(num_folds - 1) * size:]]
    folds = []
    for k, test in enumerate(blocks):
        rest = [a for b in blocks[k + 1:] + blocks[:k] for a in b]   # the next block first
        val = tuple(sorted(rest[:num_val_actors]))
        folds.append(Fold(f"fold{k + 1}", tuple(a for a in actors if a not in val and a not in test), val, tuple(test)))
    return folds


def column_folds(clips: pd.DataFrame, *, num_val_actors: int) -> list[Fold]:
    """Folds from a manifest's `fold` column (fold k tests the speakers of fold k; validation: the first
    `num_val_actors` of fold k+1) or `split` column (one fold "manifest").

    Raises:
        LeakageError: a speaker has clips in two folds / splits (its clips would leak across them).
    """
    column = "fold" if "fold" in clips and clips["fold"].notna().all() else "split"
    groups: dict[object, set[int]] = {}
    for value, actor in zip(clips[column], clips["actor"]):
        groups.setdefault(value, set()).add(int(actor))
    seen: dict[int, object] = {}
    for value in sorted(groups, key=str):
        for actor in groups[value]:
            if actor in seen:
                who = _speaker_name(clips, actor)
                raise LeakageError(f"speaker {who} has clips in {column} {seen[actor]} and {column} {value}; "
                                   f"give each speaker one {column} in the manifest")
            seen[actor] = value
    if column == "split":
        return [Fold("manifest", *(tuple(sorted(groups.get(p, ()))) for p in ("train", "val", "test")))]
    order = sorted(groups)
    folds = []
    for i, value in enumerate(order):
        test = sorted(groups[value])
        nxt = sorted(groups[order[(i + 1) % len(order)]]) if len(order) > 1 else []
        val = tuple(nxt[:num_val_actors])
        train = tuple(sorted(a for a in seen if a not in val and a not in test))
        folds.append(Fold(f"fold{value}", train, val, tuple(test)))
    return folds


def _speaker_name(clips: pd.DataFrame, actor: int) -> str:
    if "speaker" in clips:
        names = clips.loc[clips["actor"] == actor, "speaker"]
        if len(names):
            return str(names.iloc[0])
    return str(actor)


PROTOCOL_DATASETS = {"ravdess-6fold": "ravdess", "fixed": "ravdess", "crema-d-5fold": "crema-d"}
"""Protocols written in one dataset's actor numbers: on another dataset's cache they would test no clip."""


def resolve_protocol(protocol: str, *, dataset: str | None, clips: pd.DataFrame) -> str:
    """`auto` -> the dataset's own protocol (a manifest: `manifest` when it has a fold/split column, else
    speaker-kfold); any other protocol as given.

    Raises:
        ConfigError: a protocol of one dataset's actors (PROTOCOL_DATASETS) asked for on another dataset's cache.
    """
    if protocol != "auto":
        owner = PROTOCOL_DATASETS.get(protocol)
        if owner is not None and dataset is not None and dataset != owner:
            raise ConfigError(f"split.protocol={protocol} is {owner}'s split by actor number, and this cache holds "
                              f"{dataset}; use split.protocol=auto (its own protocol), speaker-kfold, manifest or file")
        return protocol
    if dataset == "crema-d":
        return "crema-d-5fold"
    if dataset in ("dfew", "mafw"):
        return "manifest"   # the official sets, recorded in the clip table's fold column
    if dataset == "manifest":
        return "manifest" if ("fold" in clips and clips["fold"].notna().all()) or \
            ("split" in clips and clips["split"].notna().all()) else "speaker-kfold"
    return "ravdess-6fold"


def make_folds(protocol: str, *, num_val_actors: int, fold_file: str | None, all_actors: list[int] | None = None,
               clips: pd.DataFrame | None, num_folds: int) -> list[Fold]:
    """The folds of a resolved protocol (see `resolve_protocol`); `clips` (the clip table) is needed by
    manifest and speaker-kfold, `num_folds` (split.num_folds) by speaker-kfold."""
    if protocol == "crema-d-5fold":
        return block_folds(list(CREMA_D_ACTORS), num_folds=5, num_val_actors=num_val_actors)
    if protocol in ("manifest", "speaker-kfold"):
        if clips is None:
            raise ConfigError(f"split.protocol {protocol} needs the cache's clip table")
        if protocol == "manifest":
            return column_folds(clips, num_val_actors=num_val_actors)
        return block_folds(sorted(int(a) for a in clips["actor"].unique()), num_folds=num_folds, num_val_actors=num_val_actors)
    if protocol in ("ravdess-6fold", "auto"):
        return ravdess_folds(num_val_actors=num_val_actors)
    if protocol == "fixed":
        return fixed_split()
    if protocol == "file":
        if not fold_file:
            raise ConfigError("split.protocol=file needs split.fold_file (a YAML/JSON list of {name, test_actors, val_actors})")
        return folds_from_file(fold_file, all_actors or list(range(1, RAVDESS_NUM_ACTORS + 1)))
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
    """One line per fold: the actors the clip table holds and their clip counts per part, plus the
    fold's actors it lacks (each run prints this)."""
    present = set(int(a) for a in clip_table["actor"])
    lines = []
    for fold in folds:
        part = assign_parts(clip_table, fold)
        counts = {p: int((part == p).sum()) for p in ("train", "val", "test")}
        actors = {p: [a for a in getattr(fold, f"{p}_actors") if a in present] for p in ("train", "val", "test")}
        absent = sorted(a for p in ("train", "val", "test") for a in getattr(fold, f"{p}_actors") if a not in present)
        lines.append(
            f"{fold.name}: test actors {actors['test']} ({counts['test']} clips), "
            f"val actors {actors['val']} ({counts['val']} clips), "
            f"train {len(actors['train'])} actors ({counts['train']} clips)"
            + (f"; not in the cache: actors {_ranges(absent)}" if absent else ""))
    return "\n".join(lines)


def why_fold_cannot_run(clip_table: pd.DataFrame, fold: Fold) -> str | None:
    """None when every part of the fold (train, val, test) has usable clips; else why not, naming the
    part's actors and the actors the clip table holds."""
    part = assign_parts(clip_table, fold)
    empty = [p for p in ("test", "val", "train") if not (part == p).any()]
    if not empty:
        return None
    present = sorted(set(int(a) for a in clip_table["actor"]))
    return "; ".join(f"no usable clips of its {p} actors {list(getattr(fold, f'{p}_actors'))}" for p in empty) + \
        f" (the cache holds actors {_ranges(present)})"


def runnable_folds(clips: pd.DataFrame, folds: list[Fold], *, chosen: bool, cache_path: str) -> tuple[list[Fold], dict[str, str]]:
    """(the folds every part of which has usable clips, {fold name: why not} of the others).

    A cache with some actors only cannot run every fold. Folds the user chose by number must all run;
    of `--folds all` the others are skipped with a warning (and listed in summary.json).

    Raises:
        ConfigError: a chosen fold cannot run, or none can; the message names each fold and why.
    """
    why = {fold.name: reason for fold in folds if (reason := why_fold_cannot_run(clips, fold))}
    ok = [fold for fold in folds if fold.name not in why]
    if why and (chosen or not ok):
        lines = "; ".join(f"{name}: {reason}" for name, reason in why.items())
        hint = f"drop {', '.join(why)} from --folds, or " if ok else ""
        raise ConfigError(f"{cache_path}: {len(why)} of {len(folds)} fold(s) cannot run: {lines}; {hint}choose a split "
                          "that fits the cache's actors (split.protocol=file with split.fold_file)")
    for name, reason in why.items():
        log.warning("%s: skipped: %s", name, reason)
    return ok, why


def _ranges(actors: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out: list[str] = []
    for a in sorted(actors):
        if out and a == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{a}"
        else:
            out.append(str(a))
    return ", ".join(out)


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

