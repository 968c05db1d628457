"""Your own data: a `.csv` or `.jsonl` file with one row per clip -> the manifest (data/manifest.py).

Columns: clip_id, video_path (absolute or relative to the manifest's folder), label (a name), speaker,
optional audio_path (audio from this file), start_s, end_s (a segment; extract cuts it), fold (integer) or split
(train/val/test), group. A bad row is logged
with its line number and left out; the rest go on. The file is refused whole for a fold column that starts at
0, and, with `--labels`, for any other label name. The class counts are logged, and a label one or two edits
from another (`hapy`, `happy`) is warned of. Speakers get numbers 1..N (sorted by name) in `actor`,
their names stay in `speaker`; a `group` becomes `recording_id` (the leakage guard keeps it in one split).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pandas as pd

from mmfer.data.manifest import with_sources
from mmfer.core.errors import BadInputError

log = logging.getLogger(__name__)

REQUIRED = ("clip_id", "video_path", "label", "speaker")
OPTIONAL = ("audio_path", "start_s", "end_s", "fold", "split", "group")
SPLITS = ("train", "val", "test")


class ManifestError(BadInputError, ValueError):
    """The manifest file cannot be read, lacks a required column, or has no usable row."""


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row dict of strings) for each row of a .csv (header on line 1) or .jsonl file."""
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; pass --manifest FILE (.csv or .jsonl)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                log.warning("%s line %d: left out: not a JSON object (%s)", path, number, err.msg)
                continue
            if not isinstance(row, dict):
                log.warning("%s line %d: left out: not a JSON object", path, number)
                continue
            rows.append((number, {k: "" if v is None else str(v) for k, v in row.items()}))
        return rows
    if path.suffix.lower() != ".csv":
        raise ManifestError(f"{path}: a manifest is a .csv or .jsonl file; rename or convert it")
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise ManifestError(f"{path}: the header lacks columns {missing} (has {reader.fieldnames}); "
                            f"a manifest needs {', '.join(REQUIRED)}")
    # reader.line_num: the line a row ends on, right after blank lines (which DictReader skips) too
    return [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}) for row in reader]


