"""The CPU half of extraction, run in worker processes: decode, crop, image-processor preprocessing.

A job fails on its own (a `DecodedItem` with `error` set) instead of raising, so one bad file never
stops the run or the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmfer.extract.decode import DecodeError, decode_clip
from mmfer.extract.facecrop import crop_faces
from mmfer.extract.visual import preprocess_frames


@dataclass(frozen=True)
class DecodeJob:
    clip_id: str
    path: str
    source: str            # file signature when the clip table was made; stored with the features
    num_frames: int
    sample_rate_hz: int
    max_audio_s: float
    timeout_s: float
    face_crop: str


@dataclass
class DecodedItem:
    """pixel_inputs: the image processor's tensors for the Tv frames (e.g. pixel_values (Tv, 3, 224, 224)).
    timestamps_s: (Tv,) float32; boxes: (Tv, 4) float32 normalized; audio: (S,) float32 or None.
    """

    clip_id: str
    path: str
    source: str
    error: str | None = None
    pixel_inputs: dict[str, torch.Tensor] | None = None
    timestamps_s: np.ndarray | None = None
    boxes: np.ndarray | None = None
    audio: np.ndarray | None = None
    duration_s: float = 0.0
    found_face: bool = False


def decode_job(job: DecodeJob, processor) -> DecodedItem:
    """Decode one clip and prepare the visual encoder's inputs; errors become `DecodedItem.error`."""
    item = DecodedItem(job.clip_id, job.path, job.source)
    try:
        clip = decode_clip(job.path, num_frames=job.num_frames, sample_rate_hz=job.sample_rate_hz,
                           timeout_s=job.timeout_s, max_audio_s=job.max_audio_s)
        crops = crop_faces(clip.frames, job.face_crop)
        item.pixel_inputs = preprocess_frames(processor, crops.crops)
    except DecodeError as err:
        item.error = f"{err.reason}: {err}"
        return item
    except (OSError, ValueError) as err:   # unreadable path, odd frames the processor rejects
        item.error = f"{type(err).__name__}: {job.path}: {err}"
        return item
    item.timestamps_s = clip.timestamps_s
    item.boxes = crops.boxes
    item.audio = clip.audio
    item.duration_s = clip.duration_s
    item.found_face = crops.found_face
    return item
