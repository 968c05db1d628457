"""Bad and odd input files, all in one dataset folder, extracted once with `--face-crop detect`: each
file gets a clear per-clip reason or is handled correctly, and the run completes."""

import logging
import os

import numpy as np
import pytest
from extract_helpers import extract_config

from mmfer.data.demo import write_demo_clip
from mmfer.data.ravdess import scan_ravdess
from mmfer.extract.run import extract_all
from mmfer.core.media import run_ffmpeg
from mmfer.core.store import ClipStatus, open_store

X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-threads", "1"]
CLIP = "01-01-{:02d}-01-01-01-{:02d}"   # a valid RAVDESS stem for (emotion, actor)


def _ffmpeg(out, *args):
    out.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg(["-y", *args, str(out)], path=out, timeout_s=120)


def _lavfi(out, video=None, audio=None, *extra):
    inputs = (["-f", "lavfi", "-i", video] if video else []) + (["-f", "lavfi", "-i", audio] if audio else [])
    _ffmpeg(out, *inputs, *extra, *(["-c:a", "aac"] if audio else []))


def make_bad_root(root):
    """Write every case; returns {case: clip_id}. Cases in Actor_01 fail, the others are handled."""
    a1, a2 = root / "Actor_01", root / "Actor_02"
    ids = {}

    def name(case, emotion, actor):
        ids[case] = CLIP.format(emotion, actor)
        return ids[case] + ".mp4"

    good = write_demo_clip(a2 / name("normal", 1, 2), "neutral", 2, duration_s=1.0, size_px=64)
    (a1 / name("zero_bytes", 2, 1)).parent.mkdir(parents=True, exist_ok=True)
    (a1 / name("zero_bytes", 2, 1)).write_bytes(b"")
    data = good.read_bytes()
    (a1 / name("truncated", 3, 1)).write_bytes(data[: len(data) * 6 // 10])   # the moov atom is at the end: gone
    (a1 / name("random_bytes", 4, 1)).write_bytes(np.random.default_rng(0).bytes(20000))
    _lavfi(a1 / name("audio_only", 5, 1), None, "sine=frequency=300:duration=1")
    write_demo_clip(a2 / name("no_audio", 2, 2), "calm", 2, duration_s=1.0, size_px=64, with_audio=False)
    write_demo_clip(a2 / name("short_0.2s", 3, 2), "happy", 2, duration_s=0.2, size_px=64)
    write_demo_clip(a2 / name("one_frame", 4, 2), "sad", 2, duration_s=0.04, size_px=64)
    _lavfi(a2 / name("odd_97x55", 5, 2), "testsrc=size=97x55:rate=25:duration=1", "sine=duration=1",
           *X264, "-pix_fmt", "yuv444p", "-shortest")
    # 25 frames at 25 fps, then 25 frames at 10 fps: 1 s + 2.5 s
    _lavfi(a2 / name("vfr", 6, 2), "testsrc=size=64x64:rate=25:duration=2", "sine=duration=3.5",
           "-vf", "setpts='if(lt(N,25),N/25,1+(N-25)/10)/TB'", "-fps_mode", "vfr", "-video_track_timescale", "1000",
           *X264, "-pix_fmt", "yuv420p")
    upright = root.parent / "upright.mp4"
    _lavfi(upright, "testsrc=size=64x48:rate=25:duration=1", "sine=duration=1", *X264, "-pix_fmt", "yuv420p")
    _ffmpeg(a2 / name("rotated_90", 7, 2), "-display_rotation", "90", "-i", str(upright), "-c", "copy")
    _lavfi(a2 / name("sixty_s", 8, 2), "testsrc=size=32x32:rate=25:duration=60", "sine=duration=60",
           *X264, "-pix_fmt", "yuv420p")
    _lavfi(a2 / name("black_no_face", 1, 4), "color=black:size=64x48:rate=25:duration=1", "sine=duration=1",
           *X264, "-pix_fmt", "yuv420p")
    write_demo_clip(root / "Actor 03 é ü" / name("non_ascii_space_path", 1, 3), "neutral", 3, duration_s=1.0, size_px=64)
    write_demo_clip(root / "misc" / "take 1 ü.mp4", "happy", 5, duration_s=0.5, size_px=32)
    write_demo_clip(root / "misc" / "01-01-09-01-01-01-05.mp4", "happy", 5, duration_s=0.5, size_px=32)   # emotion 09
    os.symlink(root, root / "loop")   # a symlink loop in the dataset root
    return ids


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, tiny_models):
    base = tmp_path_factory.mktemp("bad_input")
    root = base / "data"
    ids = make_bad_root(root)
    manifest = scan_ravdess(root)
    summary = extract_all(extract_config(root, base / "cache", tiny_models, face_crop="detect"), manifest)
    store = open_store(base / "cache")
    return {"ids": ids, "root": root, "summary": summary, "store": store,
            "video": store.entry("video"), "audio": store.entry("audio")}


def status_of(run, case):
    index = run["store"].index_of(run["ids"][case])
    return ClipStatus(int(run["video"].statuses()[index])), ClipStatus(int(run["audio"].statuses()[index])), \
        run["video"].reasons()[index]


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_the_run_completes_with_only_the_broken_files_failed(bad_run):
    summary = bad_run["summary"]
    failed = {clip_id for clip_id, _, _ in summary.failures}
    broken = {bad_run["ids"][c] for c in ("zero_bytes", "truncated", "random_bytes", "audio_only")}
    assert failed == broken, summary.format()
    assert summary.num_done == len(bad_run["ids"]) - len(broken) and summary.num_missing_audio == 1, summary.format()


@pytest.mark.parametrize("case, reason", [
    ("zero_bytes", "empty: "), ("truncated", "ffmpeg-error: "), ("random_bytes", "ffmpeg-error: "),
    ("audio_only", "no-video-stream: ")])
def test_broken_file_fails_with_its_reason(bad_run, case, reason):
    video, audio, text = status_of(bad_run, case)
    assert video == audio == ClipStatus.FAILED
    path = str(next(bad_run["root"].rglob(bad_run["ids"][case] + ".mp4")))
    assert text.startswith(reason) and path in text, text


def test_video_without_audio_is_done_and_audio_missing_never_zeros(bad_run):
    video, audio, _ = status_of(bad_run, "no_audio")
    assert video == ClipStatus.DONE and audio == ClipStatus.MISSING
    index = bad_run["store"].index_of(bad_run["ids"]["no_audio"])
    assert bad_run["audio"].reasons()[index] == "no audio stream"
    assert not any(chunk.exists() for chunk in bad_run["audio"].clip_chunk_files(index))   # no zeros written


@pytest.mark.parametrize("case, duration_s, last_frame_s, audio_frames", [
    ("short_0.2s", 0.2, 0.16, 3), ("one_frame", 0.04, 0.0, 1), ("odd_97x55", 1.0, 0.96, 13),
    ("vfr", 3.44, 3.28, 44), ("rotated_90", 1.0, 0.96, 13), ("sixty_s", 60.0, 58.12, 250),
    ("non_ascii_space_path", 1.0, 0.96, 13)])
def test_odd_but_valid_clip_is_extracted(bad_run, case, duration_s, last_frame_s, audio_frames):
    """Observed values: frames are picked at uniform times (VFR too), audio is cut at max_audio_s (20 s)."""
    clip_id = bad_run["ids"][case]
    video = bad_run["video"].read_clip(clip_id)
    audio = bad_run["audio"].read_clip(clip_id)
    timestamps = video["timestamps_s"]
    assert np.all(np.diff(timestamps) >= 0) and timestamps[-1] == pytest.approx(last_frame_s, abs=0.021), timestamps
    assert float(audio["duration_s"]) == pytest.approx(duration_s, abs=0.041)
    assert int(audio["length"]) == audio_frames
    assert np.isfinite(video["tokens"].astype(np.float32)).all()


def test_crop_boxes_follow_the_real_frame_shape(bad_run):
    """Centre squares (no face in lavfi test patterns or a black frame) in the upright frame: the 64x48
    clip rotated 90 degrees is 48 wide and 64 high."""
    expected = {"odd_97x55": [21 / 97, 0, 76 / 97, 1], "rotated_90": [0, 8 / 64, 1, 56 / 64],
                "black_no_face": [8 / 64, 0, 56 / 64, 1]}
    for case, box in expected.items():
        boxes = bad_run["video"].read_clip(bad_run["ids"][case])["boxes"]
        np.testing.assert_allclose(boxes, np.tile(box, (16, 1)), atol=1e-6, err_msg=case)


def test_bad_names_and_symlink_loops_are_skipped_with_a_warning(bad_run, caplog):
    with caplog.at_level(logging.WARNING, logger="mmfer.data.ravdess"):
        manifest = scan_ravdess(bad_run["root"])
    assert sorted(manifest["clip_id"]) == sorted(bad_run["ids"].values())   # once each despite the loop
    assert "skipped 2 file(s) whose names are not valid RAVDESS names" in caplog.text
    assert "take 1 ü.mp4" in caplog.text and "01-01-09-01-01-01-05.mp4" in caplog.text
    assert "Actor 03 é ü" in manifest.set_index("clip_id").loc[bad_run["ids"]["non_ascii_space_path"], "path"]
