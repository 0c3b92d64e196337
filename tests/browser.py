"""Headless Chromium for the HTML report's tests and the README screenshot (no network).

Debian's ``chromium`` package (``apt-get install chromium``; ``.ci/run`` installs it). The
flags keep it off the network and out of the user's profile; every call is bounded by a
timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # any host lookup fails: no network, by design
)
TIMEOUT_S = 120.0


def find_chromium() -> str | None:
    """Path of a Chromium binary (``$OPDGEO_CHROMIUM`` first), or None."""
    explicit = os.environ.get("OPDGEO_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def run_chromium(
    page: Path, *args: str, timeout: float = TIMEOUT_S, binary: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Open ``page`` (a local file) with ``args`` in a throw-away profile; raises on failure."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary found")
    with tempfile.TemporaryDirectory(prefix="opdgeo-chromium-") as profile:
        env = {**os.environ, "HOME": profile}  # keep crash dumps and caches out of ~
        result = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def dump_dom(page: Path, timeout: float = TIMEOUT_S) -> str:
    """The DOM after the page loaded, serialised (``--dump-dom``)."""
    return run_chromium(page, "--dump-dom", timeout=timeout).stdout


def screenshot(
    page: Path, png: Path, width: int = 1200, height: int = 1600, timeout: float = TIMEOUT_S
) -> Path:
    """A ``width`` x ``height`` PNG of the top of ``page``."""
    run_chromium(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}",
                 timeout=timeout)  # fmt: skip
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png
