"""`mmfer predict` / `mmfer export` on demo clips with the tiny encoders and a tiny 2-fold run.

Parity: predict gives a test clip the probabilities its fold model gave it in the run's predictions.csv;
the ensemble is the mean of the fold models; mismatched encoders are refused; an exported model predicts
identically without the cache or the run; bad files are reported and the rest predicted; a clip without
audio is predicted from video and flagged; windows give the expected timeline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import tiny_config

from mmfer.data.demo import write_demo_clip
from mmfer.pipeline.cli import main as mmfer_main
from mmfer.pipeline.export import add_export_arguments, cmd_export
from mmfer.pipeline.predict import add_predict_arguments, cmd_predict, window_starts
from mmfer.core.errors import ConfigError
from mmfer.core.labels import EMOTIONS
from mmfer.train.loop import train

PROBS = [f"prob_{e}" for e in EMOTIONS]
TOLERANCE = 1e-4   # predictions.csv rounds to 6 decimals; the rest is float noise


def run_cli(add_arguments, command, argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return command(parser.parse_args([str(a) for a in argv]))


def predict(argv: list, out: Path) -> pd.DataFrame:
    assert run_cli(add_predict_arguments, cmd_predict, [*argv, "--device", "cpu", "--out", out]) == 0
    return pd.read_csv(out).set_index("clip_id")


@pytest.fixture(scope="module")
def run(demo_cache, tmp_path_factory) -> Path:
    """Two folds: fold1 tests actor 1 (validates on 2), fold2 tests actor 3 (validates on 4); one epoch."""
    root = tmp_path_factory.mktemp("predict_run")
    fold_file = root / "folds.json"
    fold_file.write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]},
                                     {"name": "fold2", "test_actors": [3], "val_actors": [4]}]))
    train(tiny_config(demo_cache, fold_file, root / "run", variant=None, seed=0, epochs=1, warmup=1, batch_size=4,
                      **{"training.gradient_accumulation_steps": 1}))
    return root / "run"


@pytest.fixture(scope="module")
def clips(demo_root) -> list[Path]:
    """Two test clips of fold1 (actor 1) and one of fold2 (actor 3)."""
    return [*sorted((demo_root / "Actor_01").glob("*.mp4"))[:2], sorted((demo_root / "Actor_03").glob("*.mp4"))[4]]


@pytest.fixture(scope="module")
def outputs(run, clips, tmp_path_factory) -> dict[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("predict_out")
    return {name: predict(["--run", run, *flags, *clips], out / f"{name}.csv")
            for name, flags in (("fold1", ["--fold", "1"]), ("fold2", ["--fold", "fold2"]), ("ensemble", ["--ensemble"]))}


def test_predict_matches_the_runs_test_predictions(run, clips, outputs):
    reference = pd.read_csv(run / "predictions.csv").set_index("clip_id")
    for clip in clips:
        fold = reference.loc[clip.stem, "fold"]
        got = outputs[fold].loc[clip.stem, PROBS].to_numpy(float)
        want = reference.loc[clip.stem, PROBS].to_numpy(float)
        diff = np.abs(got - want)
        assert diff.max() < TOLERANCE, f"{clip.stem} ({fold}): max diff {diff.max():.2e}, mean {diff.mean():.2e}"
        assert outputs[fold].loc[clip.stem, "prediction"] == reference.loc[clip.stem, "prediction"]


def test_predict_features_equal_the_cached_features(run, demo_cache, demo_root):
    """The inputs themselves: the same decode, crop, encoders and float16 cast as the cache holds."""
    from mmfer.pipeline.bundle import load_run_bundle
    from mmfer.pipeline.predictor import Predictor
    from mmfer.core.store import open_store

    bundle = load_run_bundle(run, fold="1")
    predictor = Predictor(bundle, device="cpu")
    store = open_store(demo_cache)
    video = store.entry("video", bundle.config["cache_fingerprints"]["video"])
    audio = store.entry("audio", bundle.config["cache_fingerprints"]["audio"])
    for clip in sorted((demo_root / "Actor_02").glob("*.mp4"))[:2]:
        item = predictor.features(clip, clip.stem)
        cached_video, cached_audio = video.read_clip(clip.stem), audio.read_clip(clip.stem)
        assert item["video_tokens"].dtype == np.float16
        assert np.array_equal(item["video_tokens"], cached_video["tokens"]), clip.stem
        assert np.array_equal(item["video_pooled"], cached_video["pooled"]), clip.stem
        want = cached_audio["tokens"][: int(cached_audio["length"])]
        assert item["audio_tokens"].shape == want.shape
        # extract encoded audio in batches of 4 clips, predict one at a time: float32 noise may flip a
        # float16 rounding, never by more than one float16 step
        step = np.spacing(np.maximum(np.abs(want), np.abs(item["audio_tokens"])))
        diff = np.abs(item["audio_tokens"].astype(np.float32) - want.astype(np.float32))
        assert (diff <= step).all(), f"{clip.stem}: audio max diff {diff.max():.2e}, mean {diff.mean():.2e}"


def test_ensemble_is_the_mean_of_the_fold_models(clips, outputs):
    mean = (outputs["fold1"][PROBS].to_numpy() + outputs["fold2"][PROBS].to_numpy()) / 2
    ensemble = outputs["ensemble"][PROBS].to_numpy()
    assert np.abs(ensemble - mean).max() < 2e-6, np.abs(ensemble - mean).max()
    assert np.abs(outputs["fold1"][PROBS].to_numpy() - outputs["fold2"][PROBS].to_numpy()).max() > 1e-4, \
        "the two folds gave identical probabilities: the ensemble did not load both models"
    assert np.allclose(ensemble.sum(axis=1), 1, atol=1e-5)


def rewrite_checkpoints(run: Path, edit) -> None:
    """Apply `edit(state)` to every fold's best.pt of `run`, saved back with train's own saver."""
    from mmfer.train.checkpoint import load_checkpoint, save_checkpoint

    for path in run.glob("*/checkpoints/best.pt"):
        state = load_checkpoint(path)
        edit(state)
        save_checkpoint(path, state, keep_previous=False)


def test_mismatched_encoder_is_refused(run, clips, tmp_path, capsys):
    run = shutil.copytree(run, tmp_path / "run")
    rewrite_checkpoints(run, lambda state: state["feature_spec"]["video"]["encoder"].update(weights_sha256="0" * 64))
    argv = ["--run", run, "--fold", "1", "--device", "cpu", clips[0]]
    assert mmfer_main(["predict", *map(str, argv)]) == 2   # through the CLI's one error handler
    err = capsys.readouterr().err
    assert "video encoder weights_sha256" in err and "--allow-encoder-mismatch" in err, err
    assert run_cli(add_predict_arguments, cmd_predict, [*argv, "--allow-encoder-mismatch"]) == 0


def test_a_run_predicts_after_its_cache_moved_away(run, clips, outputs, tmp_path):
    """The checkpoint carries its FeatureSpec: a run whose feature store is gone predicts as before."""
    run = shutil.copytree(run, tmp_path / "run")
    gone = str(tmp_path / "moved-away-cache")

    def cache_elsewhere(state: dict) -> None:
        state["config"].update(cache=gone, cache_location={"resolved": gone, "relative": "../moved-away-cache"})
    rewrite_checkpoints(run, cache_elsewhere)
    got = predict(["--run", run, "--fold", "1", *clips], tmp_path / "out.csv")
    assert np.abs(got[PROBS].to_numpy() - outputs["fold1"][PROBS].to_numpy()).max() < 1e-6


def test_exported_model_predicts_identically_without_cache_or_run(run, demo_cache, clips, outputs, tmp_path):
    run_copy, cache_copy = shutil.copytree(run, tmp_path / "run"), shutil.copytree(demo_cache, tmp_path / "cache")
    export = tmp_path / "model"
    assert run_cli(add_export_arguments, cmd_export, ["--run", run_copy, "--out", export, "--cache", cache_copy]) == 0
    shutil.rmtree(run_copy)
    shutil.rmtree(cache_copy)
    manifest = json.loads((export / "model.json").read_text())
    assert manifest["label_names"] == list(EMOTIONS) and [f["name"] for f in manifest["folds"]] == ["fold1", "fold2"]
    assert (export / "weights" / "fold1.safetensors").is_file() and (export / "README.md").read_text().startswith("# model")
    features = json.loads((export / "features.json").read_text())
    assert features["video"]["face_crop"] == "center" and features["audio"]["encoder"]["weights_sha256"]
    assert json.loads((export / "evaluation.json").read_text())["protocol"][1]["test_actors"] == [3]
    from safetensors import safe_open  # each weights file carries build_model's arguments

    with safe_open(str(export / "weights" / "fold1.safetensors"), framework="pt") as handle:
        spec = json.loads(handle.metadata()["model_spec"])
    assert spec["model"]["visual"]["num_keep_tokens"] == 8 and spec["num_patches"] == 196

    exported = predict(["--model", export, *clips], tmp_path / "exported.csv")
    assert np.array_equal(exported[PROBS].to_numpy(), outputs["ensemble"][PROBS].to_numpy())


def test_bad_files_are_reported_and_a_clip_without_audio_is_flagged(run, clips, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clips[0], folder / "good.mp4")
    (folder / "broken.mp4").write_bytes(clips[0].read_bytes()[:2000])
    (folder / "notes.txt").write_text("not a video; not picked up")
    write_demo_clip(folder / "silent.mp4", "happy", 1, duration_s=1.5, size_px=96, with_audio=False)
    result = predict(["--run", run, "--fold", "1", folder], tmp_path / "out.csv")
    assert sorted(result.index) == ["broken", "good", "silent"]
    assert "ffmpeg" in result.loc["broken", "error"] and pd.isna(result.loc["broken", "prob_happy"])
    assert result.loc["silent", "note"] == "video only: no audio stream"
    for name in ("good", "silent"):
        assert pd.isna(result.loc[name, "error"]) and abs(result.loc[name, PROBS].sum() - 1) < 1e-5
    table = capsys.readouterr().out
    assert "broken" in table and "ERROR" in table and "2 predicted, 1 failed" in table

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "broken.mp4").write_bytes(b"\x00" * 100)
    assert run_cli(add_predict_arguments, cmd_predict, ["--run", run, "--fold", "1", "--device", "cpu", only_bad]) == 1


def test_windows_give_the_timeline(run, tmp_path):
    video = write_demo_clip(tmp_path / "long.mp4", "angry", 1, duration_s=4.0, size_px=96)
    out = tmp_path / "out" / "long.json"
    argv = ["--run", run, "--fold", "1", "--device", "cpu", "--window", "2", "--hop", "1", "--out", out, video]
    assert run_cli(add_predict_arguments, cmd_predict, argv) == 0
    timeline = pd.read_csv(tmp_path / "out" / "long.timeline.csv")
    assert timeline["start_s"].tolist() == [0.0, 1.0, 2.0] and timeline["end_s"].tolist() == [2.0, 3.0, 4.0]
    assert np.allclose(timeline[PROBS].sum(axis=1), 1, atol=1e-5)
    assert (tmp_path / "out" / "long.timeline.png").stat().st_size > 1000
    (clip,) = json.loads(out.read_text())["clips"]
    assert "mean of 3 windows" in clip["note"]
    assert np.allclose([clip[p] for p in PROBS], timeline[PROBS].mean().to_numpy(), atol=1e-5)


def test_window_starts():
    assert window_starts(4.0, 2.0, 1.0) == [0.0, 1.0, 2.0]
    assert window_starts(4.02, 2.0, 1.0) == [0.0, 1.0, 2.0]
    assert window_starts(1.5, 2.0, 1.0) == [0.0]          # shorter than a window: the whole clip
    assert window_starts(10.0, 3.0, 3.0) == [0.0, 3.0, 6.0]


# ---- names, --out, long videos, exported folders, quiet output -------------------------------


def faceless_clip(path: Path, duration_s: float) -> Path:
    """A grey picture with a tone: a real video file in which no face can be found."""
    from mmfer.core.media import run_ffmpeg

    run_ffmpeg(["-y", "-f", "lavfi", "-i", f"color=c=gray:s=96x96:d={duration_s}:r=25", "-f", "lavfi", "-i",
                f"sine=frequency=220:duration={duration_s}:sample_rate=16000", "-c:v", "libx264", "-pix_fmt",
                "yuv420p", "-c:a", "aac", "-shortest", str(path)], path=path, timeout_s=60)
    return path


def test_same_named_files_get_their_own_rows_and_timelines(run, clips, tmp_path):
    from mmfer.core.media import run_ffmpeg

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(clips[0], tmp_path / "a" / "clip.mp4")
    shutil.copy(clips[1], tmp_path / "b" / "clip.mp4")
    run_ffmpeg(["-y", "-i", str(clips[2]), "-c", "copy", str(tmp_path / "b" / "clip.mkv")], path=clips[2], timeout_s=60)
    out = tmp_path / "out" / "pred.csv"
    result = predict(["--run", run, "--fold", "1", "--window", "2", tmp_path / "a", tmp_path / "b"], out)
    assert sorted(result.index) == ["a__clip.mp4", "b__clip.mkv", "b__clip.mp4"], list(result.index)
    for clip_id, source in (("a__clip.mp4", clips[0]), ("b__clip.mp4", clips[1]), ("b__clip.mkv", clips[2])):
        timeline = pd.read_csv(tmp_path / "out" / f"{clip_id}.timeline.csv")
        assert result.loc[clip_id, "timeline"].split()[0] == str(tmp_path / "out" / f"{clip_id}.timeline.csv")
        assert np.allclose(timeline[PROBS].mean().to_numpy(), result.loc[clip_id, PROBS].to_numpy(float), atol=1e-5)
    assert len(set(result[PROBS].round(5).itertuples(index=False))) == 3, "two rows hold the same clip's result"


def test_out_folder_is_refused_before_anything_is_predicted(clips, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    # --run names no run at all: the --out check comes first, so its message is the one shown
    assert mmfer_main(["predict", "--run", str(tmp_path / "no-run"), "--out", str(folder), str(clips[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {folder}: is a folder; --out takes a file, e.g. --out {folder / 'predictions.csv'}", err
    (tmp_path / "file").write_text("x")
    assert mmfer_main(["predict", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "file" / "p.csv"), str(clips[0])]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


class WindowWatch(logging.Handler):
    """At each progress line of predict: the files in the temp folder; raises Ctrl-C at line `interrupt_at`."""

    def __init__(self, temp: Path, interrupt_at: int | None = None) -> None:
        super().__init__()
        self.temp, self.interrupt_at, self.lines = temp, interrupt_at, []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if " windows (" in message or message.startswith("predict: "):
            self.lines.append((message, sorted(p.name for p in self.temp.rglob("*") if p.is_file())))
            if self.interrupt_at is not None and len(self.lines) == self.interrupt_at:
                raise KeyboardInterrupt


def child_processes() -> list[int]:
    """This process's live children (from /proc), e.g. an ffmpeg left running. A thread that ends while /proc is
    read (the stream's reader threads, just after Ctrl-C) takes its `children` file with it and hands its children
    to another thread of the process, so the scan starts again when a file vanishes."""
    for _ in range(20):
        try:
            return [int(pid) for task in Path(f"/proc/{os.getpid()}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    raise AssertionError("this process's threads kept ending while /proc was read")


def test_long_video_windows_stream_with_progress_and_write_no_temp_files(run, clips, tmp_path, monkeypatch):
    """Windows slide over one decode of the file: nothing is written to the temp folder at any point, and Ctrl-C
    in the middle of a file leaves no ffmpeg behind."""
    import tempfile

    import mmfer.pipeline.predict as predict_module
    import mmfer.core.progress as progress_module
    from mmfer.pipeline.bundle import load_run_bundle
    from mmfer.pipeline.predictor import Predictor

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(progress_module, "PROGRESS_INTERVAL_S", 0.0)   # a line at every update
    video = write_demo_clip(tmp_path / "long.mp4", "angry", 1, duration_s=6.0, size_px=96)
    watch = WindowWatch(temp)
    logger = logging.getLogger("mmfer.pipeline.predict")
    logger.addHandler(watch)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        out = tmp_path / "out" / "long.csv"
        result = predict(["--run", run, "--fold", "1", "--window", "1", video, clips[0]], out)
    finally:
        logger.removeHandler(watch)
    lines = [m for m, _ in watch.lines]
    assert [m.split(",")[0] for m in lines] == [f"long.mp4: {k}/6 windows ({100 * k / 6:.0f}%)" for k in range(1, 6)] \
        + ["predict: 1/2 files (50%)"], lines
    assert "left" in lines[0] and "windows/s" in lines[0]
    assert all(files == [] for _, files in watch.lines), watch.lines   # no cut files, ever
    assert list(temp.iterdir()) == [], list(temp.iterdir())
    assert len(pd.read_csv(tmp_path / "out" / "long.timeline.csv")) == 6 and "mean of 6 windows" in result.loc["long", "note"]

    # Ctrl-C in the middle of a file: ffmpeg is stopped with it
    predictor = Predictor(load_run_bundle(run, fold="1"), device="cpu")
    # children from earlier tests in this process (multiprocessing's resource tracker after a spawn pool) stay
    before = set(child_processes())
    watch = WindowWatch(temp, interrupt_at=1)
    logger.addHandler(watch)
    try:
        with pytest.raises(KeyboardInterrupt):
            predict_module.predict_file(predictor, video, clip_id="long", window_s=1.0, hop_s=None)
    finally:
        logger.removeHandler(watch)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] for pid in set(child_processes()) - before}
    assert len(watch.lines) == 1 and list(temp.iterdir()) == [] and left == {}, left


# ---- predict on a stream ----------------------------------------------------------------------------


def lossless_cut(path: Path, start_s: float, length_s: float, out_path: Path) -> Path:
    """[start_s, start_s + length_s) of the file as FFV1 + float PCM: what predict --window cut before it streamed."""
    from mmfer.core.media import run_ffmpeg

    run_ffmpeg(["-y", "-ss", f"{start_s:.6f}", "-i", str(path), "-t", f"{length_s:.6f}", "-map", "0:V:0",
                "-map", "0:a:0?", "-sn", "-dn", "-c:v", "ffv1", "-c:a", "pcm_f32le", str(out_path)],
               path=path, timeout_s=60)
    return out_path


def test_stream_windows_equal_the_clips_cut_from_the_file(run, tmp_path):
    """Each window of one decode gives the probabilities its own clip (a lossless ffmpeg cut, predicted as a
    clip) gives: the same frames (sampled by the clip's rule over the window), the same audio samples."""
    from mmfer.pipeline.bundle import load_run_bundle
    from mmfer.pipeline.predict_stream import predict_windows
    from mmfer.pipeline.predictor import Predictor

    predictor = Predictor(load_run_bundle(run, fold="1"), device="cpu")
    video = write_demo_clip(tmp_path / "long.mp4", "happy", 2, duration_s=5.0, size_px=96)
    # hops on a frame boundary (1.2 s = 30 frames at 25 fps): a start half a frame off (1.5 s) makes the cut's
    # own timestamps round (pts 0.02 s in a 1/25 time base), and the cut loses the window's last frame
    windows = list(predict_windows(predictor, video, clip_id="long", window_s=2.0, hop_s=1.2))
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 2.0), (1.2, 3.2), (2.4, 4.4)]
    for w in windows:
        cut = lossless_cut(video, w.start_s, w.end_s - w.start_s, tmp_path / f"w{w.start_s:g}.mkv")
        want = predictor.predict([predictor.features(cut, cut.stem)])[0]
        diff = np.abs(w.probabilities - want)
        assert diff.max() < TOLERANCE, f"window {w.start_s:g}s: max diff {diff.max():.2e}, mean {diff.mean():.2e}"
        assert w.latency_ms > 0
    short = write_demo_clip(tmp_path / "short.mp4", "sad", 2, duration_s=1.2, size_px=96)
    (w,) = predict_windows(predictor, short, clip_id="short", window_s=2.0, hop_s=1.0)   # the whole clip, as one
    assert (w.start_s, w.end_s) == (0.0, 1.2)
    diff = np.abs(w.probabilities - predictor.predict([predictor.features(short, "short")])[0])
    assert diff.max() < TOLERANCE, f"short clip: max diff {diff.max():.2e}"


