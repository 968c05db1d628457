"""Decode a source once, as it plays, and slide windows over it in memory: whisper's `transcribe` shape.

In: a file, a webcam (`0` -> /dev/video0, or a /dev/video* path, read with v4l2) or anything else ffmpeg reads (a URL,
a named pipe). ONE ffmpeg process writes frames at a fixed rate (PPM on stdout) and the chosen audio stream at the
spec's rate (float WAV on a second pipe). Out: `DecodedWindow`s, each sampled like a clip of that length
(decode.py's FRAME_SAMPLING over the window's frames), holding only the Tv frames and the audio it needs; frames
no window will pick are dropped as they arrive, so memory does not grow with the source's length.
Face crop, image processor, encoders and model are left to others (`window_item`, the featurizer, predict).
"""

from __future__ import annotations

import collections
import os
import re
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mmfer.core.media import ffmpeg_exe, local_input
from mmfer.extract.decode import DecodeError, _pick_frames, probe_media
from mmfer.extract.facecrop import crop_faces
from mmfer.extract.worker import DecodedItem
from mmfer.extract.encoders.siglip import preprocess_frames

DEFAULT_FPS = 25.0    # frame rate of a source that names none (a webcam, a pipe)
MAX_FPS = 30.0        # faster sources are resampled to this: >= 2 frames per sampled frame at Tv=16 over 1 s
WINDOW_EPS_S = 1e-3   # a window may end this much past the last frame (container rounding), as predict's window_starts
STDERR_LINES = 40     # ffmpeg's last stderr lines kept for an error message


@dataclass(frozen=True)
class StreamSource:
    """How ffmpeg opens a source: its input arguments, and what a probe said of it (None: not probed)."""

    name: str
    input_args: tuple[str, ...]
    fps: float
    has_audio: bool
    video_map: str = "0:V:0"
    audio_map: str = "0:a:0"
    is_file: bool = False
    duration_s: float | None = None   # a file's, from its banner


@dataclass
class DecodedWindow:
    """frames: (Tv, H, W, 3) uint8 RGB, sampled like a clip of [start_s, end_s); timestamps_s: (Tv,) float32 from
    the window's start; audio: (S,) float32 mono at the asked rate, or None; ready_s: time.perf_counter() when its
    last frame and audio had arrived (for latency)."""

    start_s: float
    end_s: float
    frames: np.ndarray
    timestamps_s: np.ndarray
    audio: np.ndarray | None
    ready_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def stream_source(source: str, *, timeout_s: float) -> StreamSource:
    """Resolve `source` (see the module docstring). A regular file or a URL is probed once for its streams and
    frame rate; a device is video only; a named pipe or other special file is read as it comes (audio expected).

    Raises:
        DecodeError: a file is missing, empty or unreadable, or has no video stream.
    """
    if re.fullmatch(r"\d+", source):
        source = f"/dev/video{source}"
    if source.startswith("/dev/video"):
        return StreamSource(source, ("-f", "v4l2", "-i", source), DEFAULT_FPS, has_audio=False)
    path = Path(source)
    is_url = "://" in source
    if not is_url and path.exists() and not stat.S_ISREG(path.stat().st_mode):   # a FIFO: probing would eat it
        return StreamSource(source, ("-i", source), DEFAULT_FPS, has_audio=True, audio_map="0:a:0?")
    info = probe_media(path, timeout_s=timeout_s) if not is_url else None
    if info is not None and not info.has_video:
        raise DecodeError(source, "no-video-stream", "the file has no video stream (audio-only?)")
    fps = _banner_fps(path, timeout_s) if info is not None else DEFAULT_FPS
    return StreamSource(source, ("-i", local_input(path) if not is_url else source), fps,
                        has_audio=info.has_audio if info is not None else True,
                        video_map=f"0:{info.video_stream}" if info is not None else "0:V:0",
                        audio_map=f"0:{info.audio_stream}" if info is not None else "0:a:0?",
                        is_file=info is not None, duration_s=info.duration_s if info is not None else None)


def _banner_fps(path: Path, timeout_s: float) -> float:
    """The video stream's frame rate from ffmpeg's banner (`25 fps`), capped at MAX_FPS; DEFAULT_FPS if none."""
    from mmfer.core.media import FfmpegError, run_ffmpeg

    try:
        run_ffmpeg(["-loglevel", "info", "-i", local_input(path)], path=path, timeout_s=timeout_s)
        banner = ""
    except FfmpegError as err:
        banner = err.stderr_tail
    found = re.search(r"Video: .*?, (\d+(?:\.\d+)?) fps", banner)
    return min(float(found[1]), MAX_FPS) if found else DEFAULT_FPS


