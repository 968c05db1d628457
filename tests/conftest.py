"""Shared fixtures: one tiny-encoder folder, one small demo dataset and its extracted cache per session.

Nothing here touches a model hub: HF_HUB_OFFLINE is set before anything imports transformers.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # read when transformers is imported, so set it first

import pytest
from extract_helpers import extract_config

SMALL_DEMO = {"num_actors": 4, "clips_per_emotion": 1, "size_px": 96, "duration_s": 1.5}


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
