"""Find and run the ffmpeg binary, safely.

The system ffmpeg is used when it is on PATH, else the one shipped in the `imageio-ffmpeg` wheel, so
`pip install` alone is enough (ffprobe is never needed). Every call has a timeout, and stdout and
stderr are drained together by `communicate`, because ffmpeg blocks forever once a pipe it writes to
is full. Callers (`data/demo.py`, `extract/decode.py`) pass plain argument lists, kept in view next to
the output they parse; ffmpeg-python's `run()` has no timeout, so it is not on this path.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
from pathlib import Path

from mmfer.pipeline.errors import MmferError

STDERR_TAIL_CHARS = 2000   # enough for ffmpeg's real complaint, not its whole banner


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
    """Path of the ffmpeg binary: $MMFER_FFMPEG, else ffmpeg on PATH, else the imageio-ffmpeg one."""
    configured = os.environ.get("MMFER_FFMPEG")
    if configured:
        return configured
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg  # a dependency; imported here so a system ffmpeg needs nothing else

    return imageio_ffmpeg.get_ffmpeg_exe()


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


def file_signature(path: str | os.PathLike) -> str:
    """`size:mtime_ns` of a source file: cheap, and changes whenever the file is replaced or edited."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"
