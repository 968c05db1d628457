"""One source's windows through the model as it is decoded: `mmfer predict --stream` and `--window FILE`.

extract/stream.py decodes the source once (one ffmpeg process) and slides the windows over it in memory; each
window goes through the Predictor like a clip (face crop, image processor, the featurizer's encode and store
dtype cast, the model). `predict_windows` yields one `WindowPrediction` per window (per window and face track
with --faces all); `run_stream` is the `--stream` command: a JSON line per window on stdout, Ctrl-C stops and
keeps the windows done.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

log = logging.getLogger(__name__)

WINDOW_EPS_S = 1e-3   # a window may end this much past the reported duration (container rounding)


@dataclass
class WindowPrediction:
    """probabilities: (C,) float32; latency_ms: from the window's last frame and audio arriving to its probabilities."""

    start_s: float
    end_s: float
    probabilities: np.ndarray
    latency_ms: float
    notes: list[str] = field(default_factory=list)
    track: int | None = None                               # --faces all: the face track, numbered over the source
    box_px: tuple[float, float, float, float] | None = None   # its face box in this window, x0, y0, x1, y1 pixels
    span_s: tuple[float, float] | None = None              # its first and last detection in this window, s


def window_starts(duration_s: float, window_s: float, hop_s: float) -> list[float]:
    """Starts of the full windows that fit in the clip (one window of the whole clip when it is shorter)."""
    if duration_s <= window_s + WINDOW_EPS_S:
        return [0.0]
    count = int(np.floor((duration_s - window_s + WINDOW_EPS_S) / hop_s)) + 1
    return [round(i * hop_s, 6) for i in range(count)]


def decode_settings(predictor, source: str):
    """The model's decode settings (Tv, sample rate, max audio, face crop) as the featurizer's DecodeJob holds them."""
    import pandas as pd

    (job,) = predictor.featurizer.decode_jobs(pd.DataFrame({"clip_id": [source], "path": [source], "source": [""]}),
                                             timeout_s=predictor.decode_timeout_s)
    return job


def predict_windows(predictor, source, *, clip_id: str, window_s: float, hop_s: float,
                    faces: str = "largest") -> Iterator[WindowPrediction]:
    """Predict each window of `source` (a path or URL string, or an extract.stream.StreamSource) as it is decoded.

    faces "all": a prediction per face track of each window (none for a window without a face), each from its own
    crops; a window's tracks continue the previous windows' tracks their median box overlaps (extract/facetrack.py),
    so `track` numbers one face over the whole source.

    Raises:
        DecodeError: the source cannot be opened or ffmpeg fails (windows already yielded stay yielded).
        PredictError: a window cannot be encoded.
    """
    from mmfer.extract.facetrack import IouTracker
    from mmfer.extract.stream import MediaStream, stream_source, stream_windows, window_item
    from mmfer.extract.worker import track_items

    if isinstance(source, (str, Path)):
        source = stream_source(str(source), timeout_s=predictor.decode_timeout_s)
    job = decode_settings(predictor, source.name)
    linker = IouTracker()   # window tracks -> source tracks, by their median boxes
    with MediaStream(source, sample_rate_hz=job.sample_rate_hz) as stream:
        for window in stream_windows(stream, window_s=window_s, hop_s=hop_s, num_frames=job.num_frames,
                                     max_audio_s=job.max_audio_s):
            if faces == "all":
                tracks = track_items(window.frames, clip_id=f"{clip_id}@{window.start_s:g}s", path=source.name,
                                     source="", processor=predictor.processor, timestamps_s=window.timestamps_s,
                                     audio=window.audio, duration_s=window.duration_s)
                numbers = linker.update(np.array([track.box_px for track, _ in tracks]))
                for (track, item), number in zip(tracks, numbers):
                    features = predictor.decoded_features(item, face_crop="detect")
                    (probabilities,) = predictor.predict([features])
                    seen_s = window.start_s + window.timestamps_s[track.has_face]
                    yield WindowPrediction(window.start_s, window.end_s, probabilities,
                                           (time.perf_counter() - window.ready_s) * 1e3, features["notes"], number,
                                           track.box_px, (round(float(seen_s.min()), 6), round(float(seen_s.max()), 6)))
                continue
            item = window_item(window, clip_id=f"{clip_id}@{window.start_s:g}s", path=source.name,
                               processor=predictor.processor, face_crop=job.face_crop)
            features = predictor.decoded_features(item, face_crop=job.face_crop)
            (probabilities,) = predictor.predict([features])
            yield WindowPrediction(window.start_s, window.end_s, probabilities,
                                   (time.perf_counter() - window.ready_s) * 1e3, features["notes"])


def window_line(window: WindowPrediction, label_names: tuple[str, ...]) -> str:
    """One window as a JSON line: start_s, end_s, (--faces all: track, box_px), probabilities {emotion: p}, emotion,
    latency_ms."""
    face = {} if window.track is None else {"track": window.track, "box_px": [round(v, 1) for v in window.box_px]}
    return json.dumps({"start_s": window.start_s, "end_s": window.end_s, **face,
                       "probabilities": {n: round(float(p), 6) for n, p in zip(label_names, window.probabilities)},
                       "emotion": label_names[int(window.probabilities.argmax())],
                       "latency_ms": round(window.latency_ms, 1)})


def stream_clip_id(source: str) -> str:
    """A name for the timeline files: the file's stem, `webcam0` for a webcam, else the URL's last part."""
    if source.isdigit() or source.startswith("/dev/video"):
        return f"webcam{source.removeprefix('/dev/video')}"
    return Path(source.split("?")[0].rstrip("/")).stem or "stream"


def run_stream(predictor, source: str, *, clip_id: str, window_s: float, hop_s: float,
               emit: Callable[[str], None], faces: str = "largest") -> tuple[list[WindowPrediction], str | None]:
    """`mmfer predict --stream`: every window's JSON line to `emit` as it is predicted; Ctrl-C ends the stream and
    keeps what was done. Returns the windows and the error that ended the stream early (None: it ended or was
    stopped)."""
    from mmfer.extract.decode import DecodeError
    from mmfer.pipeline.predictor import PredictError

    windows: list[WindowPrediction] = []
    error = None
    try:
        for window in predict_windows(predictor, source, clip_id=clip_id, window_s=window_s, hop_s=hop_s,
                                      faces=faces):
            windows.append(window)
            emit(window_line(window, predictor.label_names))
    except KeyboardInterrupt:
        log.warning("%s: stopped by Ctrl-C after %d windows; keeping them", source, len(windows))
    except (DecodeError, PredictError) as err:
        error = str(err).splitlines()[0]
        log.warning("%s: %s", source, error)
    if windows:
        log.info("%s: %d windows, median latency %.0f ms per window", source, len(windows),
                 float(np.median([w.latency_ms for w in windows])))
    return windows, error
