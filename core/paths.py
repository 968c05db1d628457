"""Recorded paths that still resolve after the folders move: each is kept as typed, resolved, and relative to
the folder that records it (a run folder records its cache, a store its encoders), and looked up all three ways.

`record_path` makes the record; `find_recorded` returns the first candidate that exists. Nothing here reads a file.
"""

from __future__ import annotations

import os
from pathlib import Path


def record_path(path: str | os.PathLike, base: str | os.PathLike) -> dict[str, str]:
    """{"resolved": absolute path, "relative": the path relative to `base` (the recording folder)}."""
    resolved = Path(path).resolve()
    return {"resolved": str(resolved), "relative": os.path.relpath(resolved, Path(base).resolve())}


def recorded_candidates(typed: str | os.PathLike, record: dict | None, base: str | os.PathLike) -> list[Path]:
    """Where a recorded path may be now, in order: relative to the recording folder `base` (both moved
    together), as typed (relative to this working folder), resolved (the same machine, anywhere)."""
    record = record or {}
    out = []
    if record.get("relative"):
        out.append(Path(base) / record["relative"])
    out.append(Path(typed))
    if record.get("resolved"):
        out.append(Path(record["resolved"]))
    return out


def find_recorded(typed: str | os.PathLike, record: dict | None, base: str | os.PathLike) -> Path | None:
    """The first of `recorded_candidates` that exists, or None."""
    return next((p for p in recorded_candidates(typed, record, base) if p.exists()), None)
