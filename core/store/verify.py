"""`mmfer verify STORE [--repair]`: re-read every done clip of a store through its checks, and clean up.

Read only without `--repair` (safe beside a running extract). `--repair` writes: it takes the extract writer
lock (lock.py), so it refuses while an extract writes the store (and an extract refuses while it repairs). Built on
the reading interface only (statuses, `read_clip`, `clip_chunk_files`, `mark`, `clean_leftovers`), so it checks an
HDF5 export as it checks a Zarr store; it spells no path inside the store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mmfer.core.store import open_store
from mmfer.core.store.layout import MODALITIES, ClipStatus, CorruptClipError, StoreError, is_h5_path
from mmfer.core.store.lock import writer_lock, writer_lock_holder
from mmfer.core.store.reading import StoreReader


@dataclass
class VerifyReport:
    store_path: str
    num_checked: int = 0
    damaged: list[tuple[str, str, str]] = field(default_factory=list)   # (modality, clip_id, problem)
    num_leftovers_removed: int = 0
    num_leftovers_found: int = 0        # without --repair: left in place
    writer: str | None = None           # an extract writing the store while it was checked (read only)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def format(self) -> str:
        if self.num_leftovers_found:
            kept = (f"an extract is writing the store ({self.writer}): {self.num_leftovers_found} unfinished files left "
                    "in place" if self.writer else f"{self.num_leftovers_found} leftovers of interrupted writes "
                    "found (`--repair` removes them)")
        else:
            kept = f"removed {self.num_leftovers_removed} leftovers of interrupted writes"
        lines = [f"{self.store_path}: checked {self.num_checked} done clip entries, {len(self.damaged)} damaged, {kept}"]
        lines += [f"  {modality} {clip_id}: {problem}" for modality, clip_id, problem in self.damaged]
        return "\n".join(lines)


def verify_store(path: str | os.PathLike, *, repair: bool = False) -> VerifyReport:
    """Re-read every chunk of every done clip (checksums included) and name the damaged ones; read only.

    With `repair` (under the writer lock): damaged clips are marked FAILED ("damaged: ...") so the next extract
    redoes them, and leftovers are deleted: staging folders, `*.partial` files and data chunks of clips that
    are not done.

    Raises:
        StoreError: `repair` on an HDF5 export, or while another process (named by pid) holds the writer lock.
    """
    if repair and is_h5_path(path):
        raise StoreError(f"{path}: an HDF5 export is read only; run `mmfer verify --repair` on the Zarr store it "
                         "was exported from, re-run extract, and export again")
    if not repair:
        return _verify(open_store(path, mode="r"), repair=False)
    open_store(path)   # "no store here" before any lock file is made
    with writer_lock(path, what="verify --repair"):
        return _verify(open_store(path, mode="r+"), repair=True)


def _verify(store: StoreReader, *, repair: bool) -> VerifyReport:
    report = VerifyReport(str(store.path), damaged=[])
    if repair:
        report.num_leftovers_removed = store.clean_leftovers()
    else:
        report.num_leftovers_found = len(store.leftovers())
        report.writer = None if is_h5_path(store.path) else writer_lock_holder(store.path)
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
                else:   # a clip not done: its chunks are an interrupted (or, without the lock, a running) write's
                    for chunk in entry.clip_chunk_files(index):
                        if chunk.exists():
                            if repair:
                                chunk.unlink()
                                report.num_leftovers_removed += 1
                            else:
                                report.num_leftovers_found += 1
    return report
