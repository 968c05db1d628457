"""Crop each clip's frames to the speaker's face before the image encoder sees them.

In: decoded frames (Tv, H, W, 3) uint8 RGB. Out: square crops (Tv, h, w, 3) and their boxes.
Modes: "none" (whole frame), "center" (central square) or "detect" (OpenCV Haar cascade per frame,
then one smoothed box track per clip). `crop_tracks` crops every face instead (predict --faces all): one
track per face (facetrack.py), each cropped from its own boxes. Decoding is `decode.py`'s job, encoding `video.py`'s.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import cv2
import numpy as np

from mmfer.extract.facetrack import box_iou, track_boxes

log = logging.getLogger(__name__)

MODES = ("none", "center", "detect")
DETECT_SIDE_PX = 320      # frames are shrunk to this longer side for detection: a 25%-width face is ~80 px
MIN_FACE_PX = 24          # the cascade's own window is 24 px
SMOOTH_WINDOW = 5         # frames in the running median over box centres (about 1.5 s at Tv=16 over 5 s)
SCALE_FACTOR = 1.1        # the cascade's step between window sizes
MIN_NEIGHBORS = 5         # overlapping windows a box needs to count as a face
FACE_MARGIN = 0.25        # "detect" widens the face box by this fraction of its side on each side
CASCADE_FILE = "haarcascade_frontalface_default.xml"
DUPLICATE_IOU = 0.3       # crop_tracks: boxes of one frame overlapping this much are one face found twice


def detector_settings() -> dict:
    """Every constant that decides a "detect" crop, for the feature fingerprint (extract/run.py)."""
    return {"cascade": CASCADE_FILE, "detect_side_px": DETECT_SIDE_PX, "min_face_px": MIN_FACE_PX,
            "scale_factor": SCALE_FACTOR, "min_neighbors": MIN_NEIGHBORS, "smooth_window": SMOOTH_WINDOW,
            "margin": FACE_MARGIN, "track": "interpolate misses, running median of centres, median side"}


class FaceCrops(NamedTuple):
    """crops: (Tv, h, w, 3) uint8 RGB, square unless mode is "none" without `out_px`.
    boxes: (Tv, 4) float32, normalized x0, y0, x1, y1 of each crop in its frame.
    found_face: True when "detect" found a face in at least one frame (False for the other modes).
    """

    crops: np.ndarray
    boxes: np.ndarray
    found_face: bool


def crop_faces(frames: np.ndarray, mode: str, *, out_px: int | None = None, margin: float = FACE_MARGIN) -> FaceCrops:
    """Crop a clip's frames with one box per frame.

    Args:
        frames: (Tv, H, W, 3) uint8 RGB.
        mode: "none", "center" or "detect". "detect" falls back to "center" (with a warning and
            found_face=False) when no frame has a face.
        out_px: resize every crop to out_px x out_px; None keeps the crop's own size.
        margin: "detect" widens the face box by this fraction of its side on each side.

    Raises:
        ValueError: on an unknown mode or frames that are not (Tv, H, W, 3) uint8.
    """
    if mode not in MODES:
        raise ValueError(f"face crop mode must be one of {MODES}, got {mode!r}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"want frames (Tv, H, W, 3) uint8 with Tv >= 1, got {frames.shape} {frames.dtype}")
    num_frames, height, width = frames.shape[:3]
    found_face = False
    if mode == "none":
        squares = None
    elif mode == "center":
        squares = _center_squares(num_frames, height, width)
    else:
        faces = np.array([_detect_face(f) for f in frames], dtype=np.float64)   # (Tv, 3) cx, cy, side
        found_face = bool(np.isfinite(faces[:, 0]).any())
        # no face anywhere: the centre crop, said by `found_face` (extract warns per clip, predict per file)
        squares = _smooth_track(faces, height, width, margin) if found_face else _center_squares(num_frames, height, width)

    if squares is None:
        boxes = np.tile(np.array([0, 0, 1, 1], dtype=np.float32), (num_frames, 1))
        crops = [f for f in frames]
    else:   # squares: (Tv, 3) int x0, y0, side in pixels
        boxes = np.stack(
            [squares[:, 0] / width, squares[:, 1] / height,
             (squares[:, 0] + squares[:, 2]) / width, (squares[:, 1] + squares[:, 2]) / height], axis=1
        ).astype(np.float32)
        crops = [f[y:y + s, x:x + s] for f, (x, y, s) in zip(frames, squares)]
    if out_px is not None:
        crops = [_resize(c, out_px) for c in crops]
    return FaceCrops(np.stack(crops), boxes, found_face)


def _center_squares(num_frames: int, height: int, width: int) -> np.ndarray:
    side = min(height, width)
    return np.tile(np.array([(width - side) // 2, (height - side) // 2, side]), (num_frames, 1))


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = cv2.data.haarcascades + CASCADE_FILE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"{path}: cannot load the Haar cascade; reinstall opencv-python-headless (4.x)")
    return cascade


def _detections(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The cascade's boxes (N, 4) int x, y, w, h and votes (N,) on the frame shrunk by `scale` (returned too)."""
    scale = min(1.0, DETECT_SIDE_PX / max(frame.shape[:2]))
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    found, votes = _cascade().detectMultiScale2(
        gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(MIN_FACE_PX, MIN_FACE_PX)
    )
    return np.asarray(found, int).reshape(-1, 4), np.asarray(votes, int).reshape(-1), scale


