"""`mmfer predict --faces all`: a prediction row per face track, and a timeline line per face.

Faces are detected on the sampled frames and tracked across them (extract/facecrop.py `crop_tracks`,
extract/facetrack.py); each track's crops go through the same featurizer and model as a clip. A file gives one
`ClipResult` per track (its track number, median box in pixels and the time span it was detected in); with
--window/--hop or --stream, the windows' tracks are linked over the source and the timeline CSV has a row per
window and track, its PNG a line per track. predict.py walks the inputs and writes the table and --out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from mmfer.core.errors import ConfigError
from mmfer.pipeline.predict_output import ClipResult, error_line, model_record, summarize_windows, write_results

log = logging.getLogger(__name__)

NO_FACE_ERROR = "no face found in any sampled frame; --faces all predicts faces only (--faces largest does not)"


def check_faces_all(bundle) -> None:
    """Refuse --faces all for a model without video; warn when it was trained on other crops than face crops.

    Raises:
        ConfigError: the model reads audio only.
    """
    video = bundle.feature_spec.video
    if video is None:
        raise ConfigError(f"{bundle.source}: --faces all needs a model that reads video; this one reads audio only")
    if video.settings["face_crop"] != "detect":
        log.warning("%s: trained on face_crop=%s frames; --faces all gives it face crops, which it has not seen",
                    bundle.source, video.settings["face_crop"])


def predict_tracks(predictor, path: Path, *, clip_id: str, window_s: float | None, hop_s: float | None,
                   timeline_dir: Path) -> list[ClipResult]:
    """One file's face tracks, each predicted from its own crops (over windows with `window_s`, then with a
    timeline written to `timeline_dir`); a file that cannot be predicted, or has no face, gives one error row."""
    from mmfer.core.media import FfmpegError
    from mmfer.core.progress import Progress
    from mmfer.extract.decode import DecodeError
    from mmfer.extract.stream import stream_source
    from mmfer.pipeline.predict_stream import predict_windows, window_starts
    from mmfer.pipeline.predictor import PredictError

    failed = ClipResult(clip_id, str(path), label_names=predictor.label_names)
    try:
        if window_s is None:
            results = []
            for number, (track, span_s, item) in enumerate(predictor.track_features(path, clip_id)):
                result = ClipResult(clip_id, str(path), label_names=predictor.label_names, track=number,
                                    box_px=track.box_px, span_s=span_s)
                result.probabilities, result.notes = predictor.predict([item])[0], item["notes"]
                results.append(result)
        else:
            source = stream_source(str(path), timeout_s=predictor.decode_timeout_s)
            if not source.duration_s:
                raise PredictError(f"{path}: ffmpeg reports no duration; cannot place windows")
            windows, starts = [], set()
            with Progress(len(window_starts(source.duration_s, window_s, hop_s or window_s)), desc=path.name,
                          unit="window", logger=log, leave=False) as progress:
                for window in predict_windows(predictor, source, clip_id=clip_id, window_s=window_s,
                                              hop_s=hop_s or window_s, faces="all"):
                    windows.append(window)
                    if window.start_s not in starts:
                        starts.add(window.start_s)
                        progress.update(1)
            results = track_results(failed, windows)
            if results:
                timeline = write_track_timeline(clip_id, predictor.label_names, windows, timeline_dir)
                for result in results:
                    result.timeline = timeline
        if not results:
            raise PredictError(f"{path}: {NO_FACE_ERROR}")
        return results
    except (PredictError, DecodeError, FfmpegError, OSError) as err:
        failed.error = error_line(err, path)
        return [failed]


def track_results(base: ClipResult, windows: list) -> list[ClipResult]:
    """One result per track of windowed predictions (predict_stream.WindowPrediction with `track` set): its
    windows, mean probabilities and notes (summarize_windows), the median of its window boxes and its time span."""
    by_track = defaultdict(list)
    for window in windows:
        by_track[window.track].append(window)
    results = []
    for number in sorted(by_track):
        own = by_track[number]
        result = ClipResult(base.clip_id, base.path, label_names=base.label_names, track=number,
                            box_px=tuple(float(v) for v in np.median([w.box_px for w in own], axis=0)),
                            span_s=(min(w.span_s[0] for w in own), max(w.span_s[1] for w in own)))
        summarize_windows(result, own)
        results.append(result)
    return results


def write_track_timeline(clip_id: str, label_names: tuple[str, ...], windows: list, folder: Path) -> list[str]:
    """`<clip_id>.timeline.csv` from windowed track predictions (predict_stream.WindowPrediction with `track` set):
    a row per window and track with track, start_s, end_s, the track's box in that window (x0, y0, x1, y1 pixels),
    prob_<emotion> x C, prediction; and a PNG with a line per track: its top emotion at each window centre."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / f"{clip_id}.timeline.csv", folder / f"{clip_id}.timeline.png"
    rows = []
    for w in windows:
        row = {"track": w.track, "start_s": w.start_s, "end_s": w.end_s, **dict(zip(("x0", "y0", "x1", "y1"), w.box_px))}
        row.update({f"prob_{n}": float(p) for n, p in zip(label_names, w.probabilities)})
        row["prediction"] = label_names[int(np.argmax(w.probabilities))]
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values(["start_s", "track"], kind="stable")
    frame.to_csv(csv_path, index=False, float_format="%.6f")
    fig, ax = plt.subplots(figsize=(9, 4))
    for number, own in frame.groupby("track"):
        centers = (own["start_s"] + own["end_s"]) / 2
        ax.plot(centers, [label_names.index(p) for p in own["prediction"]], marker="o", markersize=4,
                label=f"face {number}")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("time (s, window centre)")
    ax.set_title(f"{clip_id}: top emotion of each face over time")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [str(csv_path), str(png_path)]


def stream_tracks(result: ClipResult, windows: list, timeline_dir: Path, out: Path | None, bundle) -> int:
    """--stream --faces all: the windows (already printed) as a result per track, the timeline and --out."""
    results = track_results(result, windows)
    if results:
        for track in results:
            if result.error:   # the windows before the failure stand; the failure becomes a note
                track.notes.append(f"stopped: {result.error}")
        timeline = write_track_timeline(result.clip_id, result.label_names, windows, timeline_dir)
        for track in results:
            track.timeline = timeline
        log.info("%s: %d faces, timeline %s", result.path, len(results), " ".join(timeline))
    else:
        result.error = result.error or f"{result.path}: {NO_FACE_ERROR}"
        results = [result]
    if out:
        write_results(results, out, model_record(bundle))
        log.info("wrote %s", out)
    return 0 if results[0].error is None else 1
