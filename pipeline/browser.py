"""Headless Chromium on a local HTML file: a screenshot (`mmfer report --screenshot`) or the DOM after load.

Chromium runs with every host name unresolvable, so a page that tried to fetch anything would show it
broken; the report's browser test also keeps Chromium's net log to prove no request left the file.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from mmfer.core.errors import MmferError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = "1280,1800"   # wide enough for the tables; tall enough for the protocol card and the headline
TIMEOUT_S = 120.0


class BrowserError(MmferError):
    """No Chromium, or it failed on the page."""


def find_chromium() -> str:
    """The first Chromium on PATH.

    Raises:
        BrowserError: none is installed.
    """
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError(f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); install Debian's package "
                       "(apt-get install chromium), or leave out --screenshot")


def run_chromium(page: Path, *args: str, net_log: Path | None = None) -> str:
    """Chromium headless on `page` with `args` (e.g. --dump-dom, --screenshot=FILE); returns its stdout.

    Raises:
        BrowserError: no Chromium, a non-zero exit or a timeout (its stderr's tail in the message).
    """
    exe = find_chromium()
    logging = [f"--log-net-log={net_log}", "--net-log-capture-mode=Everything"] if net_log else []
    with tempfile.TemporaryDirectory(prefix="mmfer-chromium-") as profile:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start
        command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-default-apps", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
                   f"--window-size={WINDOW}", *logging, *args, page.resolve().as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"{page}: Chromium did not finish within {TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise BrowserError(f"{page}: Chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def screenshot(page: Path, out: Path) -> Path:
    """A PNG of the page's top (WINDOW pixels) at `out`.

    Raises:
        BrowserError: as run_chromium, or no PNG written.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    run_chromium(page, f"--screenshot={out.resolve()}")
    if not out.is_file() or out.stat().st_size == 0:
        raise BrowserError(f"{page}: Chromium wrote no screenshot at {out}")
    return out
