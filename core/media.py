"""Find and run the ffmpeg binary, safely.

The system ffmpeg is used when it is on PATH and takes the options decode.py passes (probed once per process:
`-fps_mode` needs 5.1, `-enc_time_base:v filter` 6.1), else the one shipped in the `imageio-ffmpeg` wheel, so `pip install` alone is enough (ffprobe is never needed). Every call has a timeout, and stdout and
stderr are drained together by `communicate`, because ffmpeg blocks forever once a pipe it writes to
is full. Callers pass argument lists: `extract/decode.py` compiles them from ffmpeg-python stream graphs
(`.compile()`), `data/demo.py` writes them out; ffmpeg-python's own `run()` has no timeout, so it is never
used to run anything.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from mmfer.core.errors import MmferError

log = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 2000   # enough for ffmpeg's real complaint, not its whole banner
VERSION_CHECK_TIMEOUT_S = 10.0   # `ffmpeg -version` and the option probes finish at once; this bounds a broken binary
# Video containers a folder walk picks up (predict's inputs, DFEW/MAFW clip folders): the ones extract's ffmpeg
# decodes that datasets ship, CREMA-D's .flv included. A file given by name is tried whatever its suffix.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp", ".ogv")


class FfmpegError(MmferError, RuntimeError):
    """ffmpeg failed, timed out or could not be started.

    Attributes:
        path: the media file the call was about.
        reason: a short machine-readable cause: "timeout", "ffmpeg-error" or "not-found".
        stderr_tail: the end of ffmpeg's stderr, for the message.
    """

    def __init__(self, path: str | os.PathLike, reason: str, detail: str, stderr_tail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.stderr_tail = stderr_tail
        message = f"{self.path}: {reason}: {detail}"
        if stderr_tail:
            message += f"\nffmpeg stderr (last lines):\n{stderr_tail}"
        super().__init__(message)


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $MMFER_FFMPEG (taken as is), else ffmpeg on PATH when it takes every option
    this pipeline passes (REQUIRED_OPTIONS, probed once per process), else the imageio-ffmpeg one (with one
    log line naming what the PATH one lacks)."""
    configured = os.environ.get("MMFER_FFMPEG")
    if configured:
        return configured
    on_path = shutil.which("ffmpeg")
    if on_path:
        lacking = missing_options(on_path)
        if not lacking:
            return on_path
        import imageio_ffmpeg

        bundled = imageio_ffmpeg.get_ffmpeg_exe()
        version = ffmpeg_version(on_path)
        log.warning("%s (ffmpeg %s) does not take %s, which this pipeline passes; using the bundled %s",
                    on_path, ".".join(map(str, version)) if version else "of unknown version",
                    " or ".join(f"`{' '.join(option)}` (ffmpeg {since})" for option, since in lacking), bundled)
        return bundled
    import imageio_ffmpeg  # a dependency; imported here so a system ffmpeg needs nothing else

    return imageio_ffmpeg.get_ffmpeg_exe()


# The options extract/decode.py passes that older ffmpeg releases refuse, with the release that brought them.
REQUIRED_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-fps_mode", "passthrough"), "5.1"),
    (("-enc_time_base:v", "filter"), "6.1"),   # the exact-frame fallback (decode.py, frame_list_graph)
)
PROBE_INPUT = ("-f", "lavfi", "-i", "color=c=black:s=16x16:r=25:d=0.08")   # 2 frames, made by ffmpeg itself


def missing_options(exe: str) -> list[tuple[tuple[str, ...], str]]:
    """The REQUIRED_OPTIONS `exe` refuses (each tried once on a 2-frame lavfi input), with the release that
    brought each: a version number alone says nothing of distribution patches or git builds."""
    lacking = []
    for option, since in REQUIRED_OPTIONS:
        cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", *PROBE_INPUT, *option, "-f", "framecrc", "-"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=VERSION_CHECK_TIMEOUT_S)
            refused = proc.returncode != 0
        except (OSError, subprocess.TimeoutExpired):
            refused = True
        if refused:
            lacking.append((option, since))
    return lacking


def ffmpeg_version(exe: str) -> tuple[int, ...] | None:
    """(major, minor) from `exe -version` ("ffmpeg version 4.4.2-0ubuntu0.22.04.1", "n6.1"), or None when
    the first line has no release number (git builds) or the binary does not answer."""
    try:
        proc = subprocess.run([exe, "-version"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=VERSION_CHECK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = proc.stdout.decode("utf-8", errors="replace").partition("\n")[0]
    m = re.match(r"ffmpeg version n?(\d+)\.(\d+)", first)
    return (int(m[1]), int(m[2])) if m else None


def run_ffmpeg(args: list[str], *, path: str | os.PathLike, timeout_s: float, input_bytes: bytes | None = None) -> bytes:
    """Run ffmpeg with `args` (without the program name) and return its stdout.

    Raises:
        FfmpegError: on a non-zero exit (with stderr), when `timeout_s` passes (the process group is
            killed), or when the binary cannot be started.
    """
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,   # so a timeout can kill ffmpeg and anything it started
        )
    except OSError as err:
        raise FfmpegError(path, "not-found", f"cannot start {cmd[0]!r}: {err}") from err
    try:
        stdout, stderr = proc.communicate(input=input_bytes, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _, stderr = proc.communicate()
        raise FfmpegError(path, "timeout", f"ffmpeg took longer than {timeout_s:g} s", _tail(stderr)) from None
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise FfmpegError(path, "ffmpeg-error", f"ffmpeg exited with code {proc.returncode}", _tail(stderr))
    return stdout


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _tail(stderr: bytes | None) -> str:
    text = (stderr or b"").decode("utf-8", errors="replace").strip()
    return text[-STDERR_TAIL_CHARS:]


def local_input(path: str | os.PathLike) -> str:
    """`path` as an ffmpeg input that is always a local file: `file:` in front, so a name with a colon
    (`take:1.mp4`, `C:clip.mp4`) is never read as a protocol (`take:`) or a URL."""
    return "file:" + os.fspath(path)


def file_signature(path: str | os.PathLike) -> str:
    """`size:mtime_ns` of a source file: cheap, and changes whenever the file is replaced or edited."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"
LFS_POINTER_MAX_BYTES = 1024   # a pointer is ~130 bytes of text; no media file is this small


def is_lfs_pointer(path: str | os.PathLike) -> bool:
    """Whether `path` is a git-lfs pointer file (a clone made without `git lfs pull`), not the media it names."""
    try:
        if Path(path).stat().st_size > LFS_POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False
