"""crop_faces on a real face photo (skimage's astronaut) pasted into wider frames, and on blank frames; crop_tracks
and the IoU tracker on two demo faces (tests/face_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest
from face_helpers import TWO_FACES_HW, track_crop_owners, two_face_frames
from skimage.data import astronaut

from mmfer.extract.facecrop import crop_faces

FACE_BOX = np.array([172, 52, 282, 172])   # hand-labelled face (hairline to chin, ear to ear) in astronaut()


def _scene(offsets: list[tuple[int, int]], height: int = 360, width: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """Frames (Tv, H, W, 3) with the 512 px photo pasted at each offset; returns frames and face boxes (Tv, 4)."""
    photo = astronaut()
    frames = np.full((len(offsets), height, width, 3), 128, np.uint8)
    for t, (ox, oy) in enumerate(offsets):
        y0, x0 = max(oy, 0), max(ox, 0)
        y1, x1 = min(oy + 512, height), min(ox + 512, width)
        frames[t, y0:y1, x0:x1] = photo[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    boxes = np.array([FACE_BOX + [ox, oy, ox, oy] for ox, oy in offsets], dtype=float)
    return frames, boxes


def _overlap(norm_boxes: np.ndarray, face_boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: (IoU of crop and face, fraction of the face inside the crop)."""
    crop = norm_boxes * [width, height, width, height]
    iw = np.clip(np.minimum(crop[:, 2], face_boxes[:, 2]) - np.maximum(crop[:, 0], face_boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(crop[:, 3], face_boxes[:, 3]) - np.maximum(crop[:, 1], face_boxes[:, 1]), 0, None)
    inter = iw * ih
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    return inter / (area(crop) + area(face_boxes) - inter), inter / area(face_boxes)


def test_detect_finds_the_face_and_follows_it():
    offsets = [(60 + 8 * t, -20 + 2 * t) for t in range(8)]
    frames, faces = _scene(offsets)
    crops, boxes, found = crop_faces(frames, "detect", out_px=112)
    assert found and crops.shape == (8, 112, 112, 3) and crops.dtype == np.uint8
    assert boxes.shape == (8, 4) and boxes.dtype == np.float32
    iou, coverage = _overlap(boxes, faces, 360, 640)
    assert iou.min() > 0.3 and coverage.min() > 0.9, f"iou {iou.round(2)}, coverage {coverage.round(2)}"
    center_iou, _ = _overlap(crop_faces(frames, "center").boxes, faces, 360, 640)
    assert iou.mean() > 2 * center_iou.mean()


def test_detect_is_smooth_and_fills_missed_frames():
    frames, faces = _scene([(100, 0)] * 7)
    rng = np.random.default_rng(0)
    frames = np.clip(frames + rng.normal(0, 4, frames.shape), 0, 255).astype(np.uint8)   # per-frame noise
    frames[3] = 0   # a frame with no face takes its neighbours' box
    first = crop_faces(frames, "detect")
    assert first.found_face
    assert np.abs(first.boxes - first.boxes[0]).max() < 0.01, first.boxes
    iou, _ = _overlap(first.boxes[3:4], faces[3:4], 360, 640)
    assert iou[0] > 0.3
    again = crop_faces(frames, "detect")
    assert np.array_equal(first.boxes, again.boxes) and np.array_equal(first.crops, again.crops)


def test_no_face_falls_back_to_centre():
    frames = np.zeros((4, 90, 160, 3), np.uint8)
    crops, boxes, found = crop_faces(frames, "detect", out_px=32)
    assert not found and crops.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(boxes, crop_faces(frames, "center").boxes)


def test_none_and_center_shapes():
    frames = np.random.default_rng(1).integers(0, 256, (3, 90, 160, 3), dtype=np.uint8)
    none = crop_faces(frames, "none")
    assert np.array_equal(none.crops, frames) and np.all(none.boxes == [0, 0, 1, 1]) and not none.found_face
    center = crop_faces(frames, "center")
    assert center.crops.shape == (3, 90, 90, 3) and np.array_equal(center.crops, frames[:, :, 35:125])
    np.testing.assert_allclose(center.boxes[0], [35 / 160, 0, 125 / 160, 1])
    assert crop_faces(frames, "none", out_px=48).crops.shape == (3, 48, 48, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        crop_faces(np.zeros((1, 8, 8, 3), np.uint8), "faces")
    with pytest.raises(ValueError, match="uint8"):
        crop_faces(np.zeros((1, 8, 8, 3), np.float32), "none")


# ---- every face (crop_tracks, extract/facetrack.py) ---------------------------------------------------

def test_crop_tracks_give_each_face_its_own_crops():
    from mmfer.extract.facecrop import crop_tracks

    frames, tiles = two_face_frames(25)
    frames = frames[::3]                       # Tv = 9 sampled frames, 0.12 s apart
    tiles = tiles[::3]
    frames[4, :, 128:] = 60                    # the right face is missing from one frame: its track goes on
    tracks = crop_tracks(frames, out_px=64)
    assert len(tracks) == 2, [t.box_px for t in tracks]
    owners = track_crop_owners(tracks, tiles, *TWO_FACES_HW)
    assert (owners[0] == 0).all() and (owners[1] == 1).all(), owners
    assert tracks[1].has_face.tolist() == [True] * 4 + [False] + [True] * 4 and tracks[0].has_face.all()
    # pixels: the left (skin) face is red over blue, the right (swapped) one blue over red
    red_minus_blue = [t.crops[..., 0].astype(float).mean() - t.crops[..., 2].astype(float).mean() for t in tracks]
    assert red_minus_blue[0] > 10 and red_minus_blue[1] < -10, red_minus_blue
    assert tracks[0].crops.shape == (9, 64, 64, 3)
    # the right face moves down: its crop follows (the missing frame takes its neighbours' box)
    tops = tracks[1].boxes[:, 1] * TWO_FACES_HW[0]
    assert tops[-1] > tops[0] + 10 and tops[3] <= tops[4] <= tops[5], tops
    x0, y0, x1, y1 = tracks[1].box_px      # the median detected face lies in the drawn tile's span
    assert 150 <= x0 and x1 <= 256 and 0 <= y0 and y1 <= 64 + 96 + 8, tracks[1].box_px
    # the default crop keeps one face, as before
    one = crop_faces(frames, "detect")
    assert one.found_face and one.boxes.shape == (9, 4)


def test_iou_tracker_links_boxes_across_misses():
    from mmfer.extract.facetrack import IouTracker, track_boxes

    a, b = np.array([0, 0, 10, 10.0]), np.array([50, 0, 60, 10.0])
    tracks = track_boxes([np.stack([b, a]), np.stack([a + 1]), np.zeros((0, 4)), np.stack([a + 2, b + 2]),
                          np.stack([[200, 200, 210, 210.0]])])
    # two tracks, left one first; the one-frame box at (200, 200) is dropped (MIN_HITS = 2)
    assert tracks.shape == (2, 5, 4)
    assert np.isfinite(tracks[0, :, 0]).tolist() == [True, True, False, True, False]
    assert np.isfinite(tracks[1, :, 0]).tolist() == [True, False, False, True, False]
    tracker = IouTracker(max_missed=1)
    assert tracker.update(np.stack([a])) == [0]
    tracker.update(np.zeros((0, 4)))
    tracker.update(np.zeros((0, 4)))
    assert tracker.update(np.stack([a])) == [1]   # missed 2 > 1 steps: a new track
