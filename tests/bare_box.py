"""The environment of a bare GPU box for a child process: `import` of NeMo, ffmpeg-python, imageio-ffmpeg or OpenCV
raises (a sitecustomize on PYTHONPATH), and PATH holds no ffmpeg binary (an empty folder)."""

from __future__ import annotations

import os
from pathlib import Path

BLOCKED_MODULES = ("nemo", "ffmpeg", "imageio_ffmpeg", "cv2")

SITECUSTOMIZE = f'''
import os
import sys

ALSO = os.environ.get("MMFER_TEST_ALSO_BLOCKED", "")

class BareBox:
    """Refuses the modules a bare GPU box lacks, as a missing package would."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED_MODULES!r} + tuple(filter(None, ALSO.split(","))):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a bare GPU box)", name=name)
        return None

sys.meta_path.insert(0, BareBox())
'''


def bare_box_env(folder: Path, *, also_blocked: tuple[str, ...] = ()) -> dict[str, str]:
    """os.environ with the blocking sitecustomize first on PYTHONPATH and an empty PATH folder; files go in folder.
    `also_blocked`: more modules the box lacks (MMFER_TEST_ALSO_BLOCKED)."""
    site, empty_bin = folder / "bare-site", folder / "bare-bin"
    site.mkdir(parents=True, exist_ok=True)
    empty_bin.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": pythonpath, "PATH": str(empty_bin), "HF_HUB_OFFLINE": "1",
            "MMFER_TEST_ALSO_BLOCKED": ",".join(also_blocked)}
