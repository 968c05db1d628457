"""The console scripts answer --help with every setting and its default, and configs layer correctly:
defaults <- preset <- YAML <- flags <- key=value."""

import subprocess
import sys

import pytest

from mmfer.pipeline.app.cli import build_parser
from mmfer.pipeline.app.flags import resolve_config
from mmfer.pipeline.config import TINY_TRAIN_OVERRIDES, ExtractConfig, TrainConfig
from mmfer.pipeline.errors import ConfigError
from mmfer.pipeline.overrides import leaf_fields

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
    from mmfer.pipeline.app.cli import main

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
