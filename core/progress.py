"""Progress of a long loop: a tqdm bar when stderr is a terminal, else a log line every PROGRESS_INTERVAL_S.

`Progress(total, desc=..., unit=..., logger=log)` counts done items (`update(n)`); without a terminal (a job
log, `2> file`, CI) it logs "desc: done/total units, rate, time left" so a long run is never silent for
minutes. extract (clips), train-fusion (batches of an epoch) and predict (files, windows) all use it.
"""

from __future__ import annotations

import logging
import sys
import time

PROGRESS_INTERVAL_S = 30.0   # a line per 30 s: a stalled run shows within half a minute, an hour-long one logs ~120 lines


PLURALS = {"batch": "batches"}   # units whose plural is not unit + "s" (clip, file, window, epoch are)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts done items of one loop; a context manager (closing the bar, logging nothing more)."""

    def __init__(self, total: int, *, desc: str, unit: str, logger: logging.Logger, leave: bool = True,
                 with_bar: bool = True) -> None:
        """`with_bar=False`: no bar on a terminal either (an outer loop whose inner loop has the bar)."""
        self.total, self.desc, self.unit, self.logger = total, desc, unit, logger
        self.units = PLURALS.get(unit, unit + "s")
        self.done, self.postfix = 0, ""
        self.started = self.last_line = time.monotonic()
        self.bar = None
        self.is_terminal = sys.stderr.isatty()
        if self.is_terminal and with_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave)

    def update(self, n: int = 1, **postfix: str) -> None:
        """`n` more items done; `postfix` (name=text) is shown on the bar and appended to the log line."""
        self.done += n
        if postfix:
            self.postfix = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix)
        if self.is_terminal:
            return
        now = time.monotonic()
        if now - self.last_line >= PROGRESS_INTERVAL_S and self.done < self.total:
            self.last_line = now
            self.logger.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """'desc: 12/40 clips (30%), 1.50 clips/s, 18 s left[, postfix]'."""
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        left = f"{_duration((self.total - self.done) / rate)} left" if rate > 0 else "time left unknown"
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        text = f"{self.desc}: {self.done}/{self.total} {self.units}{percent}, {rate:.2f} {self.units}/s, {left}"
        return f"{text}, {self.postfix}" if self.postfix else text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
