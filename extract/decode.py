"""Decode one clip into Tv RGB frames sampled at uniform timestamps, plus mono 16 kHz audio.

In: a media file path. Out: `DecodedClip` (frames, their timestamps, audio or None). Uses only the
ffmpeg binary (no ffprobe), through `run_ffmpeg`: the banner gives the streams (the default-flagged video
and audio streams are used, else the first ones) and rotation, a stream-copy pass lists
every frame's pts (a full decode pass when that is not exact), a select pass pulls the chosen frames as
PPM images, and a last pass decodes the audio. Each pass's arguments are compiled from an ffmpeg-python
graph and run by `run_ffmpeg`. Face cropping and encoders are left to others.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg   # ffmpeg-python: builds each pass's argument list from a stream graph; never runs ffmpeg itself
import numpy as np

from mmfer.core.errors import BadInputError
from mmfer.core.media import FfmpegError, local_input, run_ffmpeg

log = logging.getLogger(__name__)

# How frames and audio are chosen, recorded in the feature fingerprint: change the text with the code.
FRAME_SAMPLING = "default-flagged (else first) video stream; frame whose pts is nearest (i + 0.5) * duration_s / num_frames; duration to the end of the last frame"
AUDIO_MIX = "default-flagged (else first) audio stream, resampled by ffmpeg, channels averaged"


class DecodeError(BadInputError, RuntimeError):
    """A clip could not be decoded.

    Attributes:
        path: the media file.
        reason: short machine-readable cause: "missing", "empty", "timeout", "ffmpeg-error",
            "not-found" (no ffmpeg binary), "no-video-stream", "no-frames", "bad-output".
    """

    def __init__(self, path: str | os.PathLike, reason: str, message: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}: {message}")


@dataclass(frozen=True)
class MediaInfo:
    """What ffmpeg's input banner says about a file (best effort; streams are re-checked on decode)."""

    duration_s: float | None
    has_video: bool
    has_audio: bool
    rotation_deg: int   # counter-clockwise display rotation from the display matrix, in {0, 90, 180, 270}
    video_stream: str = "V:0"   # stream specifier of the video used: the default-flagged one, else the first
    audio_stream: str = "a:0"   # the audio stream used, chosen the same way
    num_video_streams: int = 0
    num_audio_streams: int = 0


@dataclass(frozen=True)
class DecodedClip:
    """frames: (Tv, H, W, 3) uint8 RGB, upright (display rotation applied).
    timestamps_s: (Tv,) float32, pts of each frame in seconds from the first video frame (sorted).
    audio: (S,) float32 mono in [-1, 1] at `sample_rate_hz`, or None when the file has no audio stream.
    """

    frames: np.ndarray
    timestamps_s: np.ndarray
    audio: np.ndarray | None
    sample_rate_hz: int
    duration_s: float
    has_audio: bool
    rotation_deg: int
    num_source_frames: int


def probe_media(path: str | os.PathLike, *, timeout_s: float) -> MediaInfo:
    """Read duration, streams and rotation from ffmpeg's banner for `ffmpeg -i path` (no output).

    Raises:
        DecodeError: the file is missing, empty, unreadable, or ffmpeg timed out.
    """
    _check_file(path)
    try:   # with no output file ffmpeg always exits 1; the banner comes back in the error's stderr
        run_ffmpeg(["-loglevel", "info", "-i", local_input(path)], path=path, timeout_s=timeout_s)
        banner = ""
    except FfmpegError as err:
        if err.reason != "ffmpeg-error":
            raise DecodeError(path, err.reason, str(err)) from err
        banner = err.stderr_tail
    if "Error opening input" in banner or "Stream #" not in banner:
        raise DecodeError(path, "ffmpeg-error", f"ffmpeg cannot read this file; is it a media file?\n{banner}")
    return _parse_banner(banner)


