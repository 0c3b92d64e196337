"""Regenerate docs/html-report.png: the demo family's HTML report, screenshot in headless Chromium.

Run from the repository root (``make html-screenshot``): writes the synthetic demo family to
``demo/`` (as ``opdgeo demo`` does), compares it, writes ``demo/report.html`` with
:func:`opdgeo.html.html_report` and screenshots its top through Debian's chromium
(``apt-get install chromium``) with the flags of ``tests/browser.py``. The PNG is reduced to a
256-colour palette to keep the repository small.
"""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opdgeo import __version__  # noqa: E402
from opdgeo.api import compare_checkpoints  # noqa: E402
from opdgeo.config import load_config  # noqa: E402
from opdgeo.html import html_report  # noqa: E402
from opdgeo.synthetic import write_family  # noqa: E402
from tests.browser import find_chromium, screenshot  # noqa: E402

WIDTH, HEIGHT = 1100, 2000


def main() -> int:
    if find_chromium() is None:
        print("needs chromium: apt-get install chromium", file=sys.stderr)
        return 1
    demo = Path("demo")
    paths = write_family(demo, seed=0)
    # relative specs, so the report names the runs demo/sft, demo/opd, demo/rlvr
    specs = [str(paths[k].relative_to(Path.cwd()) if paths[k].is_absolute() else paths[k])
             for k in ("base", "sft", "opd", "rlvr")]  # fmt: skip
    cfg = load_config()
    runs = compare_checkpoints(specs[0], specs[1:], cfg)
    page = html_report(
        runs,
        settings=dict(vars(cfg.settings)),
        thresholds=dict(vars(cfg.thresholds)),
        command=shlex.join(["opdgeo", "compare", *specs, "--html", "demo/report.html"]),
        version=__version__,
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
    )
    report = demo / "report.html"
    report.write_text(page, encoding="utf-8")
    png = ROOT / "docs" / "html-report.png"
    screenshot(report, png, width=WIDTH, height=HEIGHT)
    try:
        from PIL import Image
    except ImportError:
        print(f"wrote {png} (Pillow absent: not reduced)", file=sys.stderr)
        return 0
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)
    print(f"wrote {report} and {png} ({png.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
