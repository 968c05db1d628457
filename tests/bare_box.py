"""Child-process environments that lack some installed modules, as a box without those packages would.

A sitecustomize on PYTHONPATH swaps Python's path finder for one that does not find the blocked top-level modules:
`import` raises ModuleNotFoundError and `importlib.util.find_spec` returns None, as for a package never installed
(transformers, for one, asks find_spec whether torch is there). `bare_box_env`: a bare GPU box (torch +
transformers, no NeMo, no ffmpeg: PATH holds an empty folder). `onnx_box_env`: a deployment box (onnxruntime and
ffmpeg, no torch).
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCKED_MODULES = ("nemo", "ffmpeg", "imageio_ffmpeg", "cv2")

SITECUSTOMIZE = '''
import os
import sys
from importlib.machinery import PathFinder

BLOCKED = set(filter(None, os.environ.get("MMFER_TEST_BLOCKED", "").split(",")))


class NotInstalled(PathFinder):
    """Python's path finder, blind to the blocked top-level modules."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [NotInstalled if finder is PathFinder else finder for finder in sys.meta_path]
'''


def blocked_env(folder: Path, blocked: tuple[str, ...], *, ffmpeg: bool) -> dict[str, str]:
    """os.environ with the blocking sitecustomize first on PYTHONPATH; `ffmpeg` False: PATH is an empty folder
    (no ffmpeg binary). Files go in `folder`."""
    site = folder / "blocking-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
           "HF_HUB_OFFLINE": "1", "MMFER_TEST_BLOCKED": ",".join(blocked)}
    if not ffmpeg:
        empty_bin = folder / "bare-bin"
        empty_bin.mkdir(exist_ok=True)
        env["PATH"] = str(empty_bin)
    return env


def bare_box_env(folder: Path, *, also_blocked: tuple[str, ...] = ()) -> dict[str, str]:
    """A bare GPU box: no NeMo, ffmpeg-python, imageio-ffmpeg or OpenCV, no ffmpeg binary; `also_blocked`: more
    modules the box lacks."""
    return blocked_env(folder, BLOCKED_MODULES + also_blocked, ffmpeg=False)


def onnx_box_env(folder: Path) -> dict[str, str]:
    """A deployment box for an `mmfer export --onnx-encoders` model: no torch (so no NeMo either); ffmpeg kept."""
    return blocked_env(folder, ("torch",), ffmpeg=True)
