"""Fault injection for the reliability tests: named points where a test can make this process die.

`crash_point("name")` does nothing unless the environment asks for it, and the environment is read
once at import, so an unset variable costs one dict lookup per call. Variables:
  MMFER_CRASH_AT="name" or "name:N"  send MMFER_CRASH_SIGNAL (default SIGKILL) to ourselves at the N-th
                                     hit of that point (N = 1 if absent); SIGSTOP lets a test act while
                                     we are frozen mid-run, then SIGCONT us.
  MMFER_ENOSPC_AT="name" or "name:N" raise OSError(ENOSPC) there instead, as a full disk would.
  MMFER_FAULT_RANK="R"                only the torchrun rank R (its RANK variable) obeys the two above, so a
                                     test can kill one rank of a group; every process obeys when unset.
"""

from __future__ import annotations

import errno
import os
import signal

CRASH_ENV = "MMFER_CRASH_AT"
SIGNAL_ENV = "MMFER_CRASH_SIGNAL"
ENOSPC_ENV = "MMFER_ENOSPC_AT"
RANK_ENV = "MMFER_FAULT_RANK"


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    return name, int(count) if count else 1


_IS_TARGET = os.environ.get(RANK_ENV) in (None, os.environ.get("RANK", "0"))
_CRASH = _parse(os.environ.get(CRASH_ENV)) if _IS_TARGET else None
_ENOSPC = _parse(os.environ.get(ENOSPC_ENV)) if _IS_TARGET else None
_SIGNAL = getattr(signal, os.environ.get(SIGNAL_ENV, "SIGKILL"))
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here (or raise ENOSPC) when the environment names this point; otherwise do nothing.

    Raises:
        OSError: ENOSPC, when MMFER_ENOSPC_AT names this point and hit.
    """
    if _CRASH is None and _ENOSPC is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _CRASH is not None and _CRASH == (name, _hits[name]):
        os.kill(os.getpid(), _SIGNAL)
    if _ENOSPC is not None and _ENOSPC == (name, _hits[name]):
        raise OSError(errno.ENOSPC, f"No space left on device (simulated at {name}:{_hits[name]})")
