"""The store's clip table: the root attributes checked on opening, and the table a store takes for a run.

A store keeps the manifest of its latest extract as its clip table (a JSON list of rows in the root attributes);
arrays are indexed by a clip's position in it. This module plans (`plan_clip_table`) and checks; it writes
nothing (zarr_store.py does) and reads no file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pandas as pd

from mmfer.core.store.layout import SCHEMA_VERSION, StoreError


@dataclass(frozen=True)
class ClipTableChange:
    """How this run's manifest differs from a store's clip table: what `create_store` rewrites."""

    num_changed: int = 0          # clips whose row differs (label, fold, speaker, split, path, ...)
    changed_columns: tuple[str, ...] = ()
    num_added: int = 0            # clips new to the store, appended at its end
    label_names_changed: bool = False

    def format(self) -> str:
        columns = f" ({', '.join(self.changed_columns)})" if self.changed_columns else ""
        names = "; label names changed" if self.label_names_changed else ""
        return f"clip table: {self.num_changed} rows changed{columns}, {self.num_added} clips added{names}"


def checked_root(path: object, attrs: dict, *, fix: str) -> tuple[dict, pd.DataFrame, dict[str, int]]:
    """A store's root attributes, its clip table and clip_id -> position, after checking the schema version.

    Raises:
        StoreError: another schema version (`fix` says what to do).
    """
    found = attrs.get("schema_version")
    if found != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema v{found}, this code reads v{SCHEMA_VERSION}; {fix}")
    table = pd.DataFrame(attrs["clip_table"])
    return attrs, table, {cid: i for i, cid in enumerate(table["clip_id"])}


def position(path: object, index: dict[str, int], clip_id: str) -> int:
    """`clip_id`'s position in a store's clip table (its row in every array).

    Raises:
        KeyError: no such clip, naming the store.
    """
    try:
        return index[clip_id]
    except KeyError:
        raise KeyError(f"{path}: no clip {clip_id!r} in this store's clip table") from None


def records(table: pd.DataFrame) -> list[dict]:
    """The clip table as the store keeps it (JSON records, so values compare as they will read back)."""
    return json.loads(table.to_json(orient="records"))


def plan_clip_table(path: str | os.PathLike, stored: list[dict], table: pd.DataFrame,
                    stored_names=None, names=None) -> tuple[list[dict], ClipTableChange]:
    """The clip table a store at `path` holding `stored` takes for this run's manifest `table`: every row as the
    manifest has it now, the store's clips at their positions (arrays are indexed by position) and new clips
    appended. Nothing is written.

    Raises:
        StoreError: the manifest lacks clips the store holds (a store never drops a clip's position).
    """
    new = {row["clip_id"]: row for row in records(table)}
    old_ids = [row["clip_id"] for row in stored]
    gone = [c for c in old_ids if c not in new]
    if gone:
        raise StoreError(
            f"{path}: this store holds {len(old_ids)} clips and this run's manifest lacks {len(gone)} of them "
            f"(e.g. {', '.join(gone[:3])}); a store keeps every clip it was made for: put them back in the manifest "
            "(--select/--limit process part of it), or extract into a new --out")
    old_set = set(old_ids)
    added = [c for c in new if c not in old_set]
    columns: set[str] = set()
    num_changed = 0
    for row in stored:
        fresh = new[row["clip_id"]]
        differing = {k for k in set(row) | set(fresh) if row.get(k) != fresh.get(k)}
        if differing:
            num_changed += 1
            columns |= differing
    merged = [new[c] for c in old_ids] + [new[c] for c in added]
    names_changed = stored_names is not None and names is not None and list(stored_names) != list(names)
    return merged, ClipTableChange(num_changed, tuple(sorted(columns)), len(added), names_changed)
