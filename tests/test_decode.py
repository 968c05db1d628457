"""decode_clip on real tiny clips made with ffmpeg's lavfi sources: counts, VFR picking, rotation, failures."""

from __future__ import annotations

import inspect
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from mmfer.extract.decode import (DecodeError, audio_graph, decode_clip, frame_list_graph, frame_select_graph,
                                  probe_media)
from mmfer.core.config import ExtractConfig
from mmfer.core.media import ffmpeg_exe, run_ffmpeg

VFR_PTS_S = [k / 30 for k in range(30)] + [1.0 + j / 5 for j in range(1, 11)]   # 30 fps for 1 s, then 5 fps
STEREO_GAINS = (0.9, 0.6)   # channel peaks; their mean 0.75, ffmpeg's `-ac 1` sum x 0.707 would be 1.06
LEVEL_STEP = 5   # frame k of the VFR clip has luma 16 + 5k, so its RGB grey level tells which frame it is


def _decode(path, **settings):
    """decode_clip with ExtractConfig's settings, some replaced."""
    cfg = ExtractConfig()
    return decode_clip(path, **{"num_frames": cfg.num_frames, "sample_rate_hz": cfg.sample_rate_hz,
                                "timeout_s": cfg.decode_timeout_s, "max_audio_s": cfg.max_audio_s, **settings})


