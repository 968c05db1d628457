"""Speaker-independent splits and the leakage guard that runs before every training.

`auto` picks the cache's dataset's protocol. RAVDESS: the 6-fold protocol of published audio-visual
results (HiCMAE's split files): fold k tests actors 4k-3..4k and trains on the other 20. CREMA-D:
HiCMAE's 5 folds of consecutive actors (18 each, the last 19). A manifest: its fold or split column,
else k folds of consecutive speakers. Validation actors for early stopping come from the training
actors the cache holds: the first `num_val_actors` of them from the next fold's group on (RAVDESS fold 1 ->
actors 5, 6). Where each clip is its own speaker (DFEW, MAFW, a manifest of one clip per speaker) validation
is instead a seeded, class-stratified `val_fraction` of each fold's training clips (`clip_level_validation`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from mmfer.core.errors import BadInputError, ConfigError
from mmfer.core.labels import CREMA_D_ACTORS, RAVDESS_NUM_ACTORS
from mmfer.core.overrides import read_yaml

log = logging.getLogger(__name__)

ACTORS_PER_FOLD = 4
FIXED_SPLIT = {"train": list(range(1, 17)), "val": [17, 18, 19, 20], "test": [21, 22, 23, 24]}


class LeakageError(BadInputError, ValueError):
    """A split puts one actor or one recording in two of its parts."""


@dataclass(frozen=True)
class Fold:
    """One split: actors per part, and its identity. `number` is the fold's protocol number (1-based: the
    number `train-fusion --folds`, the protocol card and `predict/export --fold` use; it also seeds the
    fold); 0 for a fold made outside a protocol. `name` names its folder (`fold1` … `fold6`, `fixed`,
    `manifest`, a fold file's names)."""

    name: str
    train_actors: tuple[int, ...]
    val_actors: tuple[int, ...]
    test_actors: tuple[int, ...]
    number: int = 0

    def part_of(self, actor: int) -> str | None:
        for part in ("train", "val", "test"):
            if actor in getattr(self, f"{part}_actors"):
                return part
        return None

    def restricted_to(self, actors: list[int]) -> "Fold":
        """The same fold listing only `actors` (those the cache holds), so logs, summaries and model
        cards name the actors a run really used."""
        keep = set(actors)
        return replace(self, **{f"{p}_actors": tuple(a for a in getattr(self, f"{p}_actors") if a in keep)
                                for p in ("train", "val", "test")})

    def as_dict(self) -> dict:
        return {"name": self.name, "train_actors": list(self.train_actors),
                "val_actors": list(self.val_actors), "test_actors": list(self.test_actors)}


def ravdess_folds(*, num_val_actors: int, present: list[int] | None = None) -> list[Fold]:
    """The six speaker-independent folds, validation actors taken from the next fold's group on, among the
    actors `present` in the cache (all 24 when None)."""
    folds = []
    for k in range(1, RAVDESS_NUM_ACTORS // ACTORS_PER_FOLD + 1):
        test = tuple(range(4 * k - 3, 4 * k + 1))
        rest = [a for a in range(1, RAVDESS_NUM_ACTORS + 1) if a not in test]
        start = rest.index(4 * k + 1) if 4 * k + 1 in rest else 0
        ordered = rest[start:] + rest[:start]
        val = _first_present(ordered, num_val_actors, present)
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


def block_folds(actors: list[int], *, num_folds: int, num_val_actors: int, present: list[int] | None = None) -> list[Fold]:
    """`num_folds` folds of consecutive actors (len // num_folds each, the last takes the rest); fold k tests
    block k, validates on the first `num_val_actors` actors `present` in the cache (all when None) from the
    next block on, trains on the others."""
    actors = sorted(actors)
    if len(actors) < num_folds:
        raise ConfigError(f"{num_folds} speaker folds need at least {num_folds} speakers, the cache has {len(actors)}; "
                          "lower split.num_folds")
    size = len(actors) // num_folds
    blocks = [actors[i * size:(i + 1) * size] for i in range(num_folds - 1)] + [actors[(num_folds - 1) * size:]]
    folds = []
    for k, test in enumerate(blocks):
        rest = [a for b in blocks[k + 1:] + blocks[:k] for a in b]   # the next block first
        val = _first_present(rest, num_val_actors, present)
        folds.append(Fold(f"fold{k + 1}", tuple(a for a in actors if a not in val and a not in test), val, tuple(test)))
    return folds


def column_folds(clips: pd.DataFrame, *, num_val_actors: int) -> list[Fold]:
    """Folds from a manifest's `fold` column (fold k tests the speakers of fold k; validation: the first
    `num_val_actors` speakers from fold k+1 on) or `split` column (one fold "manifest").

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
        following = order[i + 1:] + order[:i]   # the next fold's speakers first
        val = _first_present([a for v in following for a in sorted(groups[v])], num_val_actors, None)
        train = tuple(sorted(a for a in seen if a not in val and a not in test))
        folds.append(Fold(f"fold{value}", train, val, tuple(test)))
    return folds


def _first_present(ordered: list[int], count: int, present: list[int] | None) -> tuple[int, ...]:
    """The first `count` actors of `ordered` that the cache holds (`present`; None: all), sorted."""
    keep = None if present is None else set(present)
    return tuple(sorted([a for a in ordered if keep is None or a in keep][:count]))


def is_clip_level(clips: pd.DataFrame | None) -> bool:
    """True when each clip is its own speaker (DFEW, MAFW, a manifest of one clip per speaker): validation
    speakers would then be single clips, so validation is a fraction of the training clips instead."""
    return clips is not None and len(clips) > 1 and clips["actor"].nunique() == len(clips)


def clip_level_validation(fold: Fold, clips: pd.DataFrame, *, val_fraction: float, val_seed: int) -> Fold:
    """`fold` whose validation is a seeded, class-stratified `val_fraction` of its non-test clips.

    Per class of n non-test clips, round(val_fraction * n) clips (at least 1 when n >= 2) go to validation:
    those with the smallest hash of (val_seed, fold name, clip_id), so the draw does not depend on the run's
    --seed or on the table's order, and a clip added or dropped moves at most one other clip.
    """
    test = set(fold.test_actors)
    pool = clips[~clips["actor"].astype(int).isin(test)]
    val: list[int] = []
    for _, group in pool.groupby("label", sort=True):
        n = len(group)
        count = max(1, round(val_fraction * n)) if n >= 2 else 0
        keys = [hashlib.blake2b(f"{val_seed}:{fold.name}:{c}".encode(), digest_size=8).hexdigest() for c in group["clip_id"]]
        order = sorted(range(n), key=keys.__getitem__)
        val += [int(group["actor"].iloc[i]) for i in order[:count]]
    chosen = set(val)
    train = tuple(sorted(int(a) for a in pool["actor"] if int(a) not in chosen))
    return replace(fold, train_actors=train, val_actors=tuple(sorted(chosen)))


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
               clips: pd.DataFrame | None, num_folds: int, val_fraction: float, val_seed: int) -> list[Fold]:
    """The folds of a resolved protocol (see `resolve_protocol`; the settings are `_protocol_folds`'),
    numbered 1.. in the protocol's order: each fold's `number` is its identity from here on (`select_folds`)."""
    folds = _protocol_folds(protocol, num_val_actors=num_val_actors, fold_file=fold_file, all_actors=all_actors,
                            clips=clips, num_folds=num_folds, val_fraction=val_fraction, val_seed=val_seed)
    return [replace(fold, number=k) for k, fold in enumerate(folds, start=1)]


def parse_fold_numbers(folds: str) -> list[int] | None:
    """`--folds` (TrainConfig.folds): None for `all`, else its 1-based protocol fold numbers.

    Raises:
        ConfigError: neither `all` nor comma-separated numbers of 1 or more.
    """
    if folds == "all":
        return None
    try:
        numbers = [int(f) for f in folds.split(",")]
    except ValueError:
        raise ConfigError(f"folds must be 'all' or comma-separated numbers, got {folds!r}") from None
    if any(n < 1 for n in numbers):
        raise ConfigError(f"folds are 1-based, got {folds!r}")
    return numbers


def select_folds(folds: list[Fold], chosen: str, *, protocol: str) -> list[Fold]:
    """The folds `--folds` chooses (`all`, or protocol fold numbers, in the order given) among the
    protocol's `folds` (from `make_folds`).

    Raises:
        ConfigError: a number the protocol has no fold for.
    """
    numbers = parse_fold_numbers(chosen)
    if numbers is None:
        return list(folds)
    by_number = {fold.number: fold for fold in folds}
    if any(n not in by_number for n in numbers):
        raise ConfigError(f"folds {chosen}: split.protocol {protocol} has {len(folds)} fold(s), "
                          f"numbered 1..{len(folds)}; choose among them or pass --folds all")
    return [by_number[n] for n in numbers]


def _protocol_folds(protocol: str, *, num_val_actors: int, fold_file: str | None, all_actors: list[int] | None = None,
               clips: pd.DataFrame | None, num_folds: int, val_fraction: float, val_seed: int) -> list[Fold]:
    """The (unnumbered) folds of a resolved protocol (see `resolve_protocol`); `clips` (the clip table) is needed by
    manifest and speaker-kfold, `num_folds` (split.num_folds) by speaker-kfold. Validation actors come from
    the actors the cache holds (`all_actors`, else those of `clips`); for clip-level tables (`is_clip_level`)
    the generated folds validate on a `val_fraction` of their training clips instead (`clip_level_validation`).
    A fold file's or the fixed split's validation actors are used as given."""
    present = all_actors if all_actors is not None else (
        sorted(int(a) for a in clips["actor"].unique()) if clips is not None else None)
    if protocol == "crema-d-5fold":
        return block_folds(list(CREMA_D_ACTORS), num_folds=5, num_val_actors=num_val_actors, present=present)
    if protocol in ("manifest", "speaker-kfold"):
        if clips is None:
            raise ConfigError(f"split.protocol {protocol} needs the cache's clip table")
        if protocol == "manifest":
            folds = column_folds(clips, num_val_actors=num_val_actors)
        else:
            folds = block_folds(sorted(int(a) for a in clips["actor"].unique()), num_folds=num_folds,
                                num_val_actors=num_val_actors)
        if is_clip_level(clips) and folds[0].name != "manifest":   # a split column's val part is kept as given
            folds = [clip_level_validation(f, clips, val_fraction=val_fraction, val_seed=val_seed) for f in folds]
        return folds
    if protocol in ("ravdess-6fold", "auto"):
        return ravdess_folds(num_val_actors=num_val_actors, present=present)
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
            f"{fold.name}: test actors {_short(actors['test'])} ({counts['test']} clips), "
            f"val actors {_short(actors['val'])} ({counts['val']} clips), "
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


def why_validation_too_small(clip_table: pd.DataFrame, fold: Fold) -> str | None:
    """None when the fold's validation clips hold every class its training clips hold (the rule: a validation
    set without a class cannot choose an epoch, checkpoint or config for it); else why not."""
    part = assign_parts(clip_table, fold)
    labels = clip_table["label"].astype(int)
    missing = sorted(set(labels[part == "train"]) - set(labels[part == "val"]))
    if not missing:
        return None
    names = _class_names(clip_table)
    return (f"its {int((part == 'val').sum())} validation clip(s) hold no clip of class(es) "
            f"{', '.join(names.get(c, str(c)) for c in missing)}, which it trains on")


def check_validation(clip_table: pd.DataFrame, folds: list[Fold], *, allow_small: bool, cache_path: str) -> None:
    """Refuse folds whose validation set is too small to choose with (`why_validation_too_small`), unless
    `allow_small` (split.allow_small_val), which only warns.

    Raises:
        ConfigError: naming each such fold and what its validation set lacks.
    """
    why = {fold.name: reason for fold in folds if (reason := why_validation_too_small(clip_table, fold))}
    if why and not allow_small:
        lines = "; ".join(f"{name}: {reason}" for name, reason in why.items())
        raise ConfigError(f"{cache_path}: validation too small to choose with in {len(why)} fold(s): {lines}; raise "
                          "split.num_val_actors (speakers) or split.val_fraction (clip-level data), or pass "
                          "split.allow_small_val=true to train anyway")
    for name, reason in why.items():
        log.warning("%s: %s (split.allow_small_val=true)", name, reason)


def validation_counts(clip_table: pd.DataFrame, fold: Fold) -> dict[str, int]:
    """{class name: validation clips} of the fold (the protocol card's val_clips_per_class)."""
    part = assign_parts(clip_table, fold)
    labels = clip_table["label"].astype(int)[part == "val"]
    names = _class_names(clip_table)
    return {names.get(c, str(c)): int((labels == c).sum()) for c in sorted(set(clip_table["label"].astype(int)))}


def _class_names(clip_table: pd.DataFrame) -> dict[int, str]:
    if "emotion" not in clip_table:
        return {}
    return {int(label): str(name) for label, name in zip(clip_table["label"], clip_table["emotion"])}


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


def _short(actors: list[int]) -> str:
    """The list itself, or its count when long (clip-level data: one actor per clip)."""
    return str(actors) if len(actors) <= 12 else f"({len(actors)} actors)"


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

