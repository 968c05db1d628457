"""The one featurizer: decoded clips in, what the store holds and what the model reads out.

`Featurizer(spec, encoders)` turns `DecodedItem`s (decoded frames run through the image processor, 16 kHz
audio) into each clip's stored arrays, and a clip's stored arrays into the inputs the model reads
(`ClipDataset` items). Extract writes its output; predict, `evaluate --corrupt face-crop-off` and the bench's
online path feed it to the model. So a clip predicted from a video file is the clip training read from the
cache, by construction: the same decode settings (`decode_jobs`, from the spec), the same encoder batching
(all frames of a batch in one visual call, each clip's audio alone), the same token pooling, padding and the
store's own dtype cast (`as_stored`, int8 round trip included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmfer.core.config import ExtractConfig
from mmfer.core.feature_spec import FeatureSpec
from mmfer.core.store import as_stored
from mmfer.extract.shrink import pool_tokens
from mmfer.extract.items import DecodedItem, DecodeJob

NO_VIDEO_FRAMES = 1   # frames decoded for a model that reads no video (decode_clip always reads some)


@dataclass
class ClipFeatures:
    """One clip's arrays as the store takes them, for the clean clip and each augmented view.

    video: per version {"tokens": float32 (Tv, P, Dv) pooled by token_pool, "pooled": float32 (Tv, Dv)};
    timestamps_s (Tv,) and boxes (Tv, 4) are the clean clip's. audio: per version {"tokens": float32 (Ta_max, Da)
    zero-padded, "length": int32 kept frames}, or [] when the clip has no audio stream.
    """

    item: DecodedItem
    video: list[dict[str, np.ndarray]] = field(default_factory=list)
    audio: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)


class Featurizer:
    """A `FeatureSpec` and the loaded encoders it names (extract/encoders/); see the module docstring."""

    def __init__(self, spec: FeatureSpec, encoders) -> None:
        self.spec = spec
        self.encoders = encoders

    def decode_jobs(self, clips: pd.DataFrame, *, timeout_s: float, num_views: int = 0,
                    other_face_crop: str | None = None) -> list[DecodeJob]:
        """One DecodeJob per clip-table row (clip_id, path, source and, when present, start_s, end_s, audio_path)
        with the spec's decode settings; `other_face_crop` replaces the recorded one (evaluate's face-crop-off)."""
        video, audio, defaults = self.spec.video, self.spec.audio, ExtractConfig()
        # a model that reads one modality still decodes the other (predict notes "no audio stream"): a few
        # frames without a crop, or audio at extract's default rate
        num_frames = video.settings["num_frames"] if video is not None else NO_VIDEO_FRAMES
        crop = other_face_crop or (video.settings["face_crop"] if video is not None else "none")
        sample_rate_hz = audio.settings["sample_rate_hz"] if audio is not None else defaults.sample_rate_hz
        max_audio_s = audio.settings["max_audio_s"] if audio is not None else defaults.max_audio_s
        return decode_jobs(clips, num_frames=num_frames, sample_rate_hz=sample_rate_hz, max_audio_s=max_audio_s,
                           timeout_s=timeout_s, face_crop=crop, num_views=num_views)

    def encode(self, items: list[DecodedItem]) -> list[ClipFeatures]:
        """Each decoded clip (and its views) through the encoders; items with `error` set are left out.

        Visual: every frame of every clip and view in one encoder call. Audio: one clip (with its views) per call,
        never zero-padded to another clip's length, which would leak into its tokens: the same values at any
        batch size or process count.
        """
        good = [item for item in items if item.error is None]
        if not good:
            return []
        out = [ClipFeatures(item) for item in good]
        if self.spec.video is not None:
            pool = int(self.spec.video.get("token_pool", 1))
            versions = 1 + len(good[0].view_pixel_inputs)
            tokens, pooled = self.encoders.encode_visual(
                [p for item in good for p in (item.pixel_inputs, *item.view_pixel_inputs)])
            for position, clip in enumerate(out):
                for v in range(position * versions, (position + 1) * versions):
                    clip.video.append({"tokens": pool_tokens(tokens[v], pool), "pooled": pooled[v]})
        if self.spec.audio is not None:
            max_frames = self.spec.max_audio_frames
            for clip in out:
                if clip.item.audio is not None:
                    encoded = self.encoders.encode_audio([clip.item.audio, *clip.item.view_audio])
                    clip.audio = [padded_audio(frames, max_frames) for frames in encoded]
        return out

    def model_inputs(self, clip: ClipFeatures) -> dict:
        """The clean clip as a `ClipDataset` item: tokens in the store's dtype (int8 read back as float16), audio
        cut to its kept length, as training read it from the cache.

        Raises:
            ValueError: an array's shape is not the stored one, or it holds NaN/Inf (names the clip).
        """
        item = {"clip_id": clip.item.clip_id, "label": 0, "has_video": self.spec.video is not None,
                "has_audio": False, "duration_s": clip.item.duration_s}
        if self.spec.video is not None:
            stored = as_stored(clip.item.clip_id, clip.video[0], _array_specs(self.spec.video, ("tokens", "pooled")),
                               "video", read_back=True)
            item["video_tokens"], item["video_pooled"] = stored["tokens"], stored["pooled"]
        if self.spec.audio is not None and clip.has_audio:
            stored = as_stored(clip.item.clip_id, clip.audio[0], _array_specs(self.spec.audio, ("tokens", "length")),
                               "audio", read_back=True)
            item["audio_tokens"] = stored["tokens"][: int(stored["length"])]
            item["has_audio"] = True
        return item


def _array_specs(spec, names: tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: spec.arrays[name] for name in names}


def padded_audio(frames: np.ndarray, max_audio_frames: int) -> dict[str, np.ndarray]:
    """(Ta, Da) encoder frames -> {"tokens": zero-padded (Ta_max, Da) float32, "length": int32 kept frames}."""
    padded = np.zeros((max_audio_frames, frames.shape[1]), dtype=np.float32)
    length = min(len(frames), max_audio_frames)
    padded[:length] = frames[:length]
    return {"tokens": padded, "length": np.int32(length)}


def decode_jobs(clips: pd.DataFrame, *, num_frames: int, sample_rate_hz: int, max_audio_s: float, timeout_s: float,
                face_crop: str, num_views: int) -> list[DecodeJob]:
    """One DecodeJob per row of `clips` (clip_id, path, source and, when present, start_s, end_s, audio_path: the
    clip table's columns)."""
    def optional(row, name: str):   # a manifest's segment / separate audio; absent or empty: None
        value = getattr(row, name, None)
        return None if value is None or (isinstance(value, float) and value != value) or value == "" else value

    return [DecodeJob(r.clip_id, r.path, r.source, num_frames, sample_rate_hz, max_audio_s, timeout_s, face_crop,
                      optional(r, "start_s"), optional(r, "end_s"), optional(r, "audio_path") or "", num_views)
            for r in clips.itertuples()]