def _make(path: Path, args: list[str]) -> Path:
    run_ffmpeg(["-y", *args, str(path)], path=path, timeout_s=60)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    x264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    out = {
        "av": _make(d / "av.mp4", ["-f", "lavfi", "-i", "testsrc2=size=112x112:rate=25",
                                   "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                                   "-t", "2", *x264, "-c:a", "aac", "-shortest"]),
        "odd": _make(d / "odd.mp4", ["-f", "lavfi", "-i", "testsrc2=size=98x56:rate=25", "-vf", "scale=97:55",
                                     "-t", "1",
                                     "-c:v", "libx264", "-pix_fmt", "yuv444p"]),
        "wav": _make(d / "speech.wav", ["-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000", "-t", "1"]),
        "one": _make(d / "one.mp4", ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "1", *x264]),
    }
    # VFR: frame k is a flat grey of luma 16 + 5k; pts k/30 s for k < 30, then 0.2 s apart
    setpts = "if(lt(N,30),N/30,1+(N-29)/5)/TB"
    grey_ramp = f"nullsrc=s=64x48:r=30,geq=lum='16+{LEVEL_STEP}*N':cb=128:cr=128"
    out["vfr"] = _make(d / "vfr.mp4", ["-f", "lavfi", "-i", grey_ramp,
                                       "-frames:v", str(len(VFR_PTS_S)), "-vf", f"setpts='{setpts}'",
                                       "-fps_mode", "vfr", "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p"])
    # upright: top-left quadrant white; the file says "rotate 90 degrees counter-clockwise to display"
    corner = "nullsrc=s=64x48:r=25,geq=lum='if(lt(X,W/2)*lt(Y,H/2),235,16)':cb=128:cr=128"
    out["upright"] = _make(d / "upright.mp4", ["-f", "lavfi", "-i", corner, "-frames:v", "10", *x264])
    out["rot90"] = _make(d / "rot90.mp4", ["-display_rotation", "90", "-i", str(out["upright"]), "-c", "copy"])
    # stereo, lossless float PCM at 16 kHz (no resampling): left 0.9 x sine, right 0.6 x the same sine
    stereo = f"aevalsrc='{STEREO_GAINS[0]}*sin(2*PI*300*t)|{STEREO_GAINS[1]}*sin(2*PI*300*t)':s=16000:d=1"
    out["stereo"] = _make(d / "stereo.mkv", ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-f", "lavfi",
                                             "-i", stereo, "-t", "1", *x264, "-c:a", "pcm_f32le"])
    # two video and two audio streams; the second of each is flagged default: a flat grey picture, a sine
    out["multi"] = _make(d / "multi.mp4", [
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-f", "lavfi", "-i", "color=c=gray:size=64x48:rate=25",
        "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
        "-map", "0:v", "-map", "1:v", "-map", "2:a", "-map", "3:a", "-t", "1", *x264, "-c:a", "aac",
        "-disposition:v:0", "0", "-disposition:v:1", "default", "-disposition:a:0", "0", "-disposition:a:1", "default"])
    data = out["av"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    out["truncated"] = d / "truncated.mp4"
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    out["random"] = d / "random.mp4"
    (d / "empty.mp4").write_bytes(b"")
    out["empty"] = d / "empty.mp4"
    return out


def test_frames_audio_shapes_and_ranges(clips):
    clip = _decode(clips["av"], num_frames=16)
    assert clip.frames.shape == (16, 112, 112, 3) and clip.frames.dtype == np.uint8
    assert clip.timestamps_s.dtype == np.float32 and np.all(np.diff(clip.timestamps_s) > 0)
    assert 0 <= clip.timestamps_s[0] and clip.timestamps_s[-1] < clip.duration_s
    assert clip.duration_s == pytest.approx(2.0, abs=0.05)
    assert clip.has_audio and clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert abs(len(clip.audio) - 2.0 * 16000) < 0.03 * 16000, len(clip.audio)
    assert np.abs(clip.audio).max() <= 1.0 and np.abs(clip.audio).max() > 0.05   # a real sine, not zeros
    assert clip.frames.std() > 10   # testsrc2 is colourful, not a blank frame


def test_audio_limit_odd_size_and_downscale(clips):
    assert len(_decode(clips["av"], max_audio_s=0.5).audio) == pytest.approx(8000, abs=100)
    odd = _decode(clips["odd"], num_frames=5)
    assert odd.frames.shape == (5, 55, 97, 3) and not odd.has_audio and odd.audio is None
    small = _decode(clips["av"], num_frames=3, max_side_px=64)
    assert small.frames.shape == (3, 64, 64, 3)


def test_stereo_is_the_mean_of_its_channels_without_clipping(clips):
    clip = _decode(clips["stereo"], num_frames=2)
    t = np.arange(len(clip.audio)) / 16000
    want = np.mean(STEREO_GAINS) * np.sin(2 * np.pi * 300 * t)
    diff = np.abs(clip.audio - want)
    assert len(clip.audio) == 16000 and diff.max() < 1e-4, f"max diff {diff.max():.3g}, mean {diff.mean():.3g}"
    assert (np.abs(clip.audio) >= 0.999).sum() == 0 and np.abs(clip.audio).max() == pytest.approx(0.75, abs=1e-3)


def test_default_flagged_streams_are_used_and_named(clips, caplog):
    with caplog.at_level("INFO", logger="mmfer.extract.decode"):
        clip = _decode(clips["multi"], num_frames=4)
    assert clip.frames.std() < 3, "decoded the colourful first video stream, not the default grey one"
    assert np.abs(clip.audio).max() > 0.05, "decoded the silent first audio stream, not the default sine"
    notes = [r.getMessage() for r in caplog.records if "streams; using stream" in r.getMessage()]
    assert len(notes) == 2 and "using stream 1" in notes[0] and "using stream 3" in notes[1], notes


def test_single_frame_clip_repeats_it(clips):
    clip = _decode(clips["one"], num_frames=8)
    assert clip.frames.shape == (8, 48, 64, 3) and clip.num_source_frames == 1
    assert np.array_equal(clip.frames[0], clip.frames[-1]) and np.all(clip.timestamps_s == 0)


def test_vfr_picks_frame_nearest_each_target_time(clips):
    num_frames = 8
    clip = _decode(clips["vfr"], num_frames=num_frames)
    pts = np.array(VFR_PTS_S)
    duration_s = clip.duration_s   # mp4 gives the last frame the nominal 1/30 s, not the last gap
    assert pts[-1] < duration_s <= pts[-1] + 0.2
    targets = (np.arange(num_frames) + 0.5) * duration_s / num_frames
    want = np.abs(pts[None] - targets[:, None]).argmin(axis=1)
    np.testing.assert_allclose(clip.timestamps_s, pts[want], atol=1e-3)
    # the pixels are those of the chosen frames, not just the timestamps (limited-range luma -> RGB)
    got = np.round(clip.frames.reshape(num_frames, -1).mean(axis=1) / (LEVEL_STEP * 255 / 219)).astype(int)
    np.testing.assert_array_equal(got, want)
    naive = np.minimum((targets * len(pts) / duration_s).astype(int), len(pts) - 1)   # index = t x mean fps
    assert (naive != want).sum() >= 3, "test clip is not VFR enough to tell the methods apart"


def test_rotation_metadata_gives_upright_frames(clips):
    assert probe_media(clips["rot90"], timeout_s=30).rotation_deg == 90
    upright = _decode(clips["upright"], num_frames=2).frames[0].astype(int)
    rotated = _decode(clips["rot90"], num_frames=2)
    assert rotated.rotation_deg == 90 and rotated.frames.shape == (2, 64, 48, 3)
    want = np.rot90(upright, k=1)   # 90 degrees counter-clockwise: the white corner goes bottom-left
    diff = np.abs(rotated.frames[0].astype(int) - want)
    assert diff.mean() < 3, f"max diff {diff.max()}, mean {diff.mean():.2f}"
    assert rotated.frames[0, -8:, :8].mean() > 200 and rotated.frames[0, :8, :8].mean() < 40


def test_audio_only_file_is_no_video_stream(clips):
    with pytest.raises(DecodeError) as err:
        _decode(clips["wav"])
    assert err.value.reason == "no-video-stream" and str(clips["wav"]) in str(err.value)


@pytest.mark.parametrize("name,reason", [("random", "ffmpeg-error"), ("truncated", "ffmpeg-error"), ("empty", "empty")])
def test_bad_files_raise_decode_error_naming_the_file(clips, name, reason):
    with pytest.raises(DecodeError) as err:
        _decode(clips[name])
    assert err.value.reason == reason and str(clips[name]) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DecodeError) as err:
        _decode(tmp_path / "nope.mp4")
    assert err.value.reason == "missing"


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """Install a shell script as the ffmpeg binary (ffmpeg_exe is cached, so clear it around the test)."""

    def install(body: str) -> None:
        script = tmp_path / "ffmpeg"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("MMFER_FFMPEG", str(script))
        ffmpeg_exe.cache_clear()

    yield install
    monkeypatch.delenv("MMFER_FFMPEG", raising=False)
    ffmpeg_exe.cache_clear()


