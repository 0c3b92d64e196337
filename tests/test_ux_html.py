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


def html_run(args: list[str], page: Path) -> subprocess.CompletedProcess[str]:
    """``opdgeo ARGS --html PAGE`` as a real process (the report quotes its command line)."""
    result = subprocess.run([sys.executable, "-m", "opdgeo", *args, "--html", str(page)],
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {page}" in result.stderr.splitlines()
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "needs no network"
    assert "--html" in text  # the exact command
    return result


def section(dom: str, name: str) -> str:
    """The serialised ``<section id=NAME>`` of a page's DOM."""
    start = dom.index(f'<section id="{name}">')
    return dom[start : dom.index("</section>", start)]


@pytest.mark.skipif(find_chromium() is None, reason="chromium not found (apt-get install chromium)")
def test_batch_html_opens_in_a_headless_browser(tmp_path: Path) -> None:
    """A batch over a folder that also holds the base: three runs (the base skipped), each
    in the summary, with a verdict, module and layer tables and a layer heatmap."""
    from opdgeo.synthetic import write_family

    paths = write_family(tmp_path / "family", seed=1)
    page = tmp_path / "batch.html"
    args = ["batch", str(paths["base"]), str(tmp_path / "family"), "--no-cache", "-f", "csv"]
    result = html_run(args, page)
    assert "skipping base" in result.stderr  # the base sits in the folder
    dom = dump_dom(page, timeout=120)
    runs = ("opd", "rlvr", "sft")
    summary = section(dom, "summary")
    assert summary.count("<tr>") == 1 + len(runs)  # header + one row per run
    for run in runs:
        assert f">{run}</a>" in summary.replace("<wbr>", "")
    assert ">base</a>" not in summary.replace("<wbr>", "")
    verdicts = section(dom, "verdicts")
    assert verdicts.count('class="verdict"') == len(runs)
    assert verdicts.count('class="reasons"') == len(runs)
    details = section(dom, "details")
    assert details.count("<h4>Per module type</h4>") == len(runs)
    assert details.count("<h4>Per layer</h4>") == len(runs)
    assert details.count("<table") >= 2 * len(runs)
    figures = section(dom, "figures")
    assert 'id="fig-regime_map"' in figures
    assert figures.count("<figure") == 1 + len(runs)  # the map + one heatmap per run
    assert figures.count("<svg") >= 1 + len(runs)
    for name in ("settings", "reproduce"):
        assert f'id="{name}"' in dom
    assert "<script" not in dom


@pytest.mark.skipif(find_chromium() is None, reason="chromium not found (apt-get install chromium)")
def test_trajectory_html_opens_in_a_headless_browser(tmp_path: Path) -> None:
    """A trajectory report: the step column, the trajectory table with its locking verdict,
    and the trajectory figure beside the regime map and heatmaps."""
    from opdgeo.synthetic import write_trajectory

    folders = write_trajectory(tmp_path / "traj", steps=3)
    page = tmp_path / "trajectory.html"
    args = ["trajectory", *map(str, folders), "--no-cache", "-f", "csv"]
    html_run(args, page)
    dom = dump_dom(page, timeout=120)
    summary = section(dom, "summary")
    assert "<th>step</th>" in summary
    assert summary.count("<tr>") == 1 + 3
    for step in (100, 200, 300):
        assert f'title="{step}">{step}</td>' in summary
    assert section(dom, "verdicts").count('class="verdict"') == 3
    trajectory = section(dom, "trajectory")
    assert "<th>sim final</th>" in trajectory and trajectory.count("<tr>") == 1 + 3
    locking = re.search(r"Locking: <strong>(\w+)</strong>", trajectory)
    assert locking and locking.group(1) in ("locked", "expanding", "contracting", "drifting")
    details = section(dom, "details")
    assert details.count("<h4>Per module type</h4>") == 3
    assert details.count("<h4>Per layer</h4>") == 3
    figures = section(dom, "figures")
    for stem in ("regime_map", "trajectory"):
        assert f'id="fig-{stem}"' in figures
    assert figures.count("<svg") >= 2 + 3  # map, trajectory, one heatmap per checkpoint
    assert "<script" not in dom
