"""DFEW and MAFW adapters: their official 5-fold set files and clip folders -> the manifest.

DFEW: `EmoLabel_DataSplit/train(single-labeled)/set_{k}.csv` and `test(single-labeled)/set_{k}.csv`, header
`video_name,label`, video_name a number (clip `{n:05d}`), label 1..7 (DFEW_LABELS order); clips under
`Clip/original/`, in any sub-folder (`part_1/1.mp4`), named by the number padded or not (`00001.mp4`, `1.mp4`). MAFW: `Train & Test Set/single/no_caption/set_{k}/train.txt` and `test.txt`, lines
`00025.mp4 anger`; clips under `data/clips/`. Neither names speakers: each clip is its own `actor`, and
`fold` is the set whose test list holds it (the protocol `manifest` reads that column).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd

from mmfer.data.manifest import with_sources
from mmfer.core.errors import BadInputError
from mmfer.core.media import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

NUM_SETS = 5
DFEW_LABELS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")   # label 1..7
MAFW_LABELS = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
               "helplessness", "disappointment")


class OfficialFoldsError(BadInputError, FileNotFoundError):
    """--root lacks the dataset's set files or clip folder, or a set file is malformed."""


def _dfew_list(path: Path) -> dict[str, str]:
    """{clip stem: label name} of one DFEW set csv."""
    out = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            try:
                clip, label = int(row["video_name"]), int(row["label"])
            except (KeyError, ValueError, TypeError):
                clip, label = None, None
            if clip is None or not 1 <= label <= len(DFEW_LABELS):   # 0 or -1 would index from the end
                raise OfficialFoldsError(f"{path} line {reader.line_num}: expected video_name,label with label "
                                         f"1..{len(DFEW_LABELS)}, got {row}")
            out[_dfew_stem(clip)] = DFEW_LABELS[label - 1]
    return out


def _dfew_stem(number: int) -> str:
    """DFEW's clip id for a clip number: 5 digits, as its README writes the files (`00001`)."""
    return f"{number:05d}"


def _dfew_files(folder: Path) -> dict[str, Path]:
    """{clip id: file} of every video under `folder`, at any depth, whose name is a clip number, padded or not
    (`Clip/original/part_1/1.mp4`, `00001.mp4`).

    Raises:
        OfficialFoldsError: two files carry one number.
    """
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in VIDEO_SUFFIXES or not (path.stem.isascii() and path.stem.isdigit()):
            continue
        stem = _dfew_stem(int(path.stem))
        if stem in files:
            raise OfficialFoldsError(f"{folder}: clip {int(path.stem)} has two files, {files[stem]} and {path}; "
                                     "keep one")
        files[stem] = path
    return files


def _mafw_list(path: Path) -> dict[str, str]:
    """{clip stem: label name} of one MAFW set txt."""
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in MAFW_LABELS:
            raise OfficialFoldsError(f"{path} line {number}: expected '<clip>.mp4 <label>' with one of {MAFW_LABELS}, got {line!r}")
        out[Path(parts[0]).stem] = parts[1]
    return out


def _mafw_files(folder: Path) -> dict[str, Path]:
    """{file stem: file} of every video under `folder`."""
    return {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES}


LAYOUTS = {   # dataset -> (set file of (kind, k), clip folder, reader, labels, file finder)
    "dfew": (lambda root, kind, k: root / "EmoLabel_DataSplit" / f"{kind}(single-labeled)" / f"set_{k}.csv",
             "Clip/original", _dfew_list, DFEW_LABELS, _dfew_files),
    "mafw": (lambda root, kind, k: root / "Train & Test Set" / "single" / "no_caption" / f"set_{k}" / f"{kind}.txt",
             "data/clips", _mafw_list, MAFW_LABELS, _mafw_files),
}


def scan_official_folds(root: str, dataset: str) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(the manifest of the clips the test lists name and the clip folder holds, the label names).

    Raises:
        OfficialFoldsError: a set file or the clip folder is missing, a set file line is malformed (DFEW: a
            label outside 1..7), a clip is in two test lists, or (DFEW) two files carry one clip number.
    """
    set_file, clip_folder, read, labels, find_files = LAYOUTS[dataset]
    root_path = Path(root).expanduser().resolve()
    label_of: dict[str, str] = {}
    fold_of: dict[str, int] = {}
    for k in range(1, NUM_SETS + 1):
        for kind in ("train", "test"):
            path = set_file(root_path, kind, k)
            if not path.is_file():
                raise OfficialFoldsError(f"{path}: {dataset.upper()} set file not found; point --root at the folder "
                                         f"holding the official release (README \"Datasets\")")
            for stem, label in read(path).items():
                if label_of.setdefault(stem, label) != label:
                    raise OfficialFoldsError(f"{path}: clip {stem} is {label} here and {label_of[stem]} in another set file")
                if kind == "test":
                    if stem in fold_of:
                        raise OfficialFoldsError(f"{path}: clip {stem} is also in set {fold_of[stem]}'s test list")
                    fold_of[stem] = k
    folder = root_path / clip_folder
    if not folder.is_dir():
        raise OfficialFoldsError(f"{folder}: {dataset.upper()} clip folder not found")
    files = find_files(folder)
    untested = sorted(set(label_of) - set(fold_of))
    if untested:
        log.warning("%s: left out %d clip(s) that no test list names, e.g. %s", root_path, len(untested), ", ".join(untested[:5]))
    absent = sorted(s for s in fold_of if s not in files)
    if absent:
        log.warning("%s: left out %d listed clip(s) not under %s, e.g. %s", root_path, len(absent), clip_folder, ", ".join(absent[:5]))
    stems = sorted(s for s in fold_of if s in files)
    if not stems:
        raise OfficialFoldsError(f"{folder}: none of the {len(fold_of)} clips the test lists name is here")
    table = pd.DataFrame({"clip_id": stems, "path": [str(files[s]) for s in stems], "dataset": dataset,
                          "actor": range(1, len(stems) + 1), "gender": "",
                          "label": [labels.index(label_of[s]) for s in stems], "emotion": [label_of[s] for s in stems],
                          "recording_id": stems, "fold": [fold_of[s] for s in stems]})
    table = with_sources(table)
    table.attrs["label_names"] = list(labels)
    return table, labels
