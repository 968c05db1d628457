"""`mmfer cache-info`: what a feature store holds, as a dict (for --json) and as text."""

from __future__ import annotations

from collections import Counter

import numpy as np

from mmfer.core.store import ClipStatus, open_store


def cache_info(path: str) -> dict:
    """Summary of the store at `path`; keys are the documented `cache-info --json` interface."""
    store = open_store(path)
    table = store.clip_table
    encoders, statuses, failures = {}, {}, []
    for modality in ("video", "audio"):
        for fp in store.fingerprints(modality):
            entry = store.entry(modality, fp)
            encoders[f"{modality}/{fp}"] = {"modality": modality, "fingerprint": fp, **{
                k: entry.attrs.get(k) for k in ("encoder", "num_frames", "face_crop", "sample_rate_hz", "max_audio_s", "dtype")
                if k in entry.attrs}, "num_views": entry.num_views}
            statuses[modality] = entry.statuses()
            for index in np.flatnonzero(statuses[modality] == ClipStatus.FAILED):
                failures.append({"clip_id": store.clip_ids[index], "modality": modality,
                                 "path": str(table["path"].iloc[index]) if "path" in table else "",
                                 "reason": entry.reasons()[index]})
    video = statuses.get("video", np.zeros(len(table), dtype=np.int8))
    audio = statuses.get("audio", np.zeros(len(table), dtype=np.int8))
    done = (video == ClipStatus.DONE) & np.isin(audio, (ClipStatus.DONE, ClipStatus.MISSING))
    failed = (video == ClipStatus.FAILED) | (audio == ClipStatus.FAILED)
    done_table = table[done]
    return {
        "path": str(store.path),
        "schema_version": store.attrs["schema_version"],
        "dataset": store.attrs.get("dataset"),
        "encoders": encoders,
        "clips": {"total": len(table), "done": int(done.sum()), "failed": int(failed.sum()),
                  "pending": int(len(table) - done.sum() - failed.sum()),
                  "missing_audio": int((audio == ClipStatus.MISSING).sum())},
        "failures": failures,
        "by_emotion": dict(Counter(done_table["emotion"])) if "emotion" in table else {},
        "by_actor": {str(k): v for k, v in sorted(Counter(done_table["actor"]).items())} if "actor" in table else {},
        "bytes_on_disk": store.bytes_on_disk(),
        "num_views": max((e["num_views"] for e in encoders.values()), default=0),   # extract --views K
    }


def format_cache_info(info: dict) -> str:
    clips = info["clips"]
    lines = [f"{info['path']}: schema v{info['schema_version']}, dataset {info['dataset']}",
             f"clips: {clips['total']} total, {clips['done']} done, {clips['failed']} failed, "
             f"{clips['pending']} pending, {clips['missing_audio']} without audio",
             f"on disk: {info['bytes_on_disk'] / 1e6:.1f} MB"]
    for key, enc in info["encoders"].items():
        identity = enc.get("encoder") or {}
        views = f", {enc['num_views']} augmented views per clip besides the clean one" if enc.get("num_views") else ""
        lines.append(f"{key}: {identity.get('name')} (weights {str(identity.get('weights_sha256'))[:12]}){views}")
    if info["by_emotion"]:
        lines.append("done by emotion: " + ", ".join(f"{k} {v}" for k, v in sorted(info["by_emotion"].items())))
    for failure in info["failures"][:20]:
        lines.append(f"failed {failure['modality']} {failure['clip_id']}: {failure['reason'].splitlines()[0] if failure['reason'] else ''}")
    return "\n".join(lines)