def read_own_manifest(path: str, *, labels: str | None) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(the manifest of the usable rows, the label names). `labels`: "a,b,c" fixes the order and set;
    None takes the names found, sorted.

    Raises:
        ManifestError: unreadable file, missing columns, a fold and a split column together, no usable row.
    """
    manifest_path = Path(path).expanduser().resolve()
    rows = read_rows(manifest_path)
    fixed = tuple(n.strip() for n in labels.split(",")) if labels else None
    if fixed is not None:
        _refuse_other_labels(manifest_path, rows, fixed)
    good: list[dict] = []
    seen: dict[str, int] = {}
    for number, row in rows:
        try:
            good.append({**_parse_row(row, manifest_path.parent, fixed, seen, number), "line": number})
        except ValueError as err:
            log.warning("%s line %d: left out: %s", manifest_path, number, err)
    if not good:
        raise ManifestError(f"{manifest_path}: no usable row (of {len(rows)}); the log names each bad row and why")
    table = pd.DataFrame(good)
    if table["fold"].notna().any() and table["fold"].min() == 0:
        raise ManifestError(f"{manifest_path}: the fold column starts at 0 (line {table.loc[table['fold'] == 0, 'line'].iloc[0]}); "
                            "folds are numbered from 1: add 1 to every fold")
    _report_labels(manifest_path, table, fixed)
    table = table.drop(columns=["line"])
    if table["fold"].notna().any() and table["split"].ne("").any():
        raise ManifestError(f"{manifest_path}: has both fold and split values; keep one protocol column")
    if table["fold"].notna().any() and table["fold"].isna().any():
        raise ManifestError(f"{manifest_path}: some rows have a fold and others not; give every row a fold (or none)")
    if table["split"].ne("").any() and table["split"].eq("").any():
        raise ManifestError(f"{manifest_path}: some rows have a split and others not; give every row a split (or none)")
    names = fixed or tuple(sorted(table["emotion"].unique()))
    speakers = sorted(table["speaker"].unique())
    table["label"] = table["emotion"].map({n: i for i, n in enumerate(names)}).astype("int64")
    table["actor"] = table["speaker"].map({s: i for i, s in enumerate(speakers, start=1)}).astype("int64")
    table["dataset"], table["gender"] = "manifest", ""
    table = table.sort_values("clip_id", kind="stable")
    if table["fold"].isna().all():
        table = table.drop(columns=["fold"])
    else:
        table["fold"] = table["fold"].astype("int64")
    if table["split"].eq("").all():
        table = table.drop(columns=["split"])
    table = table.drop(columns=[c for c in ("start_s", "end_s") if table[c].isna().all()] +
                       (["audio_path"] if table["audio_path"].eq("").all() else []))
    table = with_sources(table)
    table.attrs["label_names"] = list(names)
    return table, names


def _parse_row(row: dict, folder: Path, fixed: tuple[str, ...] | None, seen: dict[str, int], number: int) -> dict:
    """One manifest row, checked; ValueError says what is wrong with it."""
    missing = [c for c in REQUIRED if not row.get(c, "").strip()]
    if missing:
        raise ValueError(f"empty {', '.join(missing)}")
    clip_id = row["clip_id"].strip()
    if clip_id in seen:
        raise ValueError(f"clip_id {clip_id} is already on line {seen[clip_id]}")
    video = Path(row["video_path"]).expanduser()
    video = video if video.is_absolute() else folder / video
    if not video.is_file():
        raise ValueError(f"video_path {video} not found")
    label = row["label"].strip()
    if fixed is not None and label not in fixed:
        raise ValueError(f"label {label!r} is not one of --labels {','.join(fixed)}")
    start_s, end_s = _number(row, "start_s"), _number(row, "end_s")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise ValueError(f"end_s {end_s} <= start_s {start_s}")
    if start_s is not None and start_s < 0:
        raise ValueError(f"start_s {start_s} < 0")
    fold = row.get("fold", "").strip()
    if fold and not (fold.isascii() and fold.isdigit()):   # 0 passes here: a 0-based column is refused once, whole
        raise ValueError(f"fold {fold!r} is not a positive integer")
    split = row.get("split", "").strip().lower()
    if split and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    audio = row.get("audio_path", "").strip()
    if audio:
        audio_file = Path(audio).expanduser()
        audio_file = audio_file if audio_file.is_absolute() else folder / audio_file
        if not audio_file.is_file():
            raise ValueError(f"audio_path {audio_file} not found")
        audio = str(audio_file)
    seen[clip_id] = number
    return {"clip_id": clip_id, "path": str(video), "emotion": label, "speaker": row["speaker"].strip(),
            "recording_id": row.get("group", "").strip() or clip_id, "fold": int(fold) if fold else None,
            "split": split, "start_s": start_s, "end_s": end_s, "audio_path": audio}


def _refuse_other_labels(path: Path, rows: list[tuple[int, dict]], fixed: tuple[str, ...]) -> None:
    """With --labels every row's label is one of them: a label outside is a typo or a class the user did not
    mean, and is refused for the whole file (never left out row by row, nor made a class).

    Raises:
        ManifestError: naming each other label, its first line and its number of rows.
    """
    others: dict[str, list[int]] = {}
    for number, row in rows:
        label = row.get("label", "").strip()
        if label and label not in fixed:
            others.setdefault(label, []).append(number)
    if others:
        found = "; ".join(f"{name!r} on {len(lines)} row(s), first line {lines[0]}" + _near(name, fixed)
                          for name, lines in sorted(others.items()))
        raise ManifestError(f"{path}: labels that are not one of --labels {','.join(fixed)}: {found}; "
                            "fix these rows or add the names to --labels")


def _report_labels(path: Path, table: pd.DataFrame, fixed: tuple[str, ...] | None) -> None:
    """Log the class counts (before any extraction), and warn of a name one or two edits from another
    (`hapy` beside `happy`): a typo in a manifest would otherwise become a class of its own."""
    counts = table["emotion"].value_counts()
    names = fixed or tuple(sorted(counts.index))
    log.info("%s: %d clips in %d classes: %s", path, len(table), len(names),
             ", ".join(f"{n} {int(counts.get(n, 0))}" for n in names))
    if fixed is not None:
        return
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            distance = edit_distance(a, b)
            if distance <= 2 and min(len(a), len(b)) > distance:
                rare, common = sorted((a, b), key=lambda n: (counts[n], n))
                line = int(table.loc[table["emotion"] == rare, "line"].iloc[0])
                log.warning("%s: label %r (%d rows, first line %d) is %d edit(s) from %r (%d rows): a typo? fix the "
                            "manifest, or pass --labels with the names you mean (then any other name is refused)",
                            path, rare, counts[rare], line, distance, common, counts[common])


def _near(name: str, names: tuple[str, ...]) -> str:
    close = [n for n in names if edit_distance(name, n) <= 2]
    return f" (did you mean {close[0]!r}?)" if close else ""


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions turning `a` into `b`."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _number(row: dict, column: str) -> float | None:
    value = row.get(column, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{column} {value!r} is not a finite number")
    return number
