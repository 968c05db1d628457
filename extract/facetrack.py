"""Greedy IoU tracking: which face box in one step is the same face as a box in the step before.

`predict --faces all` needs one box track per face, not one box per frame: each track gets its own crops and
its own prediction. The Haar cascade (facecrop.py) gives unordered boxes per sampled frame; `track_boxes` links
them from frame to frame (greedy, best IoU first), lets a track miss up to `max_missed` steps (a blink or a
turned head loses the cascade for a frame or two), and drops tracks seen fewer than `min_hits` times (one-frame
false positives). `IouTracker` is the same matcher fed one step at a time (predict links window tracks with it).
Boxes are (N, 4) float x0, y0, x1, y1 in pixels. Cropping is facecrop.py's job, numbering rows predict's.
"""

from __future__ import annotations

import numpy as np

MIN_IOU = 0.3      # a face moves < 1/3 of its width between sampled frames (Tv=16 over 2 s: 0.13 s apart)
MAX_MISSED = 3     # steps a track may go without a detection and still be continued
MIN_HITS = 2       # steps with a detection a track needs to count (drops one-frame false positives)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4), both x0, y0, x1, y1. Returns (N, M) float."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class IouTracker:
    """Track ids for boxes given one step at a time: `update(boxes)` returns each box's id (0, 1, ... in order of
    first appearance). A box continues the track whose last box it overlaps most (IoU >= min_iou, each track and
    box used once, best pair first); a track unseen for more than `max_missed` steps is closed for good."""

    def __init__(self, *, min_iou: float = MIN_IOU, max_missed: int = MAX_MISSED) -> None:
        self.min_iou, self.max_missed = min_iou, max_missed
        self.last_box: dict[int, np.ndarray] = {}   # open track id -> its last box (4,)
        self.missed: dict[int, int] = {}            # open track id -> steps since its last box
        self.num_tracks = 0

    def update(self, boxes: np.ndarray) -> list[int]:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        ids = list(self.last_box)
        ious = box_iou(boxes, np.array([self.last_box[i] for i in ids])) if ids else np.zeros((len(boxes), 0))
        assigned: list[int | None] = [None] * len(boxes)
        for flat in np.argsort(-ious, axis=None, kind="stable"):
            b, t = np.unravel_index(flat, ious.shape)
            if ious[b, t] < self.min_iou:
                break
            if assigned[b] is None and ids[t] not in assigned:
                assigned[b] = ids[t]
        for b, track in enumerate(assigned):
            if track is None:
                track = assigned[b] = self.num_tracks
                self.num_tracks += 1
            self.last_box[track], self.missed[track] = boxes[b], -1
        for track in list(self.missed):
            self.missed[track] += 1
            if self.missed[track] > self.max_missed:
                del self.missed[track], self.last_box[track]
        return assigned


def track_boxes(detections: list[np.ndarray], *, min_iou: float = MIN_IOU, max_missed: int = MAX_MISSED,
                min_hits: int = MIN_HITS) -> np.ndarray:
    """Link per-frame detections into tracks.

    Args:
        detections: Tv arrays (Ni, 4) float, the boxes found in each sampled frame (Ni may be 0).
        min_hits: frames with a detection a track needs (capped at Tv, so a one-frame clip keeps its faces).

    Returns:
        (N, Tv, 4) float64: track n's box in each frame, NaN where it has no detection; tracks ordered by their
        first frame, then left to right.
    """
    tracker = IouTracker(min_iou=min_iou, max_missed=max_missed)
    found: dict[int, dict[int, np.ndarray]] = {}   # track id -> frame -> box
    for frame, boxes in enumerate(detections):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        order = np.argsort(boxes[:, 0], kind="stable")   # left to right: new ids in reading order
        for box, track in zip(boxes[order], tracker.update(boxes[order])):
            found.setdefault(track, {})[frame] = box
    need = min(min_hits, len(detections))
    tracks = np.full((sum(len(f) >= need for f in found.values()), len(detections), 4), np.nan)
    for n, track in enumerate(t for t in sorted(found) if len(found[t]) >= need):
        for frame, box in found[track].items():
            tracks[n, frame] = box
    return tracks
