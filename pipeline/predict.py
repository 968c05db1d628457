"""`mmfer predict`: emotion probabilities for video files, from a run folder or an exported model.

Inputs are files or folders (walked for video files); each file is predicted on its own, a bad one gets
an error row and the rest go on. With `--window S` a file is decoded once and its windows slide over it in
memory (pipeline/predict_stream.py, as `--stream SOURCE` does for a webcam or URL), each predicted like a clip,
and the emotion timeline is written as CSV and PNG; inputs that share a file name get unique names.
The model and feature work is `pipeline/predictor.py`, the outputs `predict_output.py`, `--faces all`
`predict_faces.py`; this file walks the inputs.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from pathlib import Path

from mmfer.pipeline.command_config import PredictConfig
from mmfer.pipeline.predict_output import (ClipResult, error_line, format_table, model_record, summarize_windows,
                                           write_results, write_timeline)
from mmfer.pipeline.predict_stream import window_starts
from mmfer.core.errors import BadInputError, ConfigError
from mmfer.core.media import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

PREDICT_ALIASES = {"window": "window_s", "hop": "hop_s"}   # the short flags users type


def find_videos(inputs: list[str]) -> list[Path]:
    """Files as given (any suffix; missing ones too, so they get an error row), folders walked for videos."""
    found: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            found.append(path)
    return found


def unique_names(paths: list[Path]) -> list[str]:
    """One name per input for its table row and timeline files: the file stem when no other input shares it,
    else its path below the inputs' common folder, suffix kept (`a/clip.mp4`, `b/clip.mp4`, `b/clip.mkv` ->
    `a__clip.mp4`, `b__clip.mp4`, `b__clip.mkv`); a file given twice gets `-2`, `-3`."""
    stems = [p.stem for p in paths]
    shared = {stem for stem, n in Counter(stems).items() if n > 1}
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved])) if resolved else Path()
    names, taken = [], set()
    for path, stem, full in zip(paths, stems, resolved):
        name = "__".join(full.relative_to(common).parts) if stem in shared else stem
        base, k = name, 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name)
        names.append(name)
    return names


def _warn_no_face(path: Path, num_without_face: int, num_windows: int) -> None:
    """One warning per file, naming it, when the face detector found no face (the clips' `found_face`): a long
    video would otherwise repeat it for every window, without saying which file."""
    if num_without_face:
        where = f"{num_without_face} of {num_windows} windows" if num_windows > 1 else "any frame"
        log.warning("%s: no face found in %s; used the centre crop there", path, where)


def predict_file(predictor, path: Path, *, clip_id: str, window_s: float | None, hop_s: float | None) -> ClipResult:
    """Predict one file (or its windows); decode/encode problems become `ClipResult.error`.

    Windows come from one decode of the file (pipeline/predict_stream.py): only each window's (start_s, end_s,
    probabilities) is kept, so memory stays bounded on a long video, and nothing is written to disk.
    """
    from mmfer.extract.decode import DecodeError
    from mmfer.extract.stream import stream_source
    from mmfer.pipeline.predict_stream import predict_windows
    from mmfer.pipeline.predictor import NO_FACE_NOTE, PredictError
    from mmfer.core.media import FfmpegError
    from mmfer.core.progress import Progress

    result = ClipResult(clip_id, str(path), label_names=predictor.label_names)
    try:
        if window_s is None:
            item = predictor.features(path, clip_id)
            result.probabilities, result.notes = predictor.predict([item])[0], item["notes"]
            _warn_no_face(path, int(NO_FACE_NOTE in item["notes"]), 1)
            return result
        source = stream_source(str(path), timeout_s=predictor.decode_timeout_s)
        if not source.duration_s:
            raise PredictError(f"{path}: ffmpeg reports no duration; cannot place windows")
        windows = []
        with Progress(len(window_starts(source.duration_s, window_s, hop_s or window_s)), desc=path.name,
                      unit="window", logger=log, leave=False) as progress:
            for window in predict_windows(predictor, source, clip_id=clip_id, window_s=window_s, hop_s=hop_s or window_s):
                windows.append(window)
                progress.update(1)
        if not windows:
            raise PredictError(f"{path}: no video frames decoded; is the file truncated?")
        summarize_windows(result, windows)
        _warn_no_face(path, sum(NO_FACE_NOTE in w.notes for w in windows), len(windows))
    except (PredictError, DecodeError, FfmpegError, OSError) as err:
        result.error = error_line(err, path)
    return result


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    from mmfer.pipeline.flags import add_config_flags

    parser.description = ("Emotion probabilities for video files, with the run's exact extraction and its trained "
                          "model (or an exported model folder). A bad file gets an error row; the rest go on.")
    parser.add_argument("inputs", nargs="*", metavar="VIDEO_OR_DIR",
                        help=f"Video files or folders (walked for {', '.join(VIDEO_SUFFIXES)}); none with --stream.")
    add_config_flags(parser, PredictConfig, aliases=PREDICT_ALIASES, layered=False)


def cmd_predict(args: argparse.Namespace) -> int:
    from mmfer.pipeline.bundle import load_export_bundle, load_run_bundle
    from mmfer.pipeline.flags import resolve_config
    from mmfer.pipeline.predict_faces import check_faces_all, predict_tracks
    from mmfer.pipeline.predictor import Predictor
    from mmfer.core.progress import Progress

    cfg: PredictConfig = resolve_config(PredictConfig, args, layered=False)
    if (cfg.run is None) == (cfg.model is None):
        raise ConfigError("predict needs exactly one of --run RUN_DIR or --model EXPORT_DIR")
    if cfg.fold is not None and cfg.ensemble:
        raise ConfigError("give --fold K or --ensemble, not both")
    if cfg.hop_s is not None and cfg.window_s is None:
        raise ConfigError("--hop needs --window")
    if cfg.stream is not None and (args.inputs or cfg.window_s is None):
        raise ConfigError("--stream SOURCE takes no VIDEO_OR_DIR and needs --window S (e.g. --window 2 --hop 1)")
    if cfg.stream is None and not args.inputs:
        raise ConfigError("give VIDEO_OR_DIR (files or folders) or --stream SOURCE")
    out = check_out(cfg.out) if cfg.out else None   # before any model loads or file is predicted
    paths = find_videos(args.inputs)
    if not paths and cfg.stream is None:
        raise BadInputError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {' '.join(args.inputs)}")
    if cfg.model:
        bundle = load_export_bundle(cfg.model, fold=cfg.fold, ensemble=cfg.ensemble, load_weights=cfg.runtime != "onnx")
    else:
        bundle = load_run_bundle(cfg.run, fold=cfg.fold, ensemble=cfg.ensemble, cache=cfg.cache)
    if cfg.faces == "all":
        check_faces_all(bundle)
    predictor = Predictor(bundle, device=cfg.device, visual_encoder=cfg.visual_encoder,
                          audio_encoder=cfg.audio_encoder, models_dir=cfg.models_dir,
                          allow_encoder_mismatch=cfg.allow_encoder_mismatch, runtime=cfg.runtime)
    results = []
    timeline_dir = out.parent if out else Path.cwd()
    if cfg.stream is not None:
        return _predict_stream(cfg, predictor, bundle, timeline_dir, out)
    with Progress(len(paths), desc="predict", unit="file", logger=log) as progress:
        for path, clip_id in zip(paths, unique_names(paths)):
            if cfg.faces == "all":
                results += predict_tracks(predictor, path, clip_id=clip_id, window_s=cfg.window_s, hop_s=cfg.hop_s,
                                          timeline_dir=timeline_dir)
                progress.update(1)
                continue
            result = predict_file(predictor, path, clip_id=clip_id, window_s=cfg.window_s, hop_s=cfg.hop_s)
            if result.windows:
                result.timeline = write_timeline(result, timeline_dir)
            results.append(result)
            progress.update(1)
    print(format_table(results, f"model: {bundle.source}, {bundle.describe()}"))
    if out:
        write_results(results, out, model_record(bundle))
        print(f"wrote {out}")
    return 0 if any(r.error is None for r in results) else 1


def _predict_stream(cfg: PredictConfig, predictor, bundle, timeline_dir: Path, out: Path | None) -> int:
    """--stream: a JSON line per window on stdout (so the table is left out), the timeline and --out at the end."""
    from mmfer.pipeline.predict_stream import run_stream, stream_clip_id

    def emit(line: str) -> None:
        print(line, flush=True)

    result = ClipResult(stream_clip_id(cfg.stream), cfg.stream, label_names=predictor.label_names)
    windows, result.error = run_stream(predictor, cfg.stream, clip_id=result.clip_id, window_s=cfg.window_s,
                                       hop_s=cfg.hop_s or cfg.window_s, emit=emit, faces=cfg.faces)
    if cfg.faces == "all":
        from mmfer.pipeline.predict_faces import stream_tracks

        return stream_tracks(result, windows, timeline_dir, out, bundle)
    if windows:
        summarize_windows(result, windows)
        if result.error:   # the windows before the failure stand; the failure becomes a note
            result.notes.append(f"stopped: {result.error}")
            result.error = None
        result.timeline = write_timeline(result, timeline_dir)
        log.info("%s: timeline %s", cfg.stream, " ".join(result.timeline))
    if out:
        write_results([result], out, model_record(bundle))
        log.info("wrote %s", out)
    return 0 if result.windows else 1


def check_out(out: str) -> Path:
    """--out is a file to write (FILE.csv or FILE.json): refused at once when it names a folder, or when a
    file stands where its folder would be, so no prediction is computed only to be lost.

    Raises:
        BadInputError: `out` cannot be written as a file.
    """
    path = Path(out)
    if path.is_dir():
        raise BadInputError(f"{path}: is a folder; --out takes a file, e.g. --out {path / 'predictions.csv'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInputError(f"{path}: {parent} is a file, not a folder; choose another --out")
            break
    return path