def decode_clip(
    path: str | os.PathLike,
    *,
    num_frames: int,
    sample_rate_hz: int,
    timeout_s: float,
    max_audio_s: float,
    max_side_px: int | None = None,
) -> DecodedClip:
    """Decode `num_frames` frames at uniform timestamps and the audio, from the streams flagged default
    (else the first video and audio streams; a log line names the choice when there are several).

    Frame i is the decoded frame whose pts is nearest to (i + 0.5) * duration_s / num_frames, so
    variable frame rate clips are sampled evenly in time; short clips repeat frames. `timeout_s` bounds
    all ffmpeg calls together; `max_side_px` downscales frames whose longer side is bigger. The settings
    have no defaults here: ExtractConfig owns them (num_frames, sample_rate_hz, decode_timeout_s, max_audio_s).

    Raises:
        DecodeError: see its `reason` attribute.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    deadline = time.monotonic() + timeout_s
    info = probe_media(path, timeout_s=timeout_s)
    # Fast path: packet pts from a stream copy (no decoding), frames then picked by time.
    _note_stream_choice(path, info)
    pts_s, dur_s, has_video, has_audio = _list_video_frames(path, info, _left(path, deadline), decode=False)
    order = np.argsort(pts_s, kind="stable")   # packets come in decode order; frames leave in pts order
    pts_s, dur_s = pts_s[order], dur_s[order]
    if not has_video:
        raise DecodeError(path, "no-video-stream", "the file has no video stream (audio-only?)")
    images = None
    if len(pts_s) and np.isfinite(pts_s).all() and len(np.unique(pts_s)) == len(pts_s):
        rel_s, picked, duration_s = _pick_frames(pts_s, dur_s, num_frames)
        unique = np.unique(picked)
        images = _read_frames(path, info.video_stream, unique, pts_s, by_time=True, max_side_px=max_side_px,
                              timeout_s=_left(path, deadline))
        if len(images) != len(unique):   # a packet that decodes to no frame, odd timestamps...
            log.debug("%s: time-based pick got %d of %d frames; listing decoded frames", path, len(images), len(unique))
            images = None
    if images is None:   # exact path: decode every frame once to list its pts, then pick by frame number
        pts_s, dur_s, _, _ = _list_video_frames(path, info, _left(path, deadline), decode=True)
        if len(pts_s) == 0:
            raise DecodeError(path, "no-frames", "the video stream decoded to 0 frames; is the file truncated?")
        rel_s, picked, duration_s = _pick_frames(pts_s, dur_s, num_frames)
        unique = np.unique(picked)
        images = _read_frames(path, info.video_stream, unique, rel_s, by_time=False, max_side_px=max_side_px,
                              timeout_s=_left(path, deadline))
    if len(images) != len(unique):
        raise DecodeError(path, "bad-output", f"asked ffmpeg for {len(unique)} frames, got {len(images)}")
    if len({im.shape for im in images}) > 1:
        shapes = sorted({im.shape for im in images})
        raise DecodeError(path, "bad-output", f"frame size changes inside the clip: {shapes}")
    frames = np.stack(images)[np.searchsorted(unique, picked)]    # (Tv, H, W, 3)

    audio = _read_audio(path, info.audio_stream, sample_rate_hz, max_audio_s, _left(path, deadline)) if has_audio else None
    if audio is not None and audio.size == 0:
        log.warning("%s: audio stream decoded to 0 samples; treating the clip as having no audio", path)
        audio, has_audio = None, False
    return DecodedClip(
        frames=frames,
        timestamps_s=rel_s[picked].astype(np.float32),
        audio=audio,
        sample_rate_hz=sample_rate_hz,
        duration_s=duration_s,
        has_audio=has_audio,
        rotation_deg=info.rotation_deg,
        num_source_frames=len(rel_s),
    )


def _note_stream_choice(path: str | os.PathLike, info: MediaInfo) -> None:
    """One log line when a file has several video or audio streams, naming the one used and why."""
    for kind, count, chosen in (("video", info.num_video_streams, info.video_stream),
                                ("audio", info.num_audio_streams, info.audio_stream)):
        if count > 1:
            log.info("%s: %d %s streams; using stream %s (the default-flagged one, else the first)",
                     path, count, kind, chosen)


def _pick_frames(pts_s: np.ndarray, dur_s: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Nearest frame to each uniform target time. Returns (rel_s (N,), picked (Tv,) indices into it, duration_s).

    rel_s is pts relative to the first frame; duration runs to the end of the last frame (its own
    duration, else the median frame gap).
    """
    rel_s = pts_s - pts_s.min()
    last = int(rel_s.argmax())
    gaps = np.diff(np.sort(rel_s))
    frame_s = dur_s[last] if dur_s[last] > 0 else (float(np.median(gaps)) if len(gaps) else 0.0)
    duration_s = float(rel_s[last] + frame_s)
    targets_s = (np.arange(num_frames) + 0.5) * duration_s / num_frames
    picked = np.abs(rel_s[None, :] - targets_s[:, None]).argmin(axis=1)   # never index = t * fps: VFR-safe
    return rel_s, picked, duration_s


