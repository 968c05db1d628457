"""Shared fixtures: one tiny-encoder folder, one small demo dataset and its extracted cache per session.

Nothing here touches a model hub: HF_HUB_OFFLINE is set before anything imports transformers.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # read when transformers is imported, so set it first
# One torch thread per test process and per child it starts, read when torch is imported: the suite runs in two
# pytest-xdist workers on two cores (pyproject addopts), and two processes of a thread per core each make OpenMP
# threads spin on each other (about 10x the CPU time on the tiny runs). Extract encodes with one thread anyway.
os.environ.setdefault("OMP_NUM_THREADS", "1")
TEST_THREADS = int(os.environ["OMP_NUM_THREADS"])

import pytest
from extract_helpers import extract_config

SMALL_DEMO = {"num_actors": 4, "clips_per_emotion": 1, "size_px": 96, "duration_s": 1.5}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Each test starts on TEST_THREADS torch threads: a training run in the test process sets torch's thread count
    for the whole process (train/dataset.py apply_thread_budget), and it would stay for the tests after it."""
    import torch

    torch.set_num_threads(TEST_THREADS)
    yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from mmfer.extract.random_encoders import ensure_tiny_encoders

    models_dir = tmp_path_factory.mktemp("models")
    ensure_tiny_encoders(models_dir)
    return models_dir


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """4 actors x 8 emotions x 1 clip of the synthetic demo: 32 real mp4 files."""
    from mmfer.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo")
    make_demo(root, seed=0, overwrite=False, **SMALL_DEMO)
    return root


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, demo_root, tiny_models):
    """The demo extracted with the tiny encoders (read-only for tests: copy it before changing it)."""
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    out = tmp_path_factory.mktemp("cache") / "cache"
    summary = extract_all(extract_config(demo_root, out, tiny_models), scan_ravdess(demo_root))
    assert summary.num_done == 32 and summary.num_failed == 0, summary.format()
    return out


# The cfg fields that choose the encoders: two extract runs that agree on these (and on the files' sizes and
# times) load the same weights, so a test process loads each tiny pair once.
_ENCODER_FIELDS = ("preset", "models_dir", "visual_encoder", "visual_revision", "audio_encoder", "dtype")


def _files_stamp(name) -> tuple:
    """(relative path, size, mtime_ns) of every file at `name` (a folder, a file), () when it is not on disk."""
    from pathlib import Path

    path = Path(str(name)).expanduser()
    if not name or not path.exists():
        return ()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@pytest.fixture(scope="session", autouse=True)
def encoders_load_once():
    """`mmfer.extract.encoders.load_encoders`, memoised for the session: keyed by the encoder settings, the device
    and the encoder files on disk (a changed or moved file loads afresh). The encoders are frozen and extract only
    runs them, so sharing them between runs changes no feature; loading is still the real code path once."""
    import sys

    from mmfer.extract import encoders as module

    original = module.load_encoders
    loaded = {}

    def load_encoders(cfg, device, *, processor=None):
        settings = tuple(getattr(cfg, name, None) for name in _ENCODER_FIELDS)
        places = (cfg.models_dir if cfg.preset == "tiny" else None, cfg.visual_encoder, cfg.audio_encoder)
        key = (settings, str(device), tuple(_files_stamp(place) for place in places))
        if key not in loaded:
            loaded[key] = original(cfg, device, processor=processor)
        return loaded[key]

    holders = [m for name, m in list(sys.modules.items())
               if name.startswith("mmfer") and getattr(m, "load_encoders", None) is original]
    with pytest.MonkeyPatch.context() as patch:
        for holder in holders:   # the module itself and those that imported the name from it
            patch.setattr(holder, "load_encoders", load_encoders)
        yield loaded