def test_predict_stream_prints_a_json_line_per_window_and_writes_the_timeline(run, tmp_path, capsys, monkeypatch):
    video = write_demo_clip(tmp_path / "talk.mp4", "angry", 1, duration_s=4.0, size_px=96)
    monkeypatch.chdir(tmp_path)
    argv = ["--run", run, "--fold", "1", "--device", "cpu", "--window", "2", "--hop", "1"]
    assert run_cli(add_predict_arguments, cmd_predict, [*argv, "--stream", video]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["start_s"], x["end_s"]) for x in lines] == [(0.0, 2.0), (1.0, 3.0), (2.0, 4.0)], lines
    assert all(set(x) == {"start_s", "end_s", "probabilities", "emotion", "latency_ms"} for x in lines)
    assert all(x["emotion"] == max(x["probabilities"], key=x["probabilities"].get) for x in lines)
    timeline = pd.read_csv(tmp_path / "talk.timeline.csv")
    assert (tmp_path / "talk.timeline.png").stat().st_size > 1000
    assert np.allclose(timeline[PROBS].to_numpy(), [[x["probabilities"][e] for e in EMOTIONS] for x in lines], atol=2e-6)
    files = predict([*argv, video], tmp_path / "file.csv")   # --window FILE: the same windows
    assert np.allclose(pd.read_csv(tmp_path / "talk.timeline.csv")[PROBS].to_numpy(), timeline[PROBS].to_numpy(), atol=1e-6)
    assert "mean of 3 windows" in files.loc["talk", "note"]
    for bad in (["--stream", video, video], ["--stream", video, "--window", "0"][:2]):
        with pytest.raises(ConfigError) as err:
            run_cli(add_predict_arguments, cmd_predict, ["--run", run, *bad])
        assert "--stream" in str(err.value), str(err.value)


