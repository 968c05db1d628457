"""The console scripts answer --help with every setting and its default, and configs layer correctly:
defaults <- preset <- YAML <- flags <- key=value."""

import subprocess
import sys

import pytest

from mmfer.pipeline.cli import build_parser
from mmfer.pipeline.flags import resolve_config
from mmfer.core.config import TINY_TRAIN_OVERRIDES, ExtractConfig, TrainConfig
from mmfer.core.errors import ConfigError
from mmfer.core.overrides import leaf_fields

GUIDE_TRAINING_BLOCK = """
training:
  # Basic
  batch_size: 4
  gradient_accumulation_steps: 4
  max_epochs: 100
  optimizer: AdamW
  lr: 1e-4
  weight_decay: 0.01
  scheduler: CosineAnnealingWarmRestarts
  warmup_epochs: 5
  loss: CrossEntropyLoss
  label_smoothing: 0.1
  dropout: 0.1
  gradient_clip: 1.0
  mixup_alpha: 0.2
  mixed_precision: true  # FP16
  gradient_checkpointing: true
"""


@pytest.mark.parametrize("script", ["mmfer", "extract", "train-fusion"])
def test_console_scripts_help(script):
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_help_lists_every_field_with_its_default():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    train_help = sub["train-fusion"].format_help()
    for key, _, default, _ in leaf_fields(TrainConfig):
        flag = "--" + (key.replace("_", "-") if "." not in key else key)
        assert flag in train_help, flag
    assert "(default: 0.0001)" in train_help and "--epochs" in train_help
    extract_help = sub["extract"].format_help()
    assert "--face-crop" in extract_help and "(default: detect)" in extract_help


def test_layering_and_the_guides_yaml_block(tmp_path):
    config_file = tmp_path / "guide.yaml"
    config_file.write_text(GUIDE_TRAINING_BLOCK)
    args = build_parser().parse_args(["train-fusion", "--config", str(config_file), "--preset", "tiny",
                                      "--epochs", "7", "training.lr=3e-4", "model.fusion.num_layers=2"])
    cfg = resolve_config(TrainConfig, args)
    assert cfg.training.gradient_checkpointing is True          # from the YAML
    assert cfg.training.max_epochs == 7                          # flag beats YAML
    assert cfg.training.lr == 3e-4                               # key=value beats YAML
    assert cfg.model.fusion.num_layers == 2
    assert cfg.model.visual.out_dim == TINY_TRAIN_OVERRIDES["model.visual.out_dim"]   # preset


def test_bad_overrides_name_the_key():
    parser = build_parser()
    with pytest.raises(ConfigError, match="unknown config key 'training.lrr'"):
        resolve_config(TrainConfig, parser.parse_args(["train-fusion", "training.lrr=1"]))
    with pytest.raises(ConfigError, match="training.max_epochs' must be an integer"):
        resolve_config(TrainConfig, parser.parse_args(["train-fusion", "training.max_epochs=many"]))
    with pytest.raises(ConfigError, match="face_crop' must be one of none, center, detect"):
        resolve_config(ExtractConfig, parser.parse_args(["extract", "--face-crop", "eyes"]))


@pytest.mark.parametrize("typed", ["*-08", "data #1", "0123", "no", "[exp]", "runs/run #2 ", "a: b", "&anchor"])
def test_string_settings_are_taken_literally(typed):
    """A path, glob or name means what was typed: YAML typing applies only to non-string fields."""
    parser = build_parser()
    cfg = resolve_config(ExtractConfig, parser.parse_args(["extract", "--select", typed, "--out", typed]))
    assert cfg.select == typed and cfg.out == typed
    cfg = resolve_config(TrainConfig, parser.parse_args(["train-fusion", f"out={typed}", "--preload", "no"]))
    assert cfg.out == typed and cfg.preload == "no"
    assert resolve_config(TrainConfig, parser.parse_args(["train-fusion", "training.lr=1e-4"])).training.lr == 1e-4


