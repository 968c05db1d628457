"""Quiet, correct command-line output: --version, --help examples that the command
accepts, and -v that shows mmfer's debug lines without the libraries' (zarr, numcodecs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from synthetic_store import make_store

from mmfer.pipeline.cli import _extract_parser, _train_parser, build_parser
from mmfer.core.config import ExtractConfig, TrainConfig
from mmfer.pipeline.command_config import DemoConfig
from mmfer.core.overrides import apply_overrides, parse_key_values

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["mmfer", "extract", "train-fusion"])
def test_version_flag(script):
    result = subprocess.run([str(BIN / script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"{script} {version('mmfer')}", result


def _subparsers():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices


@pytest.mark.parametrize("command, cfg_type", [("extract", ExtractConfig), ("train-fusion", TrainConfig),
                                               ("make-demo", DemoConfig), ("ablate", TrainConfig), ("tune", TrainConfig)])
def test_help_override_example_is_a_key_of_that_command(command, cfg_type):
    import argparse

    parsers = [_subparsers()[command]]
    if command in ("extract", "train-fusion"):   # the console scripts build their own parser
        own = argparse.ArgumentParser(prog=command)
        (_extract_parser if command == "extract" else _train_parser)(own)
        parsers.append(own)
    for parser in parsers:
        text = " ".join(parser.format_help().split())
        (example,) = re.findall(r"Config overrides, e\.g\. (\S+=\S+?)\.(?:\s|$)", text)
        apply_overrides(cfg_type(), parse_key_values([example]))   # raises ConfigError on a key it does not have


@pytest.mark.slow   # an extract and a train-fusion child process: ~8 s
def test_verbose_shows_no_zarr_debug_lines(tmp_path):
    cache = make_store(tmp_path / "cache", repetitions=1)
    result = subprocess.run([str(BIN / "mmfer"), "cache-info", str(cache), "-v"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    foreign = [line for line in result.stderr.splitlines() if " DEBUG " in line and " mmfer" not in line]
    assert foreign == [], "\n".join(foreign[:5])


def test_other_libraries_info_lines_are_counted_not_shown(capsys):
    """Without -v, another library's info lines (NeMo's logger among them) are counted, not shown; its warnings and
    mmfer's own lines pass; the command's last line gives the counts. With -v every line shows."""
    import logging

    from mmfer.pipeline.cli import _report_hidden, _ThirdPartyLines

    def records(*named):
        return [logging.LogRecord(name, level, __file__, 1, "line", None, None) for name, level in named]

    quiet = _ThirdPartyLines(verbose=False)
    shown = [quiet.filter(r) for r in records(("nemo_logger", logging.INFO), ("nemo_logger", logging.INFO),
                                              ("transformers.modeling", logging.INFO),
                                              ("transformers.modeling", logging.WARNING),
                                              ("nv_one_logger.api", logging.WARNING), ("mmfer.pipeline", logging.INFO))]
    assert shown == [False, False, False, True, False, True]
    assert quiet.hidden == {"NeMo": 2, "transformers": 1, "nv_one_logger": 1}
    logger = logging.getLogger("mmfer")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    old_level, logger.level = logger.level, logging.INFO
    try:
        _report_hidden(quiet)
    finally:
        logger.removeHandler(handler)
        logger.level = old_level
    assert seen == ["hid 4 info lines of other libraries (2 from NeMo, 1 from nv_one_logger, 1 from transformers); "
                    "-v shows them"], seen
    assert all(_ThirdPartyLines(verbose=True).filter(r) for r in records(("nemo_logger", logging.INFO)))
