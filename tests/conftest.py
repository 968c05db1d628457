"""Shared fixtures: one tiny-encoder folder, one small demo dataset and its extracted cache per test run (shared by
the pytest-xdist workers).

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

# The fast tier (`-m "not slow"`) is the edit-test loop, about a minute and a half on two cores: it never extracts
# the 32-clip demo (~20 s of the tiny encoders, shared by every test that asks) nor trains on it, so a test that
# asks for `demo_cache` (a run trained on it, predict's and evaluate's parity) is slow wherever it is written.
# Other tests over a few seconds carry their own `slow` mark.
SLOW_FIXTURES = ("demo_cache",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in item.fixturenames for name in SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Each test starts on TEST_THREADS torch threads: a training run in the test process sets torch's thread count
    for the whole process (train/dataset.py apply_thread_budget), and it would stay for the tests after it."""
    import torch

    torch.set_num_threads(TEST_THREADS)
    yield


def built_once(tmp_path_factory, name: str, build):
    """A folder `name` that `build(folder)` fills, made once per test run: under pytest-xdist the first worker to
    ask builds it under a lock in the run's shared temporary folder and the others wait for it and use it (these
    folders are read-only for tests); without xdist, a folder of this process."""
    import fcntl

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent   # .../pytest-N, above each worker's popen-gwK
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            import shutil

            shutil.rmtree(folder, ignore_errors=True)   # what a worker whose build failed left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from mmfer.extract.random_encoders import ensure_tiny_encoders

    return built_once(tmp_path_factory, "models", ensure_tiny_encoders)


@pytest.fixture(scope="session")
def tiny_nemo(tiny_models):
    """The tiny audio stand-in as a .nemo (NeMo's saver, the tiny folder's weights); only `nemo`-marked tests."""
    import importlib.util

    from mmfer.extract.random_encoders import ensure_nemo_audio

    if importlib.util.find_spec("nemo") is None:   # a failure that says what to do, not a skip
        pytest.fail("this test needs NeMo: pip install -c requirements.lock -e '.[test,nemo]', "
                    "or leave the NeMo tests out with -m 'not nemo'", pytrace=False)

    return ensure_nemo_audio(tiny_models, size="tiny")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """4 actors x 8 emotions x 1 clip of the synthetic demo: 32 real mp4 files."""
    from mmfer.data.demo import make_demo

    return built_once(tmp_path_factory, "demo", lambda root: make_demo(root, seed=0, overwrite=False, **SMALL_DEMO))


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, demo_root, tiny_models):
    """The demo extracted with the tiny encoders (read-only for tests: copy it before changing it)."""
    from mmfer.data.ravdess import scan_ravdess
    from mmfer.extract.run import extract_all

    def extract(folder):
        summary = extract_all(extract_config(demo_root, folder / "cache", tiny_models), scan_ravdess(demo_root))
        assert summary.num_done == 32 and summary.num_failed == 0, summary.format()

    return built_once(tmp_path_factory, "cache", extract) / "cache"


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
