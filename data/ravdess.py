"""RAVDESS adapter: parse the seven-part file names and scan a dataset folder into a manifest.

Names are `MM-VV-EE-II-SS-RR-AA` (modality, vocal channel, emotion, intensity, statement, repetition,
actor). `scan_ravdess` walks a folder (the official `Actor_XX` layout or anything else), keeps the
selected modality / vocal-channel clips and returns its rows of the manifest (data/manifest.py; the
`source` column is stamped by `with_sources`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from mmfer.data.manifest import MANIFEST_COLUMNS, with_sources
from mmfer.core.errors import BadInputError
from mmfer.core.labels import EMOTIONS, RAVDESS_NUM_ACTORS

log = logging.getLogger(__name__)

MODALITIES = {"01": "av", "02": "video", "03": "audio"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
SUFFIX_BY_MODALITY = {"av": ".mp4", "video": ".mp4", "audio": ".wav"}
MEDIA_SUFFIXES = (".mp4", ".wav")
NUM_NAMES_IN_WARNING = 5   # a few examples are enough to spot the pattern
RAVDESS_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c != "source")   # the manifest's columns a name gives
_PARTS = ("modality", "vocal_channel", "emotion", "intensity", "statement", "repetition", "actor")


class RavdessNameError(BadInputError, ValueError):
    """A file name is not a valid RAVDESS name; the message names the file and the bad part."""


def parse_ravdess_name(name: str) -> dict:
    """Decode a RAVDESS file name (with or without folder and extension) into its fields.

    Returns:
        dict with clip_id, modality, vocal_channel, emotion, label, intensity, statement, repetition,
        actor, gender, recording_id (the manifest columns except path and dataset).

    Raises:
        RavdessNameError: wrong number of parts, a non-numeric part, or a code out of range
            (including intensity 02 "strong" with emotion 01 "neutral", which RAVDESS never recorded).
    """
    stem = Path(name).name
    if stem.lower().endswith(MEDIA_SUFFIXES):
        stem = stem[: -len(Path(stem).suffix)]
    parts = stem.split("-")
    if len(parts) != len(_PARTS):
        raise RavdessNameError(
            f"{name}: expected 7 dash-separated parts MM-VV-EE-II-SS-RR-AA, found {len(parts)}"
        )
    for part_name, part in zip(_PARTS, parts):
        if len(part) != 2 or not (part.isascii() and part.isdigit()):   # str.isdigit() also takes '٠١'
            raise RavdessNameError(f"{name}: {part_name} part {part!r} is not a two-digit number")
    mm, vv, ee, ii, ss, rr, aa = parts
    emotion_code, intensity, statement, repetition, actor = (int(p) for p in (ee, ii, ss, rr, aa))

    def bad(part_name: str, part: str, allowed: str) -> RavdessNameError:
        return RavdessNameError(f"{name}: {part_name} code {part!r} is invalid (allowed: {allowed})")

    if mm not in MODALITIES:
        raise bad("modality", mm, "01 av, 02 video, 03 audio")
    if vv not in VOCAL_CHANNELS:
        raise bad("vocal_channel", vv, "01 speech, 02 song")
    if not 1 <= emotion_code <= len(EMOTIONS):
        raise bad("emotion", ee, f"01..{len(EMOTIONS):02d}")
    if intensity not in (1, 2):
        raise bad("intensity", ii, "01 normal, 02 strong")
    if emotion_code == 1 and intensity == 2:
        raise bad("intensity", ii, "only 01 for emotion 01 neutral, which has no strong intensity")
    if statement not in (1, 2):
        raise bad("statement", ss, "01, 02")
    if repetition not in (1, 2):
        raise bad("repetition", rr, "01, 02")
    if not 1 <= actor <= RAVDESS_NUM_ACTORS:
        raise bad("actor", aa, f"01..{RAVDESS_NUM_ACTORS:02d}")
    return {
        "clip_id": stem,
        "modality": MODALITIES[mm],
        "vocal_channel": VOCAL_CHANNELS[vv],
        "emotion": EMOTIONS[emotion_code - 1],
        "label": emotion_code - 1,
        "intensity": intensity,
        "statement": statement,
        "repetition": repetition,
        "actor": actor,
        "gender": "male" if actor % 2 == 1 else "female",
        "recording_id": "-".join(parts[1:]),
    }


def scan_ravdess(
    root: str | os.PathLike,
    vocal_channels: tuple[str, ...] = ("speech",),
    modalities: tuple[str, ...] = ("av",),
) -> pd.DataFrame:
    """Walk `root` and return the manifest of the selected RAVDESS clips, sorted by clip_id.

    Every .mp4 / .wav file under root counts, in any folder. Files whose names do not parse (or whose
    extension does not fit the modality) are skipped with one warning that counts them. Folder
    symlinks are followed once each, so a symlink loop cannot hang the walk.

    Raises:
        FileNotFoundError: root does not exist or is not a folder.
        ValueError: an unknown vocal channel / modality is asked for, or two files share a clip id.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"{root_path}: RAVDESS folder not found (or not a folder); point it at the folder holding "
            "the unpacked Actor_01..Actor_24 folders"
        )
    for wanted, allowed, what in ((vocal_channels, VOCAL_CHANNELS, "vocal_channels"), (modalities, MODALITIES, "modalities")):
        unknown = sorted(set(wanted) - set(allowed.values()))
        if unknown:
            raise ValueError(f"scan_ravdess: unknown {what} {unknown}; choose from {sorted(allowed.values())}")

    rows: dict[str, dict] = {}
    bad_names: list[str] = []
    for path in _media_files(root_path):
        try:
            fields = parse_ravdess_name(path.name)
            if path.suffix.lower() != SUFFIX_BY_MODALITY[fields["modality"]]:
                raise RavdessNameError(f"{path.name}: modality {fields['modality']} wants a {SUFFIX_BY_MODALITY[fields['modality']]} file")
        except RavdessNameError:
            bad_names.append(str(path))
            continue
        if fields["vocal_channel"] not in vocal_channels or fields["modality"] not in modalities:
            continue
        clip_id = fields["clip_id"]
        if clip_id in rows:
            raise ValueError(
                f"clip {clip_id}: two files have this id: {rows[clip_id]['path']} and {path}; "
                "remove one copy (clip ids must be unique)"
            )
        rows[clip_id] = {"clip_id": clip_id, "path": str(path), "dataset": "ravdess", **fields}

    if bad_names:
        log.warning(
            "%s: skipped %d file(s) whose names are not valid RAVDESS names, e.g. %s",
            root_path, len(bad_names), ", ".join(sorted(bad_names)[:NUM_NAMES_IN_WARNING]),
        )
    if not rows:
        log.warning("%s: no %s %s clips found", root_path, "/".join(modalities), "/".join(vocal_channels))
    manifest = pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(RAVDESS_COLUMNS))
    for column in ("label", "intensity", "statement", "repetition", "actor"):
        manifest[column] = manifest[column].astype("int64")
    manifest = with_sources(manifest)
    manifest.attrs["label_names"] = list(EMOTIONS)   # the class ids' names (extract records them in the store)
    return manifest


