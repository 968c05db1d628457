"""The manifest: one row per clip, the hand-off from data/ to extract/, and the store's clip table as is.

Its columns are defined here once. A dataset's adapter (data/ravdess.py, crema_d.py, own_manifest.py) fills the rows and stamps each
file's `source` signature (size:mtime_ns, `with_sources`), which extract records so a changed file is
redone; data/datasets.py picks the adapter for `--dataset`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mmfer.core.errors import BadInputError
from mmfer.core.media import file_signature, is_lfs_pointer

MANIFEST_COLUMNS = (
    "clip_id", "path", "source", "dataset", "actor", "gender", "label", "emotion", "intensity",
    "statement", "repetition", "vocal_channel", "modality", "recording_id",
    "speaker", "fold", "split", "start_s", "end_s", "audio_path", "level", "sentence",
)
"""clip_id (the key everywhere), path (the media file), source (its size:mtime_ns when the manifest was
made, with the audio file's and the segment when given: `with_sources`), dataset, actor (the speaker), gender, label (class index), emotion (class name), then the dataset's
own fields (RAVDESS: intensity, statement, repetition, vocal_channel, modality), recording_id (one
recording's files share it; the leakage guard keeps them in one split; a manifest's `group`), speaker (the
speaker's own name where `actor` is a number given to it), fold / split (a given protocol), start_s / end_s
(a segment of the file), audio_path (a separate audio file, or ""), level and sentence (CREMA-D)."""


class LfsPointerError(BadInputError, ValueError):
    """Media files are git-lfs pointers: the dataset was cloned without fetching its large files."""


def with_sources(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with its `source` column filled and columns in order.

    `source` is what a clip's features were made from, compared by extract to redo a clip that changed: the
    video file's signature ("" for a file that is gone), then, when the row has them, "+audio=" and the
    separate audio file's signature, and "@start_s-end_s" for a segment.

    Raises:
        LfsPointerError: a video or audio file is a git-lfs pointer (refused here, at scan time, not by
            ffmpeg once per clip after the encoders load).
    """
    refuse_lfs_pointers(manifest)
    table = manifest.copy()
    table["source"] = [_source(row) for row in table.to_dict("records")]
    return table[[c for c in MANIFEST_COLUMNS if c in table]].reset_index(drop=True)


def refuse_lfs_pointers(manifest: pd.DataFrame) -> None:
    """Raise LfsPointerError naming how many of the manifest's media files are git-lfs pointers and what to run."""
    paths = list(manifest["path"]) + [p for p in manifest.get("audio_path", pd.Series(dtype=str)) if isinstance(p, str) and p]
    pointers = [p for p in paths if is_lfs_pointer(p)]
    if not pointers:
        return
    repo = next((folder for folder in Path(pointers[0]).resolve().parents if (folder / ".git").exists()),
                Path(pointers[0]).resolve().parent)
    raise LfsPointerError(f"{pointers[0]}: a git-lfs pointer file, not media ({len(pointers)} of the {len(paths)} "
                          f"media files are): the clone's large files were never fetched; run `git lfs pull` in {repo} "
                          "(needs git-lfs: `git lfs install` once), or fetch CREMA-D with `mmfer download crema-d`, "
                          "then extract again")


def _source(row: dict) -> str:
    def given(name: str):
        value = row.get(name)
        return None if value is None or value == "" or (isinstance(value, float) and value != value) else value

    signature = lambda path: file_signature(path) if Path(path).exists() else ""   # noqa: E731
    source = signature(row["path"])
    if given("audio_path") is not None:
        source += f"+audio={signature(row['audio_path'])}"
    if given("start_s") is not None or given("end_s") is not None:
        source += f"@{given('start_s')}-{given('end_s')}"
    return source
