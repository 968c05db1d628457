"""Two synthetic faces in one video for `--faces all` (test_facecrop.py, test_predict.py): frames, where each face
was drawn, and which face each track's crops cover."""

from __future__ import annotations

import numpy as np

TWO_FACES_HW = (192, 256)   # two 96 px demo faces side by side, 48 px apart
FACE_PX = 96


def two_face_frames(num_frames: int, *, fps: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """Two demo faces (data/demo.py's drawing): actor 1 happy on the left, still; actor 2 angry on the right, its
    colour channels swapped (a blue face, so a crop's colour says whose it is), moving 64 px down over the clip.

    Returns frames (Tv, 192, 256, 3) uint8 RGB and the faces' drawn tiles (Tv, 2, 4) x0, y0, x1, y1 in pixels.
    """
    from mmfer.data.demo import render_demo_clip

    def face(emotion: str, actor: int) -> np.ndarray:
        return render_demo_clip(emotion, actor, duration_s=num_frames / fps, size_px=FACE_PX, fps=fps,
                                sample_rate_hz=16000, intensity=2, statement=1, repetition=1, seed=0,
                                with_audio=False)[0]

    left, right = face("happy", 1), face("angry", 2)[..., ::-1]
    frames = np.full((num_frames, *TWO_FACES_HW, 3), 60, np.uint8)
    tiles = np.zeros((num_frames, 2, 4))
    x_right = TWO_FACES_HW[1] - 8 - FACE_PX
    for t in range(num_frames):
        y = int(round(64 * t / max(num_frames - 1, 1)))
        frames[t, 8:8 + FACE_PX, 8:8 + FACE_PX] = left[t]
        frames[t, y:y + FACE_PX, x_right:x_right + FACE_PX] = right[t]
        tiles[t] = [[8, 8, 8 + FACE_PX, 8 + FACE_PX], [x_right, y, x_right + FACE_PX, y + FACE_PX]]
    return frames, tiles


def track_crop_owners(tracks, tiles: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """For each track, per frame: which drawn face (0 left, 1 right) its crop box covers most, -1 if neither is
    covered at least 90 % (its crop must hold its own face whole, and the other not at all: at most 10 %)."""
    owners = []
    for track in tracks:
        coverage = np.stack([_coverage(track.boxes, tiles[:, k], height, width) for k in (0, 1)], axis=1)
        best = coverage.argmax(axis=1)
        mine, other = coverage.max(axis=1), coverage.min(axis=1)
        owners.append(np.where((mine >= 0.9) & (other <= 0.1), best, -1))
    return owners


def _coverage(norm_boxes: np.ndarray, face_boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per frame: the fraction of the face box (Tv, 4) pixels inside the crop box (Tv, 4) normalized."""
    crop = norm_boxes * [width, height, width, height]
    iw = np.clip(np.minimum(crop[:, 2], face_boxes[:, 2]) - np.maximum(crop[:, 0], face_boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(crop[:, 3], face_boxes[:, 3]) - np.maximum(crop[:, 1], face_boxes[:, 1]), 0, None)
    return iw * ih / ((face_boxes[:, 2] - face_boxes[:, 0]) * (face_boxes[:, 3] - face_boxes[:, 1]))