class NoClipsError(BadInputError, FileNotFoundError):
    """--root holds no clip of the asked kind; the message says what the folder holds instead."""


def require_clips(manifest: pd.DataFrame, root: str | os.PathLike, *, vocal_channels: tuple[str, ...],
                  modalities: tuple[str, ...]) -> pd.DataFrame:
    """`manifest` unchanged when it holds a clip; else NoClipsError naming what `root` holds instead
    (other RAVDESS channels/modalities, media with other names, other files, folders), so the user
    sees the mistake before any model loads or any output is created."""
    if len(manifest):
        return manifest
    root_path = Path(root).expanduser()
    other_kinds: dict[str, int] = {}
    bad_names: list[str] = []
    for path in _media_files(root_path):
        try:
            fields = parse_ravdess_name(path.name)
        except RavdessNameError:
            bad_names.append(path.name)
            continue
        kind = f"{fields['modality']} {fields['vocal_channel']}"
        other_kinds[kind] = other_kinds.get(kind, 0) + 1
    others = [p.name for p in sorted(root_path.rglob("*")) if p.is_file() and not p.name.lower().endswith(MEDIA_SUFFIXES)]
    folders = sorted(p.name for p in root_path.iterdir() if p.is_dir())
    found = [f"{n} {kind} clips" for kind, n in sorted(other_kinds.items())]
    if bad_names:
        found.append(f"{len(bad_names)} .mp4/.wav files without RAVDESS names (e.g. {', '.join(bad_names[:3])})")
    if others:
        found.append(f"{len(others)} other files (e.g. {', '.join(others[:3])})")
    if folders:
        found.append(f"{len(folders)} folders ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''})")
    wanted = f"{'/'.join(modalities)} {'/'.join(vocal_channels)}"
    raise NoClipsError(
        f"no RAVDESS clips under {root_path} ({wanted} clips named MM-VV-EE-II-SS-RR-AA.mp4); found "
        f"{'; '.join(found) if found else 'nothing'}. Point --root at the folder holding Actor_01..Actor_24"
        f"{' or choose --vocal-channels' if other_kinds else ''} (or write a demo: mmfer make-demo --out demo_data)")


def _media_files(root: Path):
    """Yield absolute paths of .mp4 / .wav files under root; each real folder is entered once."""
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(os.path.abspath(root), followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:        # a symlink loop or a second link to the same folder
            dirnames.clear()
            continue
        visited.add(real)
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.lower().endswith(MEDIA_SUFFIXES):
                yield Path(dirpath, filename)