@pytest.mark.slow
def test_ctrl_c_stops_a_live_stream_and_keeps_its_timeline(run, clips, tmp_path):
    """A looped file through a named pipe stands in for a webcam (it never ends): `mmfer predict --stream` prints
    windows as they come, and SIGINT stops it with exit code 0, the windows so far in the timeline and --out."""
    import signal

    from mmfer.core.media import ffmpeg_exe

    fifo = tmp_path / "cam.nut"
    os.mkfifo(fifo)
    feeder = subprocess.Popen([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i",
                               str(clips[0]), "-c", "copy", "-f", "nut", str(fifo)], stdin=subprocess.DEVNULL)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mmfer.pipeline.cli", "predict", "--run", str(run), "--fold", "1",
                             "--device", "cpu", "--stream", str(fifo), "--window", "1", "--hop", "0.5",
                             "--out", str(tmp_path / "out" / "cam.csv")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a terminal's Ctrl-C: SIGINT at its default even where this test process ignores it
                            # (a pytest-xdist worker does; a child would inherit that and Python never raise it)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = [json.loads(proc.stdout.readline()) for _ in range(4)]
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        for p in (proc, feeder):
            if p.poll() is None:
                p.kill()
            p.wait()
    assert proc.returncode == 0, err[-3000:]
    assert [x["start_s"] for x in lines] == [0.0, 0.5, 1.0, 1.5]
    lines += [json.loads(line) for line in rest.splitlines()]
    assert "stopped by Ctrl-C" in err, err[-3000:]
    timeline = pd.read_csv(tmp_path / "out" / "cam.timeline.csv")
    assert timeline["start_s"].tolist() == [x["start_s"] for x in lines]
    assert "mean of" in pd.read_csv(tmp_path / "out" / "cam.csv").loc[0, "note"]