def _check_file(path: str | os.PathLike) -> None:
    p = Path(path)
    if not p.is_file():
        raise DecodeError(path, "missing", "no such file; check the manifest's path column")
    if p.stat().st_size == 0:
        raise DecodeError(path, "empty", "the file is 0 bytes; re-copy or re-download it")


def _left(path: str | os.PathLike, deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DecodeError(path, "timeout", "decoding ran past its time limit")
    return left


def _ffmpeg(graph: "ffmpeg.nodes.OutputStream", path: str | os.PathLike, timeout_s: float) -> bytes:
    """Compile an ffmpeg-python graph to its argument list and run it with run_ffmpeg (timeout, drained pipes;
    ffmpeg-python's own `run()` has neither)."""
    try:
        return run_ffmpeg(graph.compile(cmd=[]), path=path, timeout_s=timeout_s)
    except FfmpegError as err:
        raise DecodeError(path, err.reason, str(err)) from err


_STREAM_LINE = re.compile(r"^\s*Stream #\d+:(\d+)\S*: (Video|Audio): (.*)$", re.MULTILINE)


def _parse_banner(banner: str) -> MediaInfo:
    """Duration, the streams, and which video and audio stream to use: the first one flagged `(default)`,
    else the first one (cover art, `(attached pic)`, is never video)."""
    duration_s = None
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", banner)
    if m:
        duration_s = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    streams = {"Video": [], "Audio": []}   # kind -> [(index, is_default, section text)]
    for line in _STREAM_LINE.finditer(banner):
        if line[2] == "Video" and "(attached pic)" in line[3]:
            continue
        rest = banner[line.end():]
        next_stream = re.search(r"\n\s*Stream #", rest)   # a stream's lines run up to the next stream of any kind
        section = banner[line.start(): line.end() + (next_stream.start() if next_stream else len(rest))]
        streams[line[2]].append((int(line[1]), "(default)" in line[3], section))
    video = _pick_stream(streams["Video"])
    audio = _pick_stream(streams["Audio"])
    rotation_deg = 0
    if video:   # the display matrix of the chosen video stream: its lines up to the next stream
        r = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", video[2]) or re.search(r"rotate\s*:\s*(-?\d+)", video[2])
        if r:
            rotation_deg = int(round(float(r[1]))) % 360
    return MediaInfo(
        duration_s=duration_s,
        has_video=video is not None,
        has_audio=audio is not None,
        rotation_deg=rotation_deg,
        video_stream=str(video[0]) if video else "V:0",
        audio_stream=str(audio[0]) if audio else "a:0",
        num_video_streams=len(streams["Video"]),
        num_audio_streams=len(streams["Audio"]),
    )


def _pick_stream(found: list[tuple[int, bool, str]]) -> tuple[int, bool, str] | None:
    return next((s for s in found if s[1]), found[0] if found else None)


def frame_list_graph(path: str | os.PathLike, info: MediaInfo, *, decode: bool) -> "ffmpeg.nodes.OutputStream":
    """Pass 1 (see _list_video_frames): the chosen video and audio streams to framecrc on stdout."""
    source = ffmpeg.input(local_input(path))
    video = {"c:v": "copy"} if decode is False else {"fps_mode": "passthrough", "enc_time_base:v": "filter"}
    return ffmpeg.output(source[f"{info.video_stream}?"], source[f"{info.audio_stream}?"], "-", f="framecrc",
                         sn=None, dn=None, **{"c:a": "copy"}, **video)


def _list_video_frames(
    path: str | os.PathLike, info: MediaInfo, timeout_s: float, *, decode: bool
) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """List the chosen video stream's frames: (pts_s (N,), duration_s (N,), has_video, has_audio).

    framecrc writes one line per packet or frame to stdout. With `decode=False` the streams are only
    copied (fast; packets the demuxer marks as discarded are left out; NaN where a packet has no pts).
    With `decode=True` every frame is decoded once, in output order: `-fps_mode passthrough` keeps each
    frame exactly once and `-enc_time_base filter` keeps the stream's time base, so VFR pts stay exact.
    """
    out = _ffmpeg(frame_list_graph(path, info, decode=decode), path, timeout_s)
    media_type: dict[int, str] = {}
    time_base: dict[int, Fraction] = {}
    pts: list[float] = []
    dur: list[int] = []
    for line in out.decode("ascii", errors="replace").splitlines():
        if line.startswith("#media_type"):
            idx, kind = line[len("#media_type"):].split(":")
            media_type[int(idx)] = kind.strip()
        elif line.startswith("#tb"):
            idx, tb = line[len("#tb"):].split(":")
            time_base[int(idx)] = Fraction(tb.strip())
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            if media_type.get(int(fields[0])) != "video":
                continue
            flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), 0)
            if flags & 0x4:   # AV_PKT_FLAG_DISCARD: dropped by the decoder (edit lists)
                continue
            pts.append(float(fields[2]) if fields[2].lstrip("-").isdigit() else float("nan"))
            dur.append(int(fields[3]))
    video_idx = [i for i, k in media_type.items() if k == "video"]
    has_audio = "audio" in media_type.values()
    if not video_idx:
        return np.zeros(0), np.zeros(0), False, has_audio
    tb = float(time_base[video_idx[0]])
    return np.asarray(pts, dtype=np.float64) * tb, np.asarray(dur, dtype=np.float64) * tb, True, has_audio


