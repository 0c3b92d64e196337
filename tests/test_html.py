"""The shareable HTML report: self-contained, escaped, complete, deterministic, and it renders
in a real headless browser (Debian's chromium; skipped with the reason when it is absent)."""

from __future__ import annotations

import re
import struct
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from opdgeo.api import compare_checkpoints
from opdgeo.config import Config
from opdgeo.html import escape, html_report, number
from opdgeo.report import RunResult
from opdgeo.synthetic import write_family
from tests.browser import dump_dom, find_chromium, run_chromium, screenshot

EVIL_LABEL = "<script>alert(1)</script> [bold] & 'q'"
EVIL_TENSOR = 'model.layers.0.<img src=x onerror="alert(2)">.weight'
LABEL = "rlvr \x07 $x$ [bold] \udcff"
DATE = "2026-01-02 03:04 UTC"
COMMAND = ["opdgeo", "compare", "base dir/", "sft;rm -rf ~", "--html", "r.html"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[RunResult]:
    """opd (in a folder named like a script tag, with one extra tensor) and rlvr (with a
    hostile label, as a study file or --label can give) against the synthetic base."""
    root = tmp_path_factory.mktemp("html")
    paths = write_family(root / "fam", seed=2)
    # a path component cannot hold "/", so the tag spans two folders: ".../<script>alert(1)<"
    # and "script> [bold] & 'q'" make the run label contain EVIL_LABEL
    evil = root / EVIL_LABEL.split("/")[0] / EVIL_LABEL.split("/")[1]
    evil.mkdir(parents=True)
    tensors = load_file(str(paths["opd"] / "model.safetensors"))
    tensors[EVIL_TENSOR] = torch.zeros(4, dtype=torch.bfloat16)
    save_file(tensors, str(evil / "model.safetensors"))
    out = compare_checkpoints(str(paths["base"]), [str(evil), str(paths["rlvr"])])
    out[1].summary["label"] = LABEL
    return out


def report(runs: list[RunResult], **kwargs: object) -> str:
    cfg = Config()
    args: dict[str, object] = {
        "settings": vars(cfg.settings),
        "thresholds": vars(cfg.thresholds),
        "command": COMMAND,
        "version": "9.8.7",
        "date": DATE,
        **kwargs,
    }
    return html_report(runs, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def page(runs: list[RunResult]) -> str:
    pytest.importorskip("matplotlib")
    return report(runs)


class Elements(HTMLParser):
    """Counts tags and collects the text of a document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, str, str | None]] = []
        self.text: list[str] = []
        self._style = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.attrs += [(tag, k, v) for k, v in attrs]
        self._style += tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._style -= tag == "style"

    def handle_data(self, data: str) -> None:
        if not self._style:
            self.text.append(data)


def parse(document: str) -> Elements:
    parser = Elements()
    parser.feed(document)
    parser.close()
    return parser


def test_report_is_self_contained(page: str) -> None:
    doc = parse(page)
    assert "script" not in doc.tags and "link" not in doc.tags and "iframe" not in doc.tags
    assert "img" not in doc.tags and "object" not in doc.tags and "embed" not in doc.tags
    for tag, key, value in doc.attrs:
        if key in ("src", "href", "xlink:href", "action", "srcset"):
            assert value is not None and not re.match(r"\s*(https?:)?//", value, re.I), (tag, value)
            assert value.startswith(("#", "data:image/png;base64,")), (tag, key, value)
        assert not key.startswith("on"), (tag, key)  # no event handlers
    assert not re.search(r"@import|url\(\s*['\"]?\s*(https?:)?//", page, re.I)
    assert not re.search(r"<link[^>]*stylesheet", page, re.I)
    # figures are inlined: the regime map plus one heatmap per run; ids unique page-wide
    assert doc.tags.get("svg") == 3 and doc.tags.get("figure") == 3
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "duplicate ids across the inline SVGs"
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert refs and refs <= set(ids), "an SVG reference points at no id"


def test_strings_from_files_are_escaped(page: str, runs: list[RunResult]) -> None:
    assert EVIL_LABEL in runs[0].summary["run"]  # the fixture did build the hostile path
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; [bold] &amp; &#x27;q&#x27;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page  # the skipped tensor
    assert "rlvr \\x07 $x$ [bold] \\udcff" in page  # control char and surrogate made visible
    assert "\x07" not in page and "<b>" not in page and "[bold]" in page
    text = "".join(parse(page).text)
    assert EVIL_LABEL in text and EVIL_TENSOR in text
    page.encode("utf-8")  # no lone surrogate left to break the file


def test_report_holds_summary_verdicts_tables_settings_and_command(
    page: str, runs: list[RunResult]
) -> None:
    for section in ("summary", "verdicts", "order", "figures", "details", "settings",
                    "reproduce", "appendix"):  # fmt: skip
        assert f'<section id="{section}">' in page and f'href="#{section}"' in page
    assert 'id="trajectory"' not in page  # only for trajectories
    for run in runs:
        assert escape(run.summary["run"]) in page
        for line in (*run.verdict.reasons, *run.verdict.caveats):
            assert f"<li>{escape(line)}</li>" in page
        for g in run.layers:
            assert f'<td class="text">{g["group"]}</td>' in page
    # module rows in the order q, k, v, o, gate, up, down, then the rest
    first = page[page.index('id="run-1"') : page.index('id="run-2"')]
    modules = re.findall(r'<td class="text">(\w+)</td>', first.split("<h4>Per layer</h4>")[0])
    assert modules[:7] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert set(modules[7:]) == {"embed", "lm_head", "norm"}
    # skipped tensors listed with their reason
    assert "Tensors not compared (1)" in page and "only in tuned" in page
    # settings, thresholds, shell-quoted command, version, date
    assert "<code>sparsity_rlvr_above</code>" in page and "<code>angle_k</code>" in page
    assert "opdgeo compare &#x27;base dir/&#x27; &#x27;sft;rm -rf ~&#x27; --html r.html" in page
    assert "opdgeo 9.8.7" in page and DATE in page
    assert report(runs, command="opdgeo compare a b", figures=False).count("opdgeo compare a b")


def test_numbers_are_never_truncated(page: str, runs: list[RunResult]) -> None:
    for run in runs:
        for key in ("nss", "rel_norm", "sparsity_bf16", "principal_angle_deg"):
            value = float(run.summary[key])
            assert f'title="{value!r}"' in page  # the full value on the table cell
            assert f">{value!r}</td>" in page  # and in the appendix
    assert number(0.99999, "sparsity_bf16") == "99.999 %"  # never "100.00 %" unless it is
    assert number(2e-7, "sparsity_bf16") == "0.00002 %"
    assert number(1.0, "sparsity_bf16") == "100.00 %"
    assert number(1234567, "n_params") == "1,234,567"
    assert number(3.14159265e-5) == "3.142e-05"
    assert number(float("nan")) == "-"


def test_report_is_deterministic(runs: list[RunResult], page: str) -> None:
    assert report(runs) == page
    other = report(runs, date="1999-12-31")
    assert other.replace("1999-12-31", DATE) == page


def test_without_matplotlib_the_report_says_so(
    runs: list[RunResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now fails
    page = report(runs)
    assert "matplotlib is not installed" in page and "<svg" not in page
    assert "<table" in page
    assert "Figures were not requested" in report(runs, figures=False)


def test_trajectory_report_has_its_table_verdict_and_figure(runs: list[RunResult]) -> None:
    pytest.importorskip("matplotlib")
    steps = [200, 100]  # given out of step order
    trajectory = [
        RunResult(
            {
                **run.summary,
                "step": step,
                "sim_final": 0.25 * (i + 3),
                "update_norm": 0.1 / step,
                "hill_alpha": float("nan"),
                "jaccard_prev": 0.5,
                "jaccard_final": 0.75,
                "locking": "drifting" if i == 0 else "",
                "locking_reasons": "a <reason>",
            },
            run.verdict,
            run.tensors,
            run.modules,
            run.layers,
        )
        for i, (run, step) in enumerate(zip(runs, steps, strict=True))
    ]
    page = report(trajectory)
    assert '<section id="trajectory">' in page and 'href="#trajectory"' in page
    assert "Locking: <strong>drifting</strong> (a &lt;reason&gt;)" in page
    assert 'id="fig-trajectory"' in page and "<th>sim final</th>" in page
    summary = page[page.index('<section id="summary">') : page.index('<section id="verdicts">')]
    assert "<th>step</th>" in summary and 'title="200">200</td>' in summary


# ---- a real browser -------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium not found (apt-get install chromium; .ci/run installs it)",
)


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and raw (filtered) scanlines of a non-interlaced PNG."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@needs_chromium
def test_browser_renders_tables_and_figures(page: str, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    dom = dump_dom(path, timeout=120)
    doc = parse(dom)
    assert doc.tags.get("svg") == 3 and doc.tags.get("figure") == 3
    # summary, relative order, module + layer tables per run, skipped, settings x 2, appendix
    assert doc.tags.get("table") == 1 + 1 + 2 * 2 + 1 + 2 + 1
    assert "script" not in doc.tags
    text = "".join(doc.text)
    assert EVIL_LABEL in text and EVIL_TENSOR in text and "Regime map" in text


@needs_chromium
def test_browser_screenshot_and_print(page: str, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    png = screenshot(path, tmp_path / "shot.png", width=1200, height=1400, timeout=120)
    width, height, raw = png_pixels(png.read_bytes())
    assert (width, height) == (1200, 1400)
    assert len(set(raw)) > 16, "the screenshot is blank"
    pdf = tmp_path / "report.pdf"
    run_chromium(path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", timeout=120)
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 20_000
