"""`mmfer verify STORE [--repair]`: re-read every done clip of a store through its checks, and clean up.

Built on store.py's interface only (statuses, `read_clip`, `clip_chunk_files`, `clean_leftovers`); it spells no
path inside the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mmfer.pipeline.store import MODALITIES, ClipStatus, CorruptClipError, StoreError, is_h5_path, open_store


@dataclass
class VerifyReport:
    store_path: str
    num_checked: int = 0
    damaged: list[tuple[str, str, str]] = field(default_factory=list)   # (modality, clip_id, problem)
    num_leftovers_removed: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged

    def format(self) -> str:
        lines = [f"{self.store_path}: checked {self.num_checked} done clip entries, {len(self.damaged)} damaged, "
                 f"removed {self.num_leftovers_removed} leftovers of interrupted writes"]
        lines += [f"  {modality} {clip_id}: {problem}" for modality, clip_id, problem in self.damaged]
        return "\n".join(lines)


def verify_store(path: str | os.PathLike, *, repair: bool = False) -> VerifyReport:
    """Re-read every chunk of every done clip (checksums included), name the damaged ones, and delete
    leftovers: staging folders, `*.partial` files and data chunks of clips that are not done.

    With `repair`, damaged clips are marked FAILED ("damaged: ...") so the next extract redoes them.
    """
    if repair and is_h5_path(path):
        raise StoreError(f"{path}: an HDF5 export is read only; run `mmfer verify --repair` on the Zarr store it "
                         "was exported from, re-run extract, and export again")
    store = open_store(path, mode="r+")
    report = VerifyReport(str(store.path), damaged=[])
    report.num_leftovers_removed = store.clean_leftovers()
    for modality in MODALITIES:
        for fp in store.fingerprints(modality):
            entry = store.entry(modality, fp)
            statuses = entry.statuses()
            for index, clip_id in enumerate(store.clip_ids):
                if clip_id in entry.damaged_status:
                    report.damaged.append((modality, clip_id, f"{modality}/status is damaged"))
                    if repair:
                        entry.mark(clip_id, ClipStatus.FAILED, f"damaged: {modality}/status is damaged")
                elif statuses[index] == ClipStatus.DONE:
                    report.num_checked += 1
                    try:
                        for view in range(entry.num_views + 1):   # the clean clip, then each augmented view
                            entry.read_clip(clip_id, view=view)
                        entry.view_params(clip_id)
                    except CorruptClipError as err:
                        problem = str(err).split(": ", 2)[-1].split(";")[0]
                        report.damaged.append((modality, clip_id, problem))
                        if repair:
                            entry.mark(clip_id, ClipStatus.FAILED, f"damaged: {problem}")
                else:
                    for chunk in entry.clip_chunk_files(index):
                        if chunk.exists():
                            chunk.unlink()
                            report.num_leftovers_removed += 1
    return report