def frame_select_graph(path: str | os.PathLike, stream: str, terms: list[str], *,
                       max_side_px: int | None) -> "ffmpeg.nodes.OutputStream":
    """Pass 2: the frames any of the select `terms` (ffmpeg expressions) match, as PPM images on stdout.
    ffmpeg-python escapes the expressions' commas for the filter graph."""
    frames = ffmpeg.input(local_input(path))[stream].filter("select", "+".join(terms))
    if max_side_px:   # fit the longer side, keep the aspect ratio; never upscale
        m = int(max_side_px)
        frames = frames.filter("scale", w=f"if(gte(iw,ih),min(iw,{m}),-1)", h=f"if(gte(iw,ih),-1,min(ih,{m}))",
                               flags="area")
    return ffmpeg.output(frames, "-", an=None, sn=None, dn=None, fps_mode="passthrough",
                         **{"frames:v": len(terms), "c:v": "ppm"}, pix_fmt="rgb24", f="image2pipe")


def _read_frames(
    path: str | os.PathLike,
    stream: str,
    indices: np.ndarray,
    pts_s: np.ndarray,
    *,
    by_time: bool,
    max_side_px: int | None,
    timeout_s: float,
) -> list[np.ndarray]:
    """Decode the frames at `indices` (sorted, unique; into `pts_s`) as (H, W, 3) uint8 RGB arrays.

    by_time: select frames whose pts is within a quarter of the smallest frame gap of `pts_s[i]`;
    otherwise select by output frame number i (exact when `pts_s` lists decoded frames in order).
    """
    if by_time:
        gaps = np.diff(np.sort(pts_s))
        tol_s = min(0.25 * float(gaps.min()), 1e-3) if len(gaps) else 1e-3
        terms = [f"lt(abs(t-{pts_s[i]:.9f}),{tol_s:.9f})" for i in indices]
    else:
        terms = [f"eq(n,{int(i)})" for i in indices]
    out = _ffmpeg(frame_select_graph(path, stream, terms, max_side_px=max_side_px), path, timeout_s)
    return _split_ppm(out, path)


