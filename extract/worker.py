"""The CPU half of extraction, run in worker processes: decode, crop, image-processor preprocessing.

A job fails on its own (a `DecodedItem` with `error` set) instead of raising, so one bad file never
stops the run or the worker.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from mmfer.extract.items import DecodedItem, DecodeJob   # defined there so the featurizer needs no decoder
from mmfer.extract.decode import DecodeError, decode_clip
from mmfer.extract.facecrop import TrackCrops, crop_faces, crop_tracks
from mmfer.extract.views import audio_view, video_view
from mmfer.extract.encoders.siglip import preprocess_frames
from mmfer.core.media import FfmpegError, run_ffmpeg


def prepare_segment(job: DecodeJob, out_path: Path) -> Path:
    """A lossless copy (FFV1 + PCM) of [start_s, end_s) of the job's video, with the audio of `audio_path`
    (cut alike) when given, else the video's own audio; decode_clip then reads it as any clip."""
    start = ["-ss", f"{job.start_s:.6f}"] if job.start_s is not None else []
    length = ["-t", f"{job.end_s - (job.start_s or 0.0):.6f}"] if job.end_s is not None else []
    audio_in = [*start, "-i", job.audio_path] if job.audio_path else []
    audio_map = ["-map", "1:a:0"] if job.audio_path else ["-map", "0:a:0?"]
    run_ffmpeg(["-y", *start, "-i", job.path, *audio_in, *length, "-map", "0:V:0", *audio_map, "-sn", "-dn",
                "-c:v", "ffv1", "-c:a", "pcm_f32le", str(out_path)], path=job.path, timeout_s=job.timeout_s)
    return out_path


def decode_job(job: DecodeJob, processor) -> DecodedItem:
    """Decode one clip and prepare the visual encoder's inputs; errors become `DecodedItem.error`."""
    item = DecodedItem(job.clip_id, job.path, job.source)
    try:
        clip = _decode(job)
        crops = crop_faces(clip.frames, job.face_crop)
        item.pixel_inputs = preprocess_frames(processor, crops.crops)
        for view in range(1, job.num_views + 1):
            frames, params = video_view(crops.crops, job.clip_id, view)
            item.view_pixel_inputs.append(preprocess_frames(processor, frames))
            item.video_view_params.append(params)
            if clip.audio is not None:
                wave, params = audio_view(clip.audio, job.clip_id, view, sample_rate_hz=job.sample_rate_hz,
                                          timeout_s=job.timeout_s, path=job.path)
                item.view_audio.append(wave)
                item.audio_view_params.append(params)
    except DecodeError as err:
        item.error = f"{err.reason}: {err}"
        return item
    except FfmpegError as err:   # the segment or the separate audio file could not be read
        item.error = f"ffmpeg-error: {err}"
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


def _decode(job: DecodeJob):
    """decode_clip of the job's file, or of its segment / separate audio prepared first."""
    prepared = tempfile.TemporaryDirectory(prefix="mmfer-segment-") if job.needs_preparing else contextlib.nullcontext()
    with prepared as tmp:
        path = prepare_segment(job, Path(tmp) / "clip.mkv") if job.needs_preparing else job.path
        return decode_clip(path, num_frames=job.num_frames, sample_rate_hz=job.sample_rate_hz,
                           timeout_s=job.timeout_s, max_audio_s=job.max_audio_s)


def decode_tracks(job: DecodeJob, processor) -> list[tuple[TrackCrops, DecodedItem]]:
    """`decode_job` for every face (predict --faces all): one DecodedItem per face track of the clip, its frames
    cropped from that track's boxes only (facecrop.crop_tracks), each with the clip's whole audio; [] without faces.

    Raises:
        DecodeError, FfmpegError: the clip cannot be decoded (decode_job records these instead).
    """
    clip = _decode(job)
    return track_items(clip.frames, clip_id=job.clip_id, path=job.path, source=job.source, processor=processor,
                       timestamps_s=clip.timestamps_s, audio=clip.audio, duration_s=clip.duration_s)


def track_items(frames: np.ndarray, *, clip_id: str, path: str, source: str, processor, timestamps_s: np.ndarray,
                audio: np.ndarray | None, duration_s: float) -> list[tuple[TrackCrops, DecodedItem]]:
    """Each face track of frames (Tv, H, W, 3) uint8 with the DecodedItem of its crops (image processor run)."""
    out = []
    for track in crop_tracks(frames):
        item = DecodedItem(clip_id, path, source)
        item.pixel_inputs = preprocess_frames(processor, track.crops)
        item.timestamps_s, item.boxes, item.audio = timestamps_s, track.boxes, audio
        item.duration_s, item.found_face = duration_s, True
        out.append((track, item))
    return out