def test_one_handler_one_line_and_the_exit_code_of_each_kind(tmp_path, capsys):
    """Bad input exits 2, a failure 1, both as one `error:` line without a traceback, in every command."""
    from mmfer.pipeline.cli import main

    not_a_cache = tmp_path / "not-a-cache"
    not_a_cache.mkdir()
    for argv in (["train-fusion", "--cache", str(not_a_cache), "--out", str(tmp_path / "run")],
                 ["cache-info", str(not_a_cache)],
                 ["export", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "exported")],
                 ["train-fusion", "training.max_epochs=many"],
                 ["ablate", "--seeds", "0", "--cache", str(not_a_cache)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, (argv, err)


@pytest.mark.slow   # over 4 s on two shared cores (the fast tier is the edit-test loop)
def test_common_mistakes_get_one_line_and_leave_no_empty_out(tmp_path, capsys):
    """A broken or hostile --config, a fold that does not exist, values out of range,
    --out on a file and a non-cache --cache: exit 2, one `error:` line, no --out folder left behind."""
    from synthetic_store import make_store

    from mmfer.pipeline.cli import main

    store = make_store(tmp_path / "cache", repetitions=1)
    broken, tagged, a_file, not_a_cache = (tmp_path / n for n in ("broken.yaml", "tagged.yaml", "a-file", "not-a-cache"))
    broken.write_text("training:\n  lr: [1\n")
    tagged.write_text(f"training: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n")
    a_file.write_text("x")
    not_a_cache.mkdir()
    out = tmp_path / "run"
    cases = [(["--config", str(broken)], f"{broken}, line 3 column 1: not valid YAML"),
             (["--config", str(tagged)], "the tag !!python/object/apply:os.system is not allowed"),
             (["--folds", "7"], "folds 7: split.protocol ravdess-6fold has 6 fold(s), numbered 1..6"),
             (["--epochs", "0"], "training.max_epochs must be >= 1, got 0"),
             (["training.lr=-1"], "training.lr must be > 0, got -1.0"),
             (["training.mixup_alpha=nan"], "training.mixup_alpha must be a finite number, got nan"),
             (["--out", str(a_file)], f"{a_file}: --out is a file, not a folder"),
             (["--cache", str(not_a_cache)], f"{not_a_cache}: no feature store here")]
    for extra, message in cases:
        argv = ["train-fusion", "--cache", str(store), "--out", str(out), "--preset", "tiny", "--device", "cpu", *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1, (extra, err)
        assert message in err, (extra, err)
        assert not out.exists(), extra
    assert not (tmp_path / "pwned").exists()

    root = tmp_path / "root" / "Actor_01"
    root.mkdir(parents=True)
    (root / "01-01-01-01-01-01-01.mp4").write_bytes(b"x")
    assert main(["extract", "--root", str(root.parent), "--out", str(a_file), "--preset", "tiny",
                 "--models-dir", str(tmp_path / "models")]) == 2
    assert f"{a_file}: --out is a file, not a folder" in capsys.readouterr().err and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """A real SIGINT to a training `mmfer` process: `interrupted` on one line, exit 130, no traceback."""
    import signal
    import time

    from synthetic_store import make_store

    store = make_store(tmp_path / "cache", repetitions=1)
    log_path = tmp_path / "stderr.txt"
    mmfer = __import__("pathlib").Path(sys.executable).parent / "mmfer"
    with open(log_path, "w") as stderr:
        proc = subprocess.Popen([str(mmfer), "train-fusion", "--cache", str(store), "--out", str(tmp_path / "run"),
                                 "--preset", "tiny", "--device", "cpu", "--epochs", "50", "training.batch_size=8",
                                 "model.visual.num_keep_tokens=8"], stderr=stderr, stdout=subprocess.DEVNULL,
                                # a terminal's Ctrl-C: SIGINT at its default even when pytest runs in the background
                                # (a non-interactive shell's `cmd &` ignores it, and Python then never raises it)
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 240
        while "fold1 epoch 1:" not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    err = log_path.read_text()
    assert err.endswith("interrupted\n") and "Traceback" not in err, err[-3000:]
