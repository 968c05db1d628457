"""Run `mmfer ...` in the test process: `mmfer.pipeline.cli.main` with stdout and stderr captured.

For tests that check what a command prints, writes and returns, not how a process behaves: a CLI subprocess
costs seconds of imports (torch, transformers) each time. Tests about processes (Ctrl-C, crashes, locks
held by another process, torchrun, console scripts, logging set-up of a fresh process) keep real ones.
"""

from __future__ import annotations

import contextlib
import io
import subprocess


def run_mmfer(*args) -> subprocess.CompletedProcess:
    """`mmfer *args` through the CLI's own entry function and error handler: its exit code (argparse's
    SystemExit included), stdout and stderr, as `subprocess.run(..., capture_output=True, text=True)` gives them.
    Log lines go to pytest's log capture (caplog), not to `stderr`: the CLI leaves logging to whoever set it up."""
    from mmfer.pipeline.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:   # argparse: --help, usage errors
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return subprocess.CompletedProcess(["mmfer", *argv], code, out.getvalue(), err.getvalue())
