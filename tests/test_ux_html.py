"""``--html PATH`` on the command line: one self-contained report, opened in headless Chromium
(Debian's ``chromium``; skipped with the reason when it is absent)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import dump_dom, find_chromium
from tests.conftest import perturb, tiny_model, write_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ux-html")
    return {
        "base": write_checkpoint(root / "base", tiny_model(layers=2)),
        "sft": write_checkpoint(root / "sft", perturb(tiny_model(layers=2), 0.05)),
    }


@pytest.mark.skipif(find_chromium() is None, reason="chromium not found (apt-get install chromium)")
def test_compare_html_opens_in_a_headless_browser(ckpts: dict[str, Path], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    args = ["compare", str(ckpts["base"]), str(ckpts["sft"]), "--no-cache", "-f", "csv"]
    # a real process, so that the report quotes its real command line
    result = subprocess.run([sys.executable, "-m", "opdgeo", *args, "--html", str(page)],
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run,base,regime,")  # the report still goes to stdout
    assert f"wrote {page}" in result.stderr.splitlines()
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "needs no network"
    assert "--html" in text and str(ckpts["sft"]) in text  # the exact command
    dom = dump_dom(page, timeout=120)
    for section in ("summary", "verdicts", "figures", "details", "settings", "reproduce"):
        assert f'id="{section}"' in dom
    assert dom.count("<svg") >= 2  # regime map + the run's layer heatmaps, inline
    assert "<script" not in dom
