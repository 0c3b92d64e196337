"""One self-contained HTML report: what a researcher attaches to a paper draft or a PR.

:func:`html_report` returns a single HTML document that needs nothing else to open: the CSS
is inline, there is no script, no font and no external link, and the figures are inline SVG
(from :func:`opdgeo.plots.svg_plots`; without matplotlib the report says so and leaves them
out). It holds the summary table, each run's verdict with its reasons and caveats, the relative
order of the runs, the trajectory table (for trajectories), the figures, the per-module-type and
per-layer tables and the skipped tensors of each run, the settings and thresholds, the exact
command, the opdgeo version and the date, and an appendix with every summary column at full
precision.

Every string that comes from outside (run labels, paths, tensor names, reasons, settings) is
HTML-escaped, with control characters and unpaired surrogates shown as ``\\xNN`` /
``\\udcNN``. Table cells show 4 significant digits (percentages with as many decimals as it
takes not to round to 0 % or 100 %), the full value as the cell's tooltip, and the appendix
repeats each summary value with ``repr`` precision; no number is cut. The same input gives the
same bytes, except the date (pass ``date`` to pin it).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# everything this module needs from the rest of opdgeo comes through these imports
from opdgeo.config import Thresholds
from opdgeo.errors import ConfigError
from opdgeo.html_cells import PERCENT_COLUMNS, escape, number
from opdgeo.html_sections import (
    MAX_SKIPPED_SHOWN,
    SUMMARY_COLUMNS,
    TRAJECTORY_COLUMNS,
    appendix_section,
    details_section,
    figures_section,
    order_section,
    reproduce_section,
    settings_section,
    summary_section,
    trajectory_section,
    verdicts_section,
)
from opdgeo.plots import Plot, svg_plots
from opdgeo.report import RunResult

__all__ = ["MAX_SKIPPED_SHOWN", "PERCENT_COLUMNS", "SUMMARY_COLUMNS", "TRAJECTORY_COLUMNS",
           "escape", "html_report", "number"]  # fmt: skip


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, sans-serif; color: #1a1a1a; background: #fff; margin: 0 auto; max-width: 1180px;
  padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2rem 0 .6rem; padding-bottom: .2rem;
  border-bottom: 1px solid #d0d0d0; }
h3 { font-size: 1.05rem; margin: 1.2rem 0 .4rem; }
h4 { font-size: .95rem; margin: .9rem 0 .3rem; color: #333; }
small, .note, .meta, .path { color: #555; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  font-size: .92em; }
pre { background: #f5f5f5; border: 1px solid #e2e2e2; padding: .6rem .8rem;
  white-space: pre-wrap; overflow-wrap: anywhere; }
a { color: #1f5fa8; }
nav.toc ol { margin: .3rem 0; padding-left: 1.4rem; columns: 2; }
.table-wrap { overflow-x: auto; margin: .4rem 0 .9rem; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: .22rem .5rem; text-align: right;
  white-space: nowrap; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; white-space: normal; vertical-align: bottom; }
td.text, th.text { text-align: left; white-space: normal; overflow-wrap: break-word;
  max-width: 38rem; }
td.name { min-width: 6rem; max-width: 22rem; overflow-wrap: anywhere; }
.regime { display: inline-block; padding: 0 .45em; border-radius: 3px; font-weight: 600;
  white-space: nowrap;
  font-size: .9em; }
ul.caveats li { color: #8a5300; }
ul.caveats li::marker { content: "! "; }
.pair { display: flex; flex-wrap: wrap; gap: 0 2rem; align-items: flex-start; }
figure { margin: 1rem 0 1.5rem; break-inside: avoid; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #444; font-size: .92em; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  table { font-size: 10px; }
  .table-wrap { overflow: visible; }
  th { white-space: normal; }
  h2, h3, h4 { break-after: avoid; }
  tr, .verdict { break-inside: avoid; }
  .regime, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  a { color: inherit; text-decoration: none; }
}
"""


def _thresholds(values: Mapping[str, Any]) -> Thresholds:
    known = {f.name for f in dataclasses.fields(Thresholds)}
    return Thresholds(**{k: v for k, v in values.items() if k in known})


def html_report(
    runs: Sequence[RunResult],
    *,
    settings: Mapping[str, Any],
    thresholds: Mapping[str, Any],
    command: str | Sequence[str],
    version: str,
    figures: bool = True,
    date: str | None = None,
) -> str:
    """The whole report as one HTML document (see the module docstring).

    ``command`` is the command line, already shell-quoted (a list of arguments is quoted
    here with :func:`shlex.join`); ``date`` defaults to the current UTC time. Figures need
    matplotlib: without it the report says so instead.
    """
    if not isinstance(command, str):
        command = shlex.join(command)
    date = date or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    plots: list[Plot] | None = None
    why_not = "Figures were not requested."
    if figures:
        trajectory = any("sim_final" in r.summary for r in runs)
        try:
            plots = svg_plots(runs, thresholds=_thresholds(thresholds), trajectory=trajectory)
        except ConfigError:
            why_not = (
                "Figures left out: matplotlib is not installed "
                "(pip install 'opdgeo[plot]' and run again)."
            )
    bases = sorted({str(r.summary.get("base")) for r in runs})
    title = f"opdgeo report: {len(runs)} run(s) against {', '.join(bases)}"
    sections = [
        ("summary", "Summary", summary_section(runs)),
        ("verdicts", "Verdicts", verdicts_section(runs)),
        ("order", "Relative order", order_section(runs)),
        ("trajectory", "Trajectory", trajectory_section(runs)),
        ("figures", "Figures", figures_section(plots, why_not)),
        ("details", "Per-run tables", details_section(runs)),
        ("settings", "Settings and thresholds", settings_section(settings, thresholds)),
        ("reproduce", "Command, version and date", reproduce_section(command, version, date)),
        ("appendix", "Appendix: every summary column", appendix_section(runs)),
    ]
    toc = "".join(
        f'<li><a href="#{key}">{escape(name)}</a></li>' for key, name, body in sections if body
    )
    head = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="opdgeo">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
    )
    header = (
        f"<header><h1>opdgeo report</h1>"
        f'<p class="meta">{len(runs)} run(s) against <code>'
        f"{'</code>, <code>'.join(escape(b) for b in bases)}</code> &middot; opdgeo "
        f"{escape(version)} &middot; {escape(date)}</p></header>\n"
        f'<nav class="toc" aria-label="contents"><strong>Contents</strong><ol>{toc}</ol></nav>\n'
    )
    body = "\n".join(body for _, _, body in sections if body)
    return f"{head}{header}<main>\n{body}\n</main>\n</body>\n</html>\n"