class MediaStream:
    """One ffmpeg process: frames at `fps` (CFR: frame k is at k / fps s) and mono float audio, read as they come.

    Use as a context manager: leaving it (Ctrl-C included) kills ffmpeg. Audio is read by a thread into a buffer
    that `audio(start, stop)` reads and `drop_audio(before)` trims.
    """

    def __init__(self, source: StreamSource, *, sample_rate_hz: int) -> None:
        self.source, self.sample_rate_hz = source, sample_rate_hz
        audio_read, audio_write = os.pipe() if source.has_audio else (None, None)
        video_out = ["-map", source.video_map, "-vf", f"fps={source.fps:g}", "-an", "-sn", "-dn",
                     "-c:v", "ppm", "-pix_fmt", "rgb24", "-f", "image2pipe", "pipe:1"]
        audio_out = (["-map", source.audio_map, "-vn", "-sn", "-dn", "-ar", str(sample_rate_hz), "-c:a", "pcm_f32le",
                      "-f", "wav", f"pipe:{audio_write}"] if source.has_audio else [])
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *source.input_args, *video_out, *audio_out]
        try:   # its own session: a terminal's Ctrl-C reaches Python only, which then stops ffmpeg itself
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         pass_fds=(audio_write,) if source.has_audio else (), start_new_session=True)
        except OSError as err:
            raise DecodeError(source.name, "not-found", f"cannot start {cmd[0]!r}: {err}") from err
        finally:
            if audio_write is not None:
                os.close(audio_write)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._samples = np.zeros(0, np.float32)   # audio from sample `_first` on
        self._first, self._audio_done, self._cond = 0, not source.has_audio, threading.Condition()
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True)]
        if audio_read is not None:
            self._threads.append(threading.Thread(target=self._read_audio, args=(audio_read,), daemon=True))
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> "MediaStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def frames(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB frames in order, until the source ends.

        Raises:
            DecodeError: ffmpeg failed (its stderr in the message) or wrote something else than PPM frames.
        """
        out, header = self.proc.stdout, re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")
        while True:
            head = out.read(15)   # "P6\n<w> <h>\n255\n" is 15+ bytes for any frame of 10 px or more
            if not head:
                break
            while not header.match(head) and len(head) < 64:
                more = out.read(1)
                if not more:
                    break
                head += more
            m = header.match(head)
            if not m:
                raise DecodeError(self.source.name, "bad-output", "unexpected bytes in ffmpeg's frame stream")
            size = int(m[1]) * int(m[2]) * 3
            body = head[m.end():] + out.read(size - (len(head) - m.end()))
            if len(body) != size:
                break   # a frame cut short: the source ended (or ffmpeg died, said below)
            yield np.frombuffer(body, np.uint8).reshape(int(m[2]), int(m[1]), 3)
        if self.proc.wait() != 0:
            raise DecodeError(self.source.name, "ffmpeg-error",
                              f"ffmpeg exited with code {self.proc.returncode}\nffmpeg stderr (last lines):\n"
                              + "\n".join(self.stderr_tail))

    def audio(self, start: int, stop: int) -> np.ndarray | None:
        """Samples [start, stop) (fewer where the audio ends first), waiting for them to arrive; None without audio."""
        if not self.source.has_audio:
            return None
        with self._cond:
            self._cond.wait_for(lambda: self._audio_done or self._first + len(self._samples) >= stop)
            return self._samples[max(start - self._first, 0): max(stop - self._first, 0)].copy()

    def has_audio_until(self, stop: int) -> bool:
        """Whether samples up to `stop` have arrived (or the audio has ended, or there is none)."""
        with self._cond:
            return self._audio_done or self._first + len(self._samples) >= stop

    def drop_audio(self, before: int) -> None:
        """Forget the samples before `before` (no later window reads them)."""
        with self._cond:
            cut = min(max(before - self._first, 0), len(self._samples))
            self._samples, self._first = self._samples[cut:], self._first + cut

    def _read_audio(self, fd: int) -> None:
        """A piped WAV: its header, then interleaved float32 samples until the end; channels averaged (as
        decode.py's `_read_audio`, NeMo's 'average'), clipped to [-1, 1]."""
        with os.fdopen(fd, "rb") as pipe:
            num_channels, data = _wav_header(pipe), b""
            while num_channels:
                chunk = pipe.read(4 * num_channels * 1600)
                if not chunk:
                    break
                data += chunk
                usable = len(data) // (4 * num_channels) * 4 * num_channels
                wave = np.frombuffer(data[:usable], "<f4").reshape(-1, num_channels).mean(axis=1)
                data = data[usable:]
                with self._cond:
                    self._samples = np.concatenate([self._samples, np.clip(wave, -1.0, 1.0).astype(np.float32)])
                    self._cond.notify_all()
        with self._cond:
            self._audio_done = True
            self._cond.notify_all()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr_tail.append(line.decode("utf-8", errors="replace").rstrip())


def _wav_header(pipe) -> int:
    """Read a WAV stream's chunks up to its data chunk; returns the channel count (0: no usable stream)."""
    riff = pipe.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return 0
    num_channels = 0
    while True:
        head = pipe.read(8)
        if len(head) < 8:
            return 0
        chunk_id, size = head[:4], int.from_bytes(head[4:], "little")
        if chunk_id == b"data":
            return num_channels
        body = pipe.read(size + (size & 1))
        if chunk_id == b"fmt ":
            num_channels = int.from_bytes(body[2:4], "little")


