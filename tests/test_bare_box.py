"""What a bare GPU box (torch + transformers, no NeMo, no ffmpeg) can import and run: benchmarks/gpu_check.py's
path. The whole check, on CPU with the tiny encoders, is in tests/test_bench.py (slow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bare_box import bare_box_env, onnx_box_env

GPU_CHECK = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def test_the_blocker_blocks(tmp_path):
    """The environment the checks below run in really lacks NeMo and ffmpeg."""
    code = ("import shutil\nfor name in ('nemo', 'ffmpeg', 'imageio_ffmpeg', 'cv2'):\n"
            "    try:\n        __import__(name)\n    except ModuleNotFoundError:\n        continue\n"
            "    raise SystemExit(f'{name} imported')\nassert shutil.which('ffmpeg') is None\n")
    done = subprocess.run([sys.executable, "-c", code], env=bare_box_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow   # a child process importing torch and transformers: ~11 s
def test_featurizer_and_the_checks_modules_import_without_nemo_or_ffmpeg(tmp_path):
    """The online path of the check is extract's featurizer, which once imported the decoder (ffmpeg-python, OpenCV)
    through extract/worker.py; the decoded clip's type now lives in extract/items.py."""
    modules = ("mmfer.extract.featurize", "mmfer.extract.encoders", "mmfer.pipeline.bench_decoded",
               "mmfer.pipeline.bench_parts", "mmfer.train.loop", "mmfer.train.dataset")
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    done = subprocess.run([sys.executable, "-c", code], env=bare_box_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_onnx_predict_path_imports_without_torch(tmp_path):
    """What `predict --runtime onnx` of an --onnx-encoders export imports, in a child that cannot import torch: the
    CLI with every parser, the bundle, the Predictor, the registry, the featurizer, decoding and the numpy batch.
    (tests/test_predict.py runs the whole predict so, slow.)"""
    modules = ("mmfer.pipeline.cli", "mmfer.pipeline.predict", "mmfer.pipeline.bundle", "mmfer.pipeline.predictor",
               "mmfer.pipeline.runtime", "mmfer.extract.encoders", "mmfer.extract.encoders.onnx_encoders",
               "mmfer.extract.featurize", "mmfer.extract.worker", "mmfer.extract.stream", "mmfer.train.batch")
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
            + "assert 'torch' not in sys.modules\nprint('all imported', flush=True)\nimport torch\n")
    done = subprocess.run([sys.executable, "-c", code], env=onnx_box_env(tmp_path), capture_output=True, text=True)
    assert done.stdout.strip() == "all imported", done.stderr[-2000:]
    assert done.returncode == 1 and done.stderr.strip().endswith("No module named 'torch'"), done.stderr[-2000:]   # the box has none


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_check_names_the_missing_file_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(GPU_CHECK), "run", str(tmp_path), "--device", "cpu"],
                          env=bare_box_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "decoded.json") in lines[0] and "gpu_check.py write" in lines[0], lines


def test_check_names_every_missing_module_in_one_line(tmp_path):
    """A box without peft (the LoRA rows) or pandas: refused before anything loads, both named."""
    (tmp_path / "decoded.json").write_text("{}")
    done = subprocess.run([sys.executable, str(GPU_CHECK), "run", str(tmp_path), "--device", "cpu"],
                          env=bare_box_env(tmp_path, also_blocked=("peft", "pandas")), capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "lacks pandas, peft;" in lines[0] and "not NeMo" in lines[0], lines


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_check_without_peft_runs_when_the_lora_rows_are_left_out(tmp_path):
    """peft is needed only for the LoRA rows: `--modes finetune,frozen` gets past the module check (and stops at
    the missing folder), while the default modes are refused, naming peft."""
    args = [sys.executable, str(GPU_CHECK), "run", str(tmp_path), "--device", "cpu"]
    env = bare_box_env(tmp_path, also_blocked=("peft",))
    done = subprocess.run([*args, "--modes", "finetune,frozen"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "decoded.json: missing" in done.stderr and "lacks" not in done.stderr, done.stderr
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "lacks peft;" in done.stderr, done.stderr