@pytest.fixture(scope="module")
def exported(run, demo_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model"
    assert run_cli(add_export_arguments, cmd_export, ["--run", run, "--out", out, "--fold", "1"]) == 0
    return out


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink", "pickle", "manifest_symlink", "onnx_dotdot"])
def test_exported_folder_reads_only_its_own_files_and_never_a_pickle(exported, clips, tmp_path, capsys, attack):
    import torch

    model = shutil.copytree(exported, tmp_path / "model", symlinks=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    manifest = json.loads((model / "model.json").read_text())
    if attack == "dotdot":
        shutil.copy(model / "features.json", outside / "features.json")
        manifest["features"] = "../elsewhere/features.json"
    elif attack == "absolute":
        shutil.copy(model / "config.json", outside / "config.json")
        manifest["config"] = str(outside / "config.json")
    elif attack == "symlink":
        shutil.move(model / "features.json", outside / "features.json")
        (model / "features.json").symlink_to(outside / "features.json")
    elif attack == "pickle":
        torch.save({"w": torch.zeros(2)}, model / "weights" / "fold1.safetensors")
    elif attack == "manifest_symlink":
        (outside / "model.json").write_text(json.dumps(manifest))
        (model / "model.json").unlink()
        (model / "model.json").symlink_to(outside / "model.json")
    elif attack == "onnx_dotdot":   # an ONNX graph is a program too: only the folder's own
        (outside / "fold1.onnx").write_bytes(b"")
        manifest["folds"][0]["onnx"] = "../elsewhere/fold1.onnx"
    if attack in ("dotdot", "absolute", "onnx_dotdot"):
        (model / "model.json").write_text(json.dumps(manifest))
    assert mmfer_main(["predict", "--model", str(model), "--device", "cpu", str(clips[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    if attack == "pickle":
        assert "refused: a pickle" in err and "fold1.safetensors" in err and "weights_only" not in err, err
    else:
        assert "outside the model folder" in err, err


def test_no_face_fallback_is_one_line_naming_the_file(exported, tmp_path, caplog, monkeypatch):
    """From the clips' found_face, not from another module's log text: a user who silences the face crop's
    own logger still gets the line."""
    monkeypatch.setattr(logging.getLogger("mmfer.extract.facecrop"), "level", logging.ERROR)
    model = shutil.copytree(exported, tmp_path / "model")
    features = json.loads((model / "features.json").read_text())
    features["video"]["face_crop"] = "detect"
    (model / "features.json").write_text(json.dumps(features))
    video = faceless_clip(tmp_path / "grey.mp4", 4.0)
    with caplog.at_level(logging.WARNING):
        result = predict(["--model", model, "--window", "1", video], tmp_path / "out.csv")
    face_lines = [r.getMessage() for r in caplog.records if "no face" in r.getMessage()]
    assert face_lines == [f"{video}: no face found in 4 of 4 windows; used the centre crop there"], face_lines
    assert result.loc["grey", "note"].startswith("no face found: centre crop")


@pytest.mark.slow   # two predict CLI processes (~45 s on 2 shared cores)
def test_stdout_holds_only_the_results(run, clips, tmp_path):
    """A real `mmfer predict > file`: NeMo's info line went to stdout; now stdout is the table alone. The tiny run's
    audio encoder is the transformers kind, so NeMo is not even loaded (how hidden lines are counted:
    test_cli_output's test_other_libraries_info_lines_are_counted_not_shown)."""
    cli = [sys.executable, "-m", "mmfer.pipeline.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*cli, "predict", "--run", str(run), "--fold", "1", "--device", "cpu", str(clips[0])],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: ") and lines[-1] == "1 predicted, 0 failed" and len(lines) == 5, result.stdout
    assert "NeMo" not in result.stdout
    assert "NeMo" not in result.stderr and "nemo" not in result.stderr, result.stderr
    assert "Loading weights" not in result.stderr, result.stderr   # no tqdm bars in a log file


@pytest.mark.slow   # extracts the test clips again and evaluates in CLI processes (~70 s on 2 shared cores)
def test_face_crop_off_extracts_the_test_clips_again_with_whole_frames(run, demo_cache, clips, tmp_path):
    """`evaluate --corrupt face-crop-off`: the test clips are extracted again with face_crop=none. The demo cache
    was made with face_crop=center on square frames, where the crop is the whole frame: so the re-extracted
    inputs equal the cached ones and each fold's face-crop-off score equals its clean one (the clean score being
    the run's own test pass). On a wider-than-tall copy of a clip, the frames differ from the centre crop's."""
    from mmfer.pipeline.bundle import load_run_bundle
    from mmfer.pipeline.robustness import media_batches, media_predictor
    from mmfer.core.media import run_ffmpeg
    from mmfer.core.splits import Fold, assign_parts
    from mmfer.train.dataset import ClipDataset, collate_clips, open_cache

    fingerprints = load_run_bundle(run, fold="1").config["cache_fingerprints"]
    predictor = media_predictor(load_run_bundle(run, fold="1"), ["face-crop-off"], device="cpu")
    cache = open_cache(demo_cache, use_video=True, use_audio=True, expected=fingerprints,
                       video_entry=fingerprints["video"], audio_entry=fingerprints["audio"])
    test = (assign_parts(cache.clips, Fold("fold1", (3, 4), (2,), (1,))).to_numpy() == "test").nonzero()[0][:3]
    (whole,) = media_batches(predictor, cache, test, "face-crop-off", batch_size=4, device="cpu")
    dataset = ClipDataset(cache, list(cache.clips["clip_id"]), preload=False)
    cached = collate_clips([dataset[int(i)] for i in test], video_shape=predictor.video_shape, audio_dim=predictor.audio_dim)
    assert torch.equal(whole["labels"], cached["labels"]) and torch.equal(whole["video_tokens"], cached["video_tokens"])

    wide = tmp_path / "wide.mp4"
    run_ffmpeg(["-i", str(clips[0]), "-vf", "pad=iw+64:ih:32:0:white", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "copy",
                str(wide)], path=wide, timeout_s=60)
    row = pd.DataFrame({"clip_id": ["wide"], "path": [str(wide)], "source": [""]})
    centre, uncropped = predictor.row_features(row), predictor.row_features(row, face_crop="none")
    assert not np.array_equal(centre["video_tokens"], uncropped["video_tokens"])
    assert np.array_equal(centre["audio_tokens"], uncropped["audio_tokens"])

    out = tmp_path / "robust"
    assert mmfer_main(["evaluate", "--run", str(run), "--corrupt", "face-crop-off,no-audio", "--out", str(out),
                       "--device", "cpu"]) == 0
    scores = pd.read_csv(out / "robustness.csv")
    assert set(scores["corruption"]) == {"clean", "face-crop-off", "no-audio"}
    summary = json.loads((run / "summary.json").read_text())
    fusion = scores[scores["classifier"] == "fusion"].set_index(["fold", "corruption"])["f1_macro"]
    for fold in ("fold1", "fold2"):
        assert fusion[(fold, "clean")] == pytest.approx(summary["folds"][fold]["f1_macro"], abs=1e-9)
        assert fusion[(fold, "face-crop-off")] == pytest.approx(fusion[(fold, "clean")], abs=1e-9)
    assert "| face-crop-off |" in (out / "robustness.md").read_text()


def test_fold_is_the_protocol_fold_number_in_predict_export_and_evaluate(run, demo_cache, clips, outputs, tmp_path, capsys):
    """A run of protocol fold 2 only (as after `--folds 2`): --fold 2 is that fold, --fold 1 is refused in one line."""
    from mmfer.pipeline.bundle import load_export_bundle, load_run_bundle

    only2 = shutil.copytree(run, tmp_path / "run")
    shutil.rmtree(only2 / "fold1")
    summary = json.loads((only2 / "summary.json").read_text())
    summary["protocol"] = [f for f in summary["protocol"] if f["name"] == "fold2"]
    summary["protocol_card"] = [c for c in summary["protocol_card"] if c["fold"] == "fold2"]
    summary["folds"] = {"fold2": summary["folds"]["fold2"]}
    (only2 / "summary.json").write_text(json.dumps(summary))
    assert load_run_bundle(only2, fold="2").fold_names == ["fold2"]
    with pytest.raises(FileNotFoundError, match=r"fold 1 was not trained in this run; it trained fold2 \(fold 2\)"):
        load_run_bundle(only2, fold="1")
    got = predict(["--run", only2, "--fold", "2", clips[2]], tmp_path / "two.csv")
    assert np.abs(got[PROBS].to_numpy() - outputs["fold2"].loc[[clips[2].stem], PROBS].to_numpy()).max() < 1e-6
    capsys.readouterr()
    assert mmfer_main(["predict", "--run", str(only2), "--fold", "1", "--device", "cpu", str(clips[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold 1 was not trained in this run" in err[0], err
    assert mmfer_main(["evaluate", "--run", str(only2), "--fold", "1", "--corrupt", "no-audio",
                       "--out", str(tmp_path / "ev")]) == 2
    assert "fold 1 was not trained in this run" in capsys.readouterr().err
    export = tmp_path / "model"
    assert run_cli(add_export_arguments, cmd_export, ["--run", only2, "--out", export, "--fold", "2"]) == 0
    assert json.loads((export / "model.json").read_text())["folds"][0]["fold_number"] == 2
    assert load_export_bundle(export, fold="2").fold_names == ["fold2"]
    with pytest.raises(FileNotFoundError, match="fold 1 was not trained in this run"):
        load_export_bundle(export, fold="1")


def _edit_clip_table(cache: Path, edit) -> None:
    """Change a copied store's clip table in place (root zarr.json attributes), as another extract would have."""
    meta = json.loads((cache / "zarr.json").read_text())
    for row in meta["attributes"]["clip_table"]:
        edit(row)
    (cache / "zarr.json").write_text(json.dumps(meta))


def test_evaluate_refuses_a_cache_of_other_encoders_in_one_line(run, tmp_path, capsys):
    """The run's checkpoints carry their FeatureSpec, so the refusal comes from the --cache's entries, not from
    reading the run's features out of that cache."""
    from synthetic_store import make_store

    other = make_store(tmp_path / "other_cache", repetitions=1)
    argv = ["evaluate", "--run", str(run), "--cache", str(other), "--out", str(tmp_path / "eval"), "--device", "cpu"]
    assert mmfer_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "holds no features made with run" in err, err
    assert not (tmp_path / "eval").exists()


def test_evaluate_refuses_the_runs_own_clips_unless_allowed_and_counts_them(run, demo_cache, tmp_path, capsys):
    """Cross-corpus on the run's own cache (or a copy of it): every clip was trained or validated on by some fold
    model, matched by source signature and path; refused, or with --allow-overlap scored and counted."""
    from mmfer.pipeline.evaluate import evaluate, format_evaluation
    from mmfer.pipeline.command_config import EvaluateConfig
    from mmfer.core.errors import ConfigError

    copy = shutil.copytree(demo_cache, tmp_path / "copy")   # a copy: same media, same source signatures
    for cache in (demo_cache, copy):
        with pytest.raises(ConfigError, match=r"32 of its 32 scored clips .* are made from the media run .* trained or "
                                              r"validated on.*--allow-overlap"):
            evaluate(EvaluateConfig(run=str(run), cache=str(cache), out=str(tmp_path / "ev"), device="cpu"))
    assert not (tmp_path / "ev").exists()
    result = evaluate(EvaluateConfig(run=str(run), cache=str(copy), out=str(tmp_path / "ev"), device="cpu",
                                     allow_overlap=True))
    assert result["num_overlap"] == 32 and "overlap: 32 of these clips" in format_evaluation(result)
    # fold 1 alone trained on actors 3, 4 and validated on 2; a cache whose clips of those actors are other media
    actor = lambda row: int(row["clip_id"].split("-")[-1])   # noqa: E731
    _edit_clip_table(copy, lambda row: row.update(source=f"9:{actor(row)}", path=f"/elsewhere/{row['clip_id']}.mp4")
                     if actor(row) > 1 else None)
    with pytest.raises(ConfigError, match=r"8 of its 32 scored clips"):   # actor 1's clips: fold 2 trained on them
        evaluate(EvaluateConfig(run=str(run), cache=str(copy), out=str(tmp_path / "ev2"), device="cpu"))
    result = evaluate(EvaluateConfig(run=str(run), cache=str(copy), out=str(tmp_path / "ev2"), device="cpu", fold="1"))
    assert result["num_overlap"] == 0 and result["num_clips"] == 32 and "overlap" not in format_evaluation(result)


def test_corrupt_on_another_cache_checks_it_holds_the_runs_test_clips(run, demo_cache, tmp_path):
    from mmfer.pipeline.robustness import robustness_report
    from mmfer.pipeline.command_config import EvaluateConfig
    from mmfer.core.errors import ConfigError

    moved = shutil.copytree(demo_cache, tmp_path / "moved")   # the run's own store, moved: accepted
    cfg = EvaluateConfig(run=str(run), cache=str(moved), out=str(tmp_path / "r"), device="cpu", corrupt="no-audio", fold="1")
    assert set(robustness_report(cfg)["scores"]["fold"]) == {"fold1"}
    other = shutil.copytree(demo_cache, tmp_path / "other")   # same ids and actors, other media (another dataset)
    _edit_clip_table(other, lambda row: row.update(source="1:2", path=f"/other/{row['clip_id']}.mp4"))
    with pytest.raises(ConfigError, match=r"8 of fold1's test clips .* are made from other media"):
        robustness_report(dataclasses_replace(cfg, cache=str(other)))
    renamed = shutil.copytree(demo_cache, tmp_path / "renamed")
    _edit_clip_table(renamed, lambda row: row.update(clip_id="x" + row["clip_id"]))
    with pytest.raises(ConfigError, match=r"are not the run's test clips of fold1 \(8 not among them"):
        robustness_report(dataclasses_replace(cfg, cache=str(renamed)))


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# ---- an unfinished run says so ---------------------------------------------------------------


def test_an_unfinished_run_is_named_in_one_warning_and_on_the_card(run, tmp_path, caplog):
    from mmfer.pipeline.bundle import load_export_bundle, load_run_bundle

    killed = shutil.copytree(run, tmp_path / "killed")
    (killed / "summary.json").unlink()   # what a run killed before its test pass leaves: no summary.json
    with caplog.at_level(logging.WARNING, logger="mmfer"):
        bundle = load_run_bundle(killed, fold="1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unfinished run" in warnings[0] and "fold1 at epoch 1 of 1" in warnings[0], warnings
    assert "--resume" in warnings[0] and bundle.unfinished
    caplog.clear()
    export = tmp_path / "model"
    assert run_cli(add_export_arguments, cmd_export, ["--run", killed, "--out", export, "--fold", "1"]) == 0
    card = (export / "README.md").read_text()
    assert "**Unfinished run:**" in card and "no test scores" in card, card
    assert json.loads((export / "model.json").read_text())["unfinished"].startswith("unfinished run")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmfer"):
        load_export_bundle(export)
    assert [r.getMessage() for r in caplog.records if "unfinished run" in r.getMessage()], caplog.records
    # a finished run: no warning, no note
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmfer"):
        assert load_run_bundle(run, fold="1").unfinished is None
    assert not [r for r in caplog.records if "unfinished" in r.getMessage()]


# ---- runs and exported models that travel -------------------------------------------------------


@pytest.mark.slow
def test_a_run_and_its_exports_travel_to_other_folders(demo_root, tmp_path, monkeypatch):
    """Everything typed relative to a working folder `w`: predict --run from its parent finds the cache; an export
    copied to a colleague's folder predicts from a third working folder, with its encoders carried inside
    (--include-encoders), or found by weights hash in --models-dir / $MMFER_MODELS after the original models moved.
    The commands run in this process (cli_helpers), each from its own working folder."""
    from cli_helpers import run_mmfer

    for name in [k for k in os.environ if k.startswith("MMFER_")]:
        monkeypatch.delenv(name)

    def mmfer(cwd: Path, *args, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as local:
            local.chdir(cwd)
            for name, value in (extra_env or {}).items():
                local.setenv(name, value)
            return run_mmfer(*args)

    w = tmp_path / "w"
    shutil.copytree(demo_root, w / "clips")
    (w / "folds.json").write_text(json.dumps([{"name": "fold1", "test_actors": [1], "val_actors": [2]}]))
    done = mmfer(w, "extract", "--root", "clips", "--out", "cache", "--preset", "tiny", "--models-dir", "models",
                 "--select", "*-0[123]", "--device", "cpu", "--num-workers", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    done = mmfer(w, "train-fusion", "--cache", "cache", "--out", "runs/r1", "--preset", "tiny", "--device", "cpu",
                 "--epochs", "1", "split.protocol=file", "split.fold_file=folds.json", "model.visual.num_keep_tokens=8",
                 "training.batch_size=4")
    assert done.returncode == 0, done.stderr[-3000:]
    clip = sorted((w / "clips" / "Actor_01").glob("*.mp4"))[0]

    def probabilities(csv: Path) -> np.ndarray:
        return pd.read_csv(csv)[PROBS].to_numpy()

    done = mmfer(tmp_path, "predict", "--run", "w/runs/r1", clip, "--device", "cpu", "--out", "from_parent.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = probabilities(tmp_path / "from_parent.csv")

    for name, flags in (("carried", ["--include-encoders"]), ("named", [])):
        done = mmfer(w, "export", "--run", "runs/r1", "--out", name, *flags)
        assert done.returncode == 0, done.stderr[-3000:]
    colleague = tmp_path / "colleague"
    for name in ("carried", "named"):
        shutil.copytree(w / name, colleague / name)
    assert (colleague / "carried" / "encoders" / "video" / "tiny-siglip-vision" / "config.json").is_file()
    card = (colleague / "named" / "README.md").read_text()
    assert "--models-dir" in card and "--include-encoders" in card and "weights sha256" in card
    models = (w / "models").rename(tmp_path / "shared_models")   # the run's own encoders are gone from where it recorded them
    third = tmp_path / "third"
    third.mkdir()
    done = mmfer(third, "predict", "--model", colleague / "carried", clip, "--device", "cpu", "--out", "carried.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.array_equal(probabilities(third / "carried.csv"), reference)

    done = mmfer(third, "predict", "--model", colleague / "named", clip, "--device", "cpu", "--out", "named.csv")
    assert done.returncode == 2 and not (third / "named.csv").exists(), done.stderr[-3000:]
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "--visual-encoder" in err and "--models-dir" in err and "--preset" not in err, err
    for flags, extra_env in ((["--models-dir", models], None), ([], {"MMFER_MODELS": str(models)})):
        done = mmfer(third, "predict", "--model", colleague / "named", clip, "--device", "cpu", "--out", "named.csv",
                     *flags, extra_env=extra_env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert np.array_equal(probabilities(third / "named.csv"), reference)


def test_encoder_lookup_order_and_its_one_line_refusal(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mmfer.pipeline.encoder_lookup import EncoderNotFoundError, find_encoder
    from mmfer.core.paths import record_path

    store, typed = tmp_path / "w" / "cache", tmp_path / "third" / "models" / "enc"
    for folder in (tmp_path / "w" / "models" / "enc", typed, store):
        folder.mkdir(parents=True)
    location = record_path(tmp_path / "w" / "models" / "enc", store)
    assert location["relative"] == "../models/enc"
    record = {"encoder": {"name": "models/enc", "location": location, "weights_sha256": "ab" * 32}}
    run = SimpleNamespace(encoder_files={}, store_path=str(store), source="run")
    assert find_encoder("video", record, run, flag="elsewhere", models_dir=None) == "elsewhere"
    moved = tmp_path / "moved"
    (tmp_path / "w").rename(moved)   # the working folder moved: the record relative to the store still finds it
    run.store_path = str(moved / "cache")
    assert Path(find_encoder("video", record, run, flag=None, models_dir=None)).resolve() == (moved / "models" / "enc").resolve()
    # an export (no store): the resolved path is gone; a folder of the typed name in this working folder is the last guess
    export = SimpleNamespace(encoder_files={}, store_path=None, source="model")
    monkeypatch.chdir(tmp_path / "third")
    assert find_encoder("video", record, export, flag=None, models_dir=None) == "models/enc"
    shutil.rmtree(typed)
    with pytest.raises(EncoderNotFoundError) as err:
        find_encoder("video", record, export, flag=None, models_dir=str(tmp_path / "empty"))
    message = str(err.value)
    assert "--visual-encoder" in message and "--models-dir" in message and "--preset" not in message, message
    # a hub id found in no models dir is loaded by its name (from the HF cache)
    hub = {"encoder": {"name": "google/siglip2-base-patch16-224", "weights_sha256": "cd" * 32}}
    assert find_encoder("video", hub, export, flag=None, models_dir=str(tmp_path)) == "google/siglip2-base-patch16-224"


@pytest.fixture(scope="module")
def onnx_export(run, tmp_path_factory) -> Path:
    """The 2-fold run exported with --onnx-encoders: one ONNX graph per fold model, and the tiny encoders'."""
    out = tmp_path_factory.mktemp("onnx") / "model"
    assert run_cli(add_export_arguments, cmd_export, ["--run", run, "--out", out, "--onnx-encoders"]) == 0
    return out


@pytest.mark.slow   # four ONNX exports: ~30 s each on a busy 2-core CPU
def test_onnx_export_predicts_like_pytorch(onnx_export, exported, clips, outputs, tmp_path, capsys):
    """onnxruntime runs each fold's graph (PyTorch encoders) and then everything (ONNX encoders too), the latter
    also in a child process that cannot import torch: the ensemble's probabilities equal PyTorch's within 1e-4
    every way; an export without --onnx is refused in one line."""
    import onnxruntime

    manifest = json.loads((onnx_export / "model.json").read_text())
    assert [f["onnx"] for f in manifest["folds"]] == ["onnx/fold1.onnx", "onnx/fold2.onnx"]
    assert manifest["onnx_encoders"] == {"video": "onnx/encoders/video.onnx", "audio": "onnx/encoders/audio.onnx"}
    session = onnxruntime.InferenceSession(str(onnx_export / "onnx/fold1.onnx"), providers=["CPUExecutionProvider"])
    axes = {i.name: i.shape for i in session.get_inputs()}
    assert axes["video_tokens"][:2] == ["batch", "frames"] and axes["audio_tokens"][:2] == ["batch", "audio_frames"], axes
    audio = onnxruntime.InferenceSession(str(onnx_export / "onnx/encoders/audio.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in audio.get_inputs()] == [["batch", "samples"], ["batch"]]   # the wave, not mel features

    fusion_only = shutil.copytree(onnx_export, tmp_path / "fusion-only")
    del manifest["onnx_encoders"]
    (fusion_only / "model.json").write_text(json.dumps(manifest))
    want = outputs["ensemble"][PROBS].to_numpy()
    for name, model in (("fusion", fusion_only), ("all", onnx_export)):
        got = predict(["--model", model, "--runtime", "onnx", *clips], tmp_path / f"{name}.csv")
        diff = np.abs(got[PROBS].to_numpy() - want)
        assert diff.max() < TOLERANCE, f"{name} in onnxruntime vs PyTorch: max diff {diff.max():.2e}"
        assert list(got["prediction"]) == list(outputs["ensemble"]["prediction"]), name

    # a deployment box: onnxruntime and ffmpeg, no torch
    from bare_box import onnx_box_env

    out = tmp_path / "no-torch.csv"
    done = subprocess.run([sys.executable, "-m", "mmfer.pipeline.cli", "predict", "--model", str(onnx_export),
                           "--runtime", "onnx", "--out", str(out), *map(str, clips)],
                          env=onnx_box_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    diff = np.abs(pd.read_csv(out)[PROBS].to_numpy() - want)
    assert diff.max() < TOLERANCE, f"onnxruntime without torch vs PyTorch: max diff {diff.max():.2e}"

    capsys.readouterr()
    assert mmfer_main(["predict", "--model", str(exported), "--runtime", "onnx", str(clips[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exported with --onnx" in err, err


# ---- every face (--faces all) -------------------------------------------------------------------------


def two_face_video(path: Path, *, duration_s: float = 2.0, fps: int = 25) -> tuple[Path, np.ndarray]:
    """face_helpers' two demo faces (left still, right blue and moving down) as H.264 with a tone, written by
    ffmpeg; returns the path and the faces' drawn tiles (frames, 2, 4) x0, y0, x1, y1 in pixels."""
    from face_helpers import TWO_FACES_HW, two_face_frames

    from mmfer.core.media import run_ffmpeg

    frames, tiles = two_face_frames(int(round(duration_s * fps)), fps=fps)
    height, width = TWO_FACES_HW
    run_ffmpeg(["-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
                "-f", "lavfi", "-i", f"sine=frequency=220:duration={duration_s}:sample_rate=16000",
                "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt",
                "yuv420p", "-c:a", "aac", "-shortest", str(path)], path=path, timeout_s=60, input_bytes=frames.tobytes())
    return path, tiles


def test_faces_all_gives_a_row_per_face_from_its_own_crops(run, tmp_path):
    """Two faces: the default predicts the file once, as before; --faces all gives a row per face, with its
    median box and time span, and each row's probabilities are the model's on that track's crops, which cover
    their own face in every sampled frame and not the other."""
    from face_helpers import TWO_FACES_HW, track_crop_owners

    from mmfer.extract.worker import decode_tracks
    from mmfer.pipeline.bundle import load_run_bundle
    from mmfer.pipeline.predictor import Predictor

    video, tiles = two_face_video(tmp_path / "pair.mp4")
    base = ["--run", run, "--fold", "1"]
    one = predict([*base, video], tmp_path / "one.csv")
    assert one.index.tolist() == ["pair"] and "track" not in one.columns
    rows = predict([*base, "--faces", "all", video], tmp_path / "all.csv").reset_index()
    assert rows["clip_id"].tolist() == ["pair", "pair"] and rows["track"].tolist() == [0, 1], rows
    assert rows.loc[0, "x1"] <= 128 and rows.loc[1, "x0"] >= 150, rows[["x0", "y0", "x1", "y1"]]   # left, right
    assert (rows["start_s"] < 0.2).all() and (rows["end_s"] > 1.7).all(), rows[["start_s", "end_s"]]
    probs = rows[PROBS].to_numpy(float)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5) and np.abs(probs[0] - probs[1]).max() > 1e-3

    predictor = Predictor(load_run_bundle(run, fold="1"), device="cpu")
    (job,) = predictor.featurizer.decode_jobs(pd.DataFrame({"clip_id": ["pair"], "path": [str(video)], "source": [""]}),
                                             timeout_s=60)
    tracks = decode_tracks(job, predictor.processor)
    frame_index = np.round(tracks[0][1].timestamps_s * 25).astype(int)   # the Tv sampled frames
    owners = track_crop_owners([t for t, _ in tracks], tiles[frame_index], *TWO_FACES_HW)
    assert len(tracks) == 2 and (owners[0] == 0).all() and (owners[1] == 1).all(), owners
    for (_, item), row in zip(tracks, probs):
        (want,) = predictor.predict([predictor.decoded_features(item, face_crop="detect")])
        assert np.abs(want - row).max() < TOLERANCE, f"max diff {np.abs(want - row).max():.2e}"

    faceless = faceless_clip(tmp_path / "wall.mp4", 1.0)
    assert run_cli(add_predict_arguments, cmd_predict, [*base, "--device", "cpu", "--faces", "all", faceless]) == 1


def test_faces_all_windows_and_stream_give_a_timeline_line_per_face(run, tmp_path, capsys, monkeypatch):
    video, _ = two_face_video(tmp_path / "pair.mp4")
    monkeypatch.chdir(tmp_path)
    argv = ["--run", run, "--fold", "1", "--device", "cpu", "--faces", "all", "--window", "1", "--hop", "1"]
    assert run_cli(add_predict_arguments, cmd_predict, [*argv, "--stream", video]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["start_s"], x["track"]) for x in lines] == [(s, k) for s in (0.0, 1.0) for k in (0, 1)], lines
    assert all(x["box_px"][2] <= 128 if x["track"] == 0 else x["box_px"][0] >= 150 for x in lines), lines
    streamed = pd.read_csv(tmp_path / "pair.timeline.csv")
    rows = predict([*argv, video], tmp_path / "file.csv").reset_index()   # --window FILE: the same windows
    timeline = pd.read_csv(tmp_path / "pair.timeline.csv")
    assert list(timeline.columns[:7]) == ["track", "start_s", "end_s", "x0", "y0", "x1", "y1"]
    assert timeline["track"].tolist() == [0, 1] * 2 and timeline["start_s"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert np.allclose(timeline[PROBS].to_numpy(), streamed[PROBS].to_numpy(), atol=1e-6)
    assert np.allclose(timeline[PROBS].to_numpy(), [[x["probabilities"][e] for e in EMOTIONS] for x in lines], atol=2e-6)
    assert (tmp_path / "pair.timeline.png").stat().st_size > 1000
    assert rows["track"].tolist() == [0, 1] and all("mean of 2 windows" in n for n in rows["note"])
    for k in (0, 1):
        own = timeline[timeline["track"] == k]
        assert np.allclose(rows.loc[k, PROBS].to_numpy(float), own[PROBS].mean().to_numpy(), atol=1e-5)