def window_frames(num_window_frames: int, num_frames: int, fps: float) -> np.ndarray:
    """Which of a window's frames (0 .. num_window_frames-1, at `fps`) a clip of that length samples: decode.py's
    `_pick_frames` rule on the window's own timestamps. (Tv,) int."""
    pts_s = np.arange(num_window_frames) / fps
    return _pick_frames(pts_s, np.full(num_window_frames, 1 / fps), num_frames)[1]


def stream_windows(stream: MediaStream, *, window_s: float, hop_s: float, num_frames: int,
                   max_audio_s: float) -> Iterator[DecodedWindow]:
    """Windows [j * hop_s, j * hop_s + window_s) as their last frame and audio arrive; at the end, one window of
    the whole source when it was shorter than a window (as predict's `window_starts`).

    Holds only the frames some window still to come samples (at most Tv x ceil(window_s / hop_s), plus window 0's
    frames until it is full) and the audio from the oldest open window on. Frames keep being read while a full
    window waits for its audio, so ffmpeg never blocks on a full frame pipe while its audio is still to come.
    """
    fps, rate = stream.source.fps, stream.sample_rate_hz
    per_window = int(np.ceil(window_s * fps - 1e-6))   # frames k with k / fps in [start, start + window)
    picks = set(window_frames(per_window, num_frames, fps).tolist())
    kept: dict[int, np.ndarray] = {}   # frame index -> frame, only those a window samples
    waiting: collections.deque[tuple[DecodedWindow, int, int]] = collections.deque()   # full, audio to come
    next_window, count = 0, 0

    def first_frame(j: int) -> int:
        return int(np.ceil(j * hop_s * fps - 1e-6))

    def full(start_s: float, end_s: float, picked: np.ndarray, first: int) -> None:
        frames = np.stack([kept[first + p] for p in picked])
        audio = (round(start_s * rate), round(min(end_s, start_s + max_audio_s) * rate))
        waiting.append((DecodedWindow(start_s, round(end_s, 6), frames, (picked / fps).astype(np.float32), None, 0.0),
                        *audio))

    def ready(at_end: bool) -> Iterator[DecodedWindow]:
        while waiting and (at_end or stream.has_audio_until(waiting[0][2])):
            window, start, stop = waiting.popleft()
            window.audio, window.ready_s = stream.audio(start, stop), time.perf_counter()
            yield window
        stream.drop_audio(waiting[0][1] if waiting else round(next_window * hop_s * rate))

    for k, frame in enumerate(stream.frames()):
        count = k + 1
        # the windows that hold frame k: j * hop <= k / fps < j * hop + window
        lowest = max(next_window, int(np.floor((k / fps - window_s) / hop_s)))
        highest = int(np.floor(k / fps / hop_s + 1e-9))
        if (next_window == 0 and k < per_window) or any(k - first_frame(j) in picks for j in range(lowest, highest + 1)):
            kept[k] = frame
        while first_frame(next_window) + per_window - 1 <= k:   # the window's last frame is here
            first = first_frame(next_window)
            full(round(next_window * hop_s, 6), next_window * hop_s + window_s,
                 window_frames(per_window, num_frames, fps), first)
            next_window += 1
            for index in [i for i in kept if i < first_frame(next_window)]:
                del kept[index]
        yield from ready(at_end=False)
    if next_window == 0 and count:   # shorter than a window: the whole source, sampled as a clip of its length
        full(0.0, count / fps, window_frames(count, num_frames, fps), 0)
    yield from ready(at_end=True)


def window_item(window: DecodedWindow, *, clip_id: str, path: str, processor, face_crop: str) -> DecodedItem:
    """A window as extract's `decode_job` would hand over a clip of it: face crop, then the image processor."""
    crops = crop_faces(window.frames, face_crop)
    item = DecodedItem(clip_id, path, "")
    item.pixel_inputs = preprocess_frames(processor, crops.crops)
    item.timestamps_s, item.boxes, item.audio = window.timestamps_s, crops.boxes, window.audio
    item.duration_s, item.found_face = window.duration_s, crops.found_face
    return item
