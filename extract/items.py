"""What a clip is between decoding and the encoders: the decode job and the decoded clip.

`DecodeJob` says what to decode (extract/worker.py decodes it with ffmpeg); `DecodedItem` holds the result that
`Featurizer.encode` reads. Kept apart from the worker so the featurizer (and `benchmarks/gpu_check.py`, which
feeds it clips decoded elsewhere) imports neither ffmpeg nor OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    start_s: float | None = None   # a segment of the file (a manifest's start_s / end_s); None: its start / end
    end_s: float | None = None
    audio_path: str = ""           # audio from this file instead of the video's own stream ("" : the video's)
    num_views: int = 0             # augmented views to prepare besides the clean clip (extract --views)

    @property
    def needs_preparing(self) -> bool:
        return self.start_s is not None or self.end_s is not None or bool(self.audio_path)


@dataclass
class DecodedItem:
    """pixel_inputs: the image processor's arrays for the Tv frames (e.g. pixel_values (Tv, 3, 224, 224)).
    timestamps_s: (Tv,) float32; boxes: (Tv, 4) float32 normalized; audio: (S,) float32 or None.
    view_pixel_inputs / view_audio: the same for each of the K augmented views (audio (S',), tempo-changed),
    and video_view_params / audio_view_params what each view was drawn with (extract/views.py).
    """

    clip_id: str
    path: str
    source: str
    error: str | None = None
    pixel_inputs: dict[str, np.ndarray] | None = None
    timestamps_s: np.ndarray | None = None
    boxes: np.ndarray | None = None
    audio: np.ndarray | None = None
    duration_s: float = 0.0
    found_face: bool = False
    view_pixel_inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    view_audio: list[np.ndarray] = field(default_factory=list)
    video_view_params: list[dict] = field(default_factory=list)
    audio_view_params: list[dict] = field(default_factory=list)