def _split_ppm(data: bytes, path: str | os.PathLike) -> list[np.ndarray]:
    """Parse concatenated binary PPM (P6, maxval 255) images."""
    images, pos = [], 0
    header = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+(\d+)\s")
    while pos < len(data):
        m = header.match(data, pos)
        if not m or int(m[3]) != 255:
            raise DecodeError(path, "bad-output", f"unexpected bytes in ffmpeg's PPM output at offset {pos}")
        w, h = int(m[1]), int(m[2])
        start, end = m.end(), m.end() + w * h * 3
        if end > len(data):
            raise DecodeError(path, "bad-output", f"truncated PPM frame ({w}x{h}) in ffmpeg's output")
        images.append(np.frombuffer(data, np.uint8, w * h * 3, start).reshape(h, w, 3))
        pos = end
    return images


def audio_graph(path: str | os.PathLike, stream: str, sample_rate_hz: int, max_audio_s: float) -> "ffmpeg.nodes.OutputStream":
    """Pass 3: the audio `stream`, resampled, cut at `max_audio_s`, every channel kept, as float WAV on stdout."""
    return ffmpeg.output(ffmpeg.input(local_input(path))[stream], "-", vn=None, sn=None, dn=None, ar=sample_rate_hz,
                         t=f"{max_audio_s:g}", f="wav", **{"c:a": "pcm_f32le"})


def _read_audio(path: str | os.PathLike, stream: str, sample_rate_hz: int, max_audio_s: float,
                timeout_s: float) -> np.ndarray:
    """Pass 3: the chosen audio stream, resampled, at most `max_audio_s` long, channels averaged. (S,) float32.

    The channels come back as they are (a WAV stream, whose header gives their count) and are averaged
    here, as NeMo's 'average' channel selector does: ffmpeg's own `-ac 1` mixes each channel in at 0.707
    without normalising, so a loud stereo clip would come out 1.41x louder and clipped.
    """
    out = _ffmpeg(audio_graph(path, stream, sample_rate_hz, max_audio_s), path, timeout_s)
    samples, num_channels = _split_wav(out, path)
    audio = samples.reshape(-1, num_channels).mean(axis=1)   # (S, channels) -> (S,)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _split_wav(data: bytes, path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Samples (interleaved float32) and channel count of the WAV stream ffmpeg wrote to a pipe.

    A piped WAV cannot seek back to fill in its sizes, so the data chunk runs to the end of the stream.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise DecodeError(path, "bad-output", "ffmpeg's audio output is not a WAV stream")
    pos, num_channels = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk_id == b"fmt ":
            num_channels = int.from_bytes(data[pos + 10:pos + 12], "little")
        elif chunk_id == b"data":
            if not num_channels:
                break
            body = data[pos + 8:]
            usable = len(body) // (4 * num_channels) * 4 * num_channels   # whole sample frames only
            return np.frombuffer(body[:usable], dtype="<f4"), num_channels
        pos += 8 + size + (size & 1)
    raise DecodeError(path, "bad-output", "ffmpeg's WAV output has no fmt or data chunk")