def test_hanging_ffmpeg_times_out(clips, fake_ffmpeg):
    fake_ffmpeg("sleep 30")
    start = time.monotonic()
    with pytest.raises(DecodeError) as err:
        _decode(clips["av"], timeout_s=1.0)
    assert err.value.reason == "timeout" and time.monotonic() - start < 5


def test_stderr_flood_does_not_deadlock(clips, fake_ffmpeg):
    fake_ffmpeg("head -c 2000000 /dev/zero | tr '\\000' x >&2; exit 1")
    start = time.monotonic()
    with pytest.raises(DecodeError) as err:
        _decode(clips["av"], timeout_s=20.0)
    assert err.value.reason == "ffmpeg-error" and time.monotonic() - start < 10
    assert os.environ["MMFER_FFMPEG"].endswith("ffmpeg")


OLD_FFMPEG = """#!/bin/sh
# ffmpeg {version} as a distribution ships it: no -fps_mode before 5.1
if [ "$1" = "-version" ]; then echo "ffmpeg version {version}-0ubuntu0.22.04.1 Copyright (c) 2000-2021"; exit 0; fi
for arg in "$@"; do
  if [ "$arg" = "-fps_mode" ] && [ {major} -lt 5 ]; then echo "Unrecognized option 'fps_mode'." >&2; exit 8; fi
done
exec {real} "$@"
"""


@pytest.fixture
def ffmpeg_on_path(tmp_path, monkeypatch):
    """Put a wrapper claiming ffmpeg `version` first on PATH (and no $MMFER_FFMPEG); returns its path."""
    real = ffmpeg_exe()

    def install(version: str) -> Path:
        folder = tmp_path / f"bin-{version}"
        folder.mkdir()
        script = folder / "ffmpeg"
        script.write_text(OLD_FFMPEG.format(version=version, real=real, major=version.split(".")[0]))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.delenv("MMFER_FFMPEG", raising=False)
        ffmpeg_exe.cache_clear()
        return script

    yield install
    ffmpeg_exe.cache_clear()


