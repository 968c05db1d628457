"""Which clips of one feature store are made from the media of another's: evaluate refuses to call a score
cross-corpus over clips the run trained on, and --corrupt --cache checks it scores the run's test clips.

A clip is identified across stores by its clip table's `source` signature (cache_schema.md) and its path
with the segment, never by clip_id alone (two datasets may both number their clips 00001...).
"""

from __future__ import annotations

import pandas as pd


def clip_keys(table: pd.DataFrame) -> list[set[str]]:
    """Per clip of a store's clip table, what identifies its media across caches: its source signature (the
    files' size:mtime_ns and segment, cache_schema.md) and its path with the segment; empty where the table
    records neither."""
    def given(row: dict, name: str) -> str:
        value = row.get(name)
        return "" if value is None or (isinstance(value, float) and value != value) else str(value)

    keys = []
    for row in table.to_dict("records"):
        source, path = given(row, "source"), given(row, "path")
        segment = f"@{given(row, 'start_s')}-{given(row, 'end_s')}"
        keys.append({k for k, ok in ((f"source:{source}", source and not source.startswith(("+", "@"))),
                                     (f"path:{path}{segment}", bool(path))) if ok})
    return keys


def seen_clips(bundle, scored: pd.DataFrame) -> tuple[list[str], str | None]:
    """(clip ids of `scored` whose media the bundle's fold models trained or validated on, why it could not
    be checked or None): the run's own cache's train and validation clips of each fold model, matched by
    `clip_keys`."""
    from mmfer.core.splits import Fold, assign_parts
    from mmfer.pipeline.bundle import own_store_path
    from mmfer.core.store import StoreError, open_store

    protocol = {f["name"]: f for f in bundle.evaluation.get("protocol", [])}
    try:
        table = open_store(own_store_path(bundle), mode="r").clip_table
    except (StoreError, FileNotFoundError, OSError) as err:
        return [], f"the run's own cache {own_store_path(bundle)} cannot be read ({err})"
    seen: set[str] = set()
    for name in bundle.fold_names:
        if name not in protocol:
            return [], f"summary.json lists no actors for {name}"
        p = protocol[name]
        part = assign_parts(table, Fold(name, tuple(p["train_actors"]), tuple(p["val_actors"]), tuple(p["test_actors"])))
        for keys, where in zip(clip_keys(table), part):
            if where in ("train", "val"):
                seen |= keys
    if not seen:
        return [], "its clip table records no source or path"
    return [c for c, keys in zip(scored["clip_id"], clip_keys(scored)) if keys & seen], None