def detect_faces(frame: np.ndarray) -> np.ndarray:
    """Every frontal face in an (H, W, 3) uint8 RGB frame: (N, 4) float x0, y0, x1, y1 in frame pixels, most
    votes first; a box overlapping a better one (IoU > DUPLICATE_IOU) is the same face found twice and dropped."""
    found, votes, scale = _detections(frame)
    order = sorted(range(len(found)), key=lambda i: (-int(votes[i]), -int(found[i][2])))
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in found[order]], dtype=np.float64).reshape(-1, 4) / scale
    kept: list[int] = []
    for i in range(len(boxes)):
        if not kept or box_iou(boxes[i:i + 1], boxes[kept]).max() <= DUPLICATE_IOU:
            kept.append(i)
    return boxes[kept]


class TrackCrops(NamedTuple):
    """One face track of a clip. crops: (Tv, h, w, 3) uint8 RGB squares from this track's boxes only.
    boxes: (Tv, 4) float32 normalized crop boxes (as FaceCrops). face_px: (Tv, 4) float32 x0, y0, x1, y1 of the
    detected face in pixels, NaN in frames where the track has no detection.
    """

    crops: np.ndarray
    boxes: np.ndarray
    face_px: np.ndarray

    @property
    def has_face(self) -> np.ndarray:
        """(Tv,) bool: True in the frames where this track's face was detected."""
        return np.isfinite(self.face_px[:, 0])

    @property
    def box_px(self) -> tuple[float, float, float, float]:
        """The track's face box: the median of its detected boxes, x0, y0, x1, y1 in pixels."""
        return tuple(float(v) for v in np.median(self.face_px[self.has_face], axis=0))


def crop_tracks(frames: np.ndarray, *, out_px: int | None = None, margin: float = FACE_MARGIN) -> list[TrackCrops]:
    """Crop every face of a clip: detect faces in each frame, link them into tracks (facetrack.py), and crop each
    track like "detect" crops its one face (missed frames interpolated between the track's neighbouring
    detections, its nearest box before the first and after the last, running median of centres, median side).

    Args:
        frames: (Tv, H, W, 3) uint8 RGB.

    Returns:
        one TrackCrops per track, ordered by first frame then left to right; [] when no frame has a face.

    Raises:
        ValueError: frames that are not (Tv, H, W, 3) uint8.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"want frames (Tv, H, W, 3) uint8 with Tv >= 1, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    out = []
    for track in track_boxes([detect_faces(f) for f in frames]):   # track: (Tv, 4), NaN where missed
        faces = np.stack([(track[:, 0] + track[:, 2]) / 2, (track[:, 1] + track[:, 3]) / 2,
                          np.maximum(track[:, 2] - track[:, 0], track[:, 3] - track[:, 1])], axis=1)   # (Tv, 3)
        squares = _smooth_track(faces, height, width, margin)
        boxes = np.stack([squares[:, 0] / width, squares[:, 1] / height, (squares[:, 0] + squares[:, 2]) / width,
                          (squares[:, 1] + squares[:, 2]) / height], axis=1).astype(np.float32)
        crops = [f[y:y + s, x:x + s] for f, (x, y, s) in zip(frames, squares)]
        if out_px is not None:
            crops = [_resize(c, out_px) for c in crops]
        out.append(TrackCrops(np.stack(crops), boxes, track.astype(np.float32)))
    return out


def _detect_face(frame: np.ndarray) -> tuple[float, float, float]:
    """(cx, cy, side) in frame pixels of the most certain frontal face, or NaNs when there is none."""
    found, votes, scale = _detections(frame)
    if len(found) == 0:
        return (np.nan, np.nan, np.nan)
    # the box most windows agree on: on real faces it gets 10-40 votes, textures that fool the cascade
    # (clothing, background) 5-8, and those are often bigger, so "largest" would pick them
    best = max(range(len(found)), key=lambda i: (int(votes[i]), int(found[i][2]), -int(found[i][0]), -int(found[i][1])))
    x, y, w, h = found[best]
    return ((x + w / 2) / scale, (y + h / 2) / scale, max(w, h) / scale)


def _smooth_track(faces: np.ndarray, height: int, width: int, margin: float) -> np.ndarray:
    """One square per frame from per-frame detections (NaN = missed). Returns (Tv, 3) int x0, y0, side.

    Missed frames take values interpolated from their neighbours; centres then go through a running
    median (drops one-frame false positives and jitter); the side is the clip's median, so the crop
    does not zoom in and out.
    """
    index = np.arange(len(faces))
    hit = np.isfinite(faces[:, 0])
    filled = np.stack([np.interp(index, index[hit], faces[hit, k]) for k in range(3)], axis=1)   # (Tv, 3)
    half = SMOOTH_WINDOW // 2
    padded = np.pad(filled, ((half, half), (0, 0)), mode="edge")
    centres = np.stack([np.median(padded[i:i + SMOOTH_WINDOW, :2], axis=0) for i in index])   # (Tv, 2)
    side = min(float(np.median(filled[:, 2])) * (1 + 2 * margin), height, width)
    side_px = int(round(side))
    x0 = np.clip(np.round(centres[:, 0] - side / 2), 0, width - side_px).astype(int)
    y0 = np.clip(np.round(centres[:, 1] - side / 2), 0, height - side_px).astype(int)
    return np.stack([x0, y0, np.full_like(x0, side_px)], axis=1)


def _resize(image: np.ndarray, out_px: int) -> np.ndarray:
    shrink = max(image.shape[:2]) > out_px
    return cv2.resize(image, (out_px, out_px), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