def test_old_ffmpeg_on_path_falls_back_to_the_bundled_one(clips, ffmpeg_on_path, caplog):
    script = ffmpeg_on_path("4.4.2")
    with caplog.at_level("WARNING", logger="mmfer.core.media"):
        clip = _decode(clips["av"], num_frames=4)
    assert clip.frames.shape == (4, 112, 112, 3) and clip.has_audio
    assert ffmpeg_exe() != str(script)
    lines = [r.getMessage() for r in caplog.records if r.name == "mmfer.core.media"]
    assert len(lines) == 1 and "4.4" in lines[0] and "bundled" in lines[0], lines


def test_new_enough_ffmpeg_on_path_is_used(ffmpeg_on_path):
    script = ffmpeg_on_path("6.1.1")
    assert ffmpeg_exe() == str(script)


RELEASE_FFMPEG = """#!/bin/sh
# ffmpeg {version} as Debian ships it: -fps_mode (5.1) but not `-enc_time_base:v filter` (6.1), refused as that
# release refuses an option value it does not know
if [ "$1" = "-version" ]; then echo "ffmpeg version {version}-1~deb12u1 Copyright (c) 2000-2023 the FFmpeg developers"; exit 0; fi
previous=""
for arg in "$@"; do
  if [ "$previous" = "-enc_time_base:v" ] && [ "$arg" = "filter" ]; then
    echo "Invalid time base: filter" >&2; exit 1
  fi
  previous="$arg"
done
exec {real} "$@"
"""


@pytest.mark.parametrize("version", ["5.1.6", "6.0.1"])
def test_ffmpeg_without_an_option_decode_passes_is_not_used(version, tmp_path, monkeypatch, caplog):
    """5.1 and 6.0 pass a version gate at 5.1, but the exact-frame fallback passes
    `-enc_time_base:v filter` (6.1): the gate tries the options themselves, once, and names the one missing."""
    real = ffmpeg_exe()
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "ffmpeg"
    script.write_text(RELEASE_FFMPEG.format(version=version, real=real))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("MMFER_FFMPEG", raising=False)
    ffmpeg_exe.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="mmfer.core.media"):
            chosen = ffmpeg_exe()
        assert chosen != str(script)
        lines = [r.getMessage() for r in caplog.records if r.name == "mmfer.core.media"]
        assert len(lines) == 1 and version[:3] in lines[0] and "`-enc_time_base:v filter` (ffmpeg 6.1)" in lines[0], lines
        assert "-fps_mode" not in lines[0]   # it takes that one
    finally:
        ffmpeg_exe.cache_clear()


def test_relative_path_with_a_colon_is_a_local_file(clips, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("take:1.mp4").write_bytes(clips["av"].read_bytes())
    assert probe_media("take:1.mp4", timeout_s=30).has_audio
    clip = _decode("take:1.mp4", num_frames=4)
    assert clip.frames.shape == (4, 112, 112, 3) and clip.has_audio and len(clip.audio) > 16000


def test_each_pass_is_an_ffmpeg_python_graph_run_by_run_ffmpeg(clips):
    import ffmpeg

    path = clips["av"]
    info = probe_media(path, timeout_s=30)
    graphs = [frame_list_graph(path, info, decode=False), frame_list_graph(path, info, decode=True),
              frame_select_graph(path, info.video_stream, ["eq(n,0)", "eq(n,7)"], max_side_px=32),
              audio_graph(path, info.audio_stream, 16000, 1.0)]
    assert all(isinstance(g, ffmpeg.nodes.OutputStream) for g in graphs)
    # the select and scale expressions' commas survive ffmpeg-python's escaping: two 32x32 frames come back
    out = run_ffmpeg(graphs[2].compile(cmd=[]), path=path, timeout_s=30)
    frame_bytes = len(b"P6\n32 32\n255\n") + 32 * 32 * 3
    assert len(out) == 2 * frame_bytes and out.startswith(b"P6\n32 32\n255\n")


def test_decode_settings_have_no_defaults_of_their_own():
    """ExtractConfig owns the decode settings; a second default here would drift from it."""
    owned = {"decode_clip": ("num_frames", "sample_rate_hz", "timeout_s", "max_audio_s"), "probe_media": ("timeout_s",)}
    for function in (decode_clip, probe_media):
        params = inspect.signature(function).parameters
        for name in owned[function.__name__]:
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, f"{function.__name__}({name})"
            assert params[name].default is inspect.Parameter.empty, f"{function.__name__}({name}) has a default"
