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
import html
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

# everything this module needs from the rest of opdgeo comes through these imports
from opdgeo.config import Thresholds
from opdgeo.errors import ConfigError
from opdgeo.plots import COLORS, Plot, module_order, run_label, svg_plots
from opdgeo.report import RunResult

SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("n_params", "params"),
    ("sparsity_bf16", "sparsity bf16"),
    ("sparsity_atol", "sparsity atol"),
    ("rel_norm", "rel norm"),
    ("principal_angle_deg", "angle (deg)"),
    ("nss", "NSS"),
    ("principal_energy", "princ. energy"),
    ("principal_overlap", "princ. overlap"),
    ("lowmag_overlap", "low\u2011mag overlap"),  # non-breaking hyphen
    ("stable_rank", "stable rank"),
)
"""Headline columns of the summary table (the rest are in the appendix)."""
TRAJECTORY_COLUMNS = ("step", "stable_rank", "update_norm", "hill_alpha", "sim_final",
                      "jaccard_prev", "jaccard_final")  # fmt: skip
PERCENT_COLUMNS = frozenset({"sparsity_bf16", "sparsity_atol", "sparsity_atol_strict",
                             "sparsity_exact", "energy_share", "principal_energy",
                             "principal_overlap", "lowmag_overlap"})  # fmt: skip
"""Fractions shown as percentages."""
MAX_SKIPPED_SHOWN = 200
_TEXT_COLOURS = {"unrelated": "#1a1a1a"}

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def escape(value: Any) -> str:
    """``str(value)`` safe inside HTML text and quoted attributes: ``& < > " '`` escaped,
    control characters (bar tab and newline) and unpaired surrogates written as ``\\xNN`` /
    ``\\udcNN``."""

    def visible(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"

    return html.escape(_UNPRINTABLE.sub(visible, str(value)), quote=True)


def _plain(value: Any) -> Any:
    """numpy scalars as the Python numbers they hold (so ``repr`` is the plain float)."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else value


def _breakable(value: Any) -> str:
    """Escaped text with a line-break opportunity after each ``/`` (paths wrap at folders)."""
    return escape(value).replace("/", "/<wbr>")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str)


def _pct(x: float) -> str:
    """Percent with 2 decimals, more (up to 8) when 2 would round a non-0/1 value to 0 or 100."""
    for digits in range(2, 9):
        text = f"{100 * x:.{digits}f}"
        if (float(text) == 100 and x < 1) or (float(text) == 0 and x > 0):
            continue
        break
    return f"{text} %"


def number(value: Any, column: str = "") -> str:
    """Display text of a number: integers with thousands separators, fractions of
    :data:`PERCENT_COLUMNS` as percentages, other floats with 4 significant digits."""
    if _missing(value):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool) or column.startswith("n_"):
        return f"{int(value):,}"
    x = float(value)
    if not math.isfinite(x):
        return str(x)
    if column in PERCENT_COLUMNS:
        return _pct(x)
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}" if column in ("step",) or abs(x) >= 1e4 else f"{x:g}"
    return f"{x:.4g}"


def _cell(value: Any, column: str = "", text: bool = False) -> str:
    """One ``<td>``: numbers right-aligned with the full value as tooltip, text left-aligned."""
    value = _plain(value)
    if _is_number(value) and not text:
        shown = number(value, column)
        exact = "" if _missing(value) else f' title="{escape(repr(value))}"'
        return f"<td{exact}>{escape(shown)}</td>"
    shown = "-" if _missing(value) or value == "" else value
    return f'<td class="text">{escape(shown)}</td>'


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str = "", left: int = 1
) -> str:
    """A table wrapped so that a wide one scrolls instead of being cut; ``rows`` are cells.
    The first ``left`` headers are left-aligned (over text), the rest right-aligned."""
    head = "".join(
        f'<th class="text">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "\n".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return (
        f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _badge(regime: Any) -> str:
    name = str(regime or "")
    colour = COLORS.get(name, "#666666")
    fg = _TEXT_COLOURS.get(name, "#ffffff")
    return (
        f'<span class="regime" style="background:{colour};color:{fg}">{escape(name or "-")}</span>'
    )


def _value_text(value: Any) -> str:
    """Settings and appendix values: JSON spelling (exact floats, ``null``, ``true``)."""
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return str(value)


def _anchor(i: int) -> str:
    return f"run-{i + 1}"


def _summary_section(runs: Sequence[RunResult]) -> str:
    columns = [(k, h) for k, h in SUMMARY_COLUMNS if any(k in r.summary for r in runs)]
    bases = {str(r.summary.get("base")) for r in runs}
    with_step = any(not _missing(r.summary.get("step")) for r in runs)
    text_headers = ["run", *(["base"] if len(bases) > 1 else []), "regime"]
    headers = [*text_headers, *(["step"] if with_step else []), "confidence",
               *(h for _, h in columns)]  # fmt: skip
    rows = []
    for i, run in enumerate(runs):
        s = run.summary
        link = f'<a href="#{_anchor(i)}">{_breakable(run_label(run))}</a>'
        cells = [f'<td class="text name">{link}</td>']
        if len(bases) > 1:
            cells.append(f'<td class="text name">{_breakable(s.get("base"))}</td>')
        cells.append(f'<td class="text">{_badge(s.get("regime"))}</td>')
        if with_step:
            cells.append(_cell(s.get("step"), "step"))
        cells.append(_cell(s.get("confidence"), "confidence"))
        cells += [_cell(s.get(k), k) for k, _ in columns]
        rows.append(cells)
    base_line = f"<p>Base: <code>{escape(next(iter(bases)))}</code></p>" if len(bases) == 1 else ""
    return (
        f'<section id="summary"><h2>Summary</h2>{base_line}'
        f"{_table(headers, rows, left=len(text_headers))}"
        '<p class="note">confidence = share of the four classifier features that vote for '
        "the label. Cells show 4 significant digits; hover a cell for its full value; the "
        "appendix lists every summary column at full precision.</p>"
        "</section>"
    )


def _verdicts_section(runs: Sequence[RunResult]) -> str:
    parts = ['<section id="verdicts"><h2>Verdicts</h2>']
    for i, run in enumerate(runs):
        s, v = run.summary, run.verdict
        parts.append(
            f'<div class="verdict" id="verdict-{i + 1}"><h3>{escape(run_label(run))} '
            f"{_badge(v.regime)} <small>confidence {escape(number(v.confidence))}</small></h3>"
        )
        if run_label(run) != str(s.get("run")):
            parts.append(f'<p class="path">checkpoint <code>{escape(s.get("run"))}</code></p>')
        parts.append('<ul class="reasons">')
        parts += [f"<li>{escape(r)}</li>" for r in v.reasons]
        parts.append("</ul>")
        if v.caveats:
            parts.append('<ul class="caveats">')
            parts += [f"<li>{escape(c)}</li>" for c in v.caveats]
            parts.append("</ul>")
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _order_section(runs: Sequence[RunResult]) -> str:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.summary if k.startswith("order_") and k not in keys]
    concordance = "order_concordance"
    columns = [k for k in keys if k != concordance]
    if len(runs) < 2 or not columns:
        return ""
    rows = [
        [
            f'<td class="text name">{_breakable(run_label(r))}</td>',
            *(_cell(r.summary.get(k), k) for k in columns),
        ]
        for r in runs
    ]
    w = next((r.summary[concordance] for r in runs if not _missing(r.summary.get(concordance))),
             None)  # fmt: skip
    note = (
        f"<p>Feature concordance (Kendall's W, 1 = every feature ranks the runs alike): "
        f"{escape(number(w))}</p>"
        if w is not None
        else ""
    )
    return (
        '<section id="order"><h2>Relative order</h2>'
        "<p>Rank of each run on each feature, 1 = most SFT-like (expected SFT &lt; OPD &lt; "
        "RLVR).</p>"
        f"{_table(['run', *(k.removeprefix('order_') for k in columns)], rows)}{note}</section>"
    )


def _trajectory_section(runs: Sequence[RunResult]) -> str:
    if not any("sim_final" in r.summary for r in runs):
        return ""
    rows = [
        [
            f'<td class="text name">{_breakable(run_label(r))}</td>',
            *(_cell(r.summary.get(c), c) for c in TRAJECTORY_COLUMNS),
        ]
        for r in runs
    ]
    verdict = next((r.summary for r in runs if r.summary.get("locking")), None)
    line = (
        f"<p>Locking: <strong>{escape(verdict['locking'])}</strong> "
        f"({escape(verdict.get('locking_reasons', ''))})</p>"
        if verdict
        else ""
    )
    headers = ["checkpoint", *(c.replace("_", " ") for c in TRAJECTORY_COLUMNS)]
    return (
        '<section id="trajectory"><h2>Trajectory</h2>'
        "<p>Cumulative update from the base at each checkpoint.</p>"
        f"{_table(headers, rows)}{line}</section>"
    )


def _figures_section(plots: Sequence[Plot] | None, why_not: str) -> str:
    parts = ['<section id="figures"><h2>Figures</h2>']
    if plots is None:
        parts.append(f'<p class="note">{escape(why_not)}</p>')
    for plot in plots or ():
        parts.append(
            f'<figure id="fig-{escape(plot.stem)}">{plot.svg}'
            f"<figcaption>{escape(plot.title)}</figcaption></figure>"
        )
    parts.append("</section>")
    return "\n".join(parts)


def _group_table(groups: Sequence[Mapping[str, Any]], first: str) -> str:
    columns: list[str] = []
    for g in groups:
        columns += [k for k in g if k not in ("group_by", "group") and k not in columns]
    rows = [[f'<td class="text">{escape(g.get("group"))}</td>',
             *(_cell(g.get(c), c) for c in columns)] for g in groups]  # fmt: skip
    return _table([first, *(c.replace("_", " ") for c in columns)], rows)


def _details_section(runs: Sequence[RunResult]) -> str:
    parts = ['<section id="details"><h2>Per-run tables</h2>']
    for i, run in enumerate(runs):
        parts.append(f'<div class="run" id="{_anchor(i)}"><h3>{escape(run_label(run))}</h3>')
        parts.append(
            f'<p class="path">checkpoint <code>{escape(run.summary.get("run"))}</code>, base '
            f"<code>{escape(run.summary.get('base'))}</code></p>"
        )
        by_name = {str(g["group"]): g for g in run.modules}
        modules = [by_name[m] for m in module_order(by_name)]
        if modules:
            parts.append("<h4>Per module type</h4>")
            parts.append(_group_table(modules, "module"))
        layers = sorted(run.layers, key=lambda g: int(g["group"]))
        if layers:
            parts.append("<h4>Per layer</h4>")
            parts.append(_group_table(layers, "layer"))
        skipped = run.skipped
        if skipped:
            parts.append(f"<h4>Tensors not compared ({len(skipped):,})</h4>")
            rows = [[f'<td class="text name">{escape(s["tensor"])}</td>',
                     _cell(s["reason"], text=True)]
                    for s in skipped[:MAX_SKIPPED_SHOWN]]  # fmt: skip
            parts.append(_table(["tensor", "reason"], rows))
            if len(skipped) > MAX_SKIPPED_SHOWN:
                parts.append(
                    f'<p class="note">... and {len(skipped) - MAX_SKIPPED_SHOWN:,} more '
                    "(see --per-tensor).</p>"
                )
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _mapping_table(values: Mapping[str, Any], caption: str) -> str:
    rows = [[f'<td class="text"><code>{escape(k)}</code></td>',
             f'<td class="text"><code>{escape(_value_text(v))}</code></td>']
            for k, v in values.items()]  # fmt: skip
    return _table(["key", "value"], rows, caption, left=2)


def _settings_section(settings: Mapping[str, Any], thresholds: Mapping[str, Any]) -> str:
    return (
        '<section id="settings"><h2>Settings and thresholds</h2><div class="pair">'
        f"{_mapping_table(settings, 'settings')}{_mapping_table(thresholds, 'thresholds')}"
        "</div></section>"
    )


def _reproduce_section(command: str, version: str, date: str) -> str:
    return (
        '<section id="reproduce"><h2>Command, version and date</h2>'
        f"<pre><code>{escape(command)}</code></pre>"
        f"<p>opdgeo {escape(version)}, {escape(date)}</p></section>"
    )


def _appendix_section(runs: Sequence[RunResult]) -> str:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.summary if k not in keys]
    rows = [[f'<td class="text"><code>{escape(k)}</code></td>',
             *(f'<td class="text">{escape(_value_text(r.summary.get(k)))}</td>' for r in runs)]
            for k in keys]  # fmt: skip
    return (
        '<section id="appendix"><h2>Appendix: every summary column</h2>'
        "<p>Each run's summary row as in the CSV/JSON report, at full precision.</p>"
        f"{_table(['column', *(run_label(r) for r in runs)], rows, left=len(runs) + 1)}</section>"
    )


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
        ("summary", "Summary", _summary_section(runs)),
        ("verdicts", "Verdicts", _verdicts_section(runs)),
        ("order", "Relative order", _order_section(runs)),
        ("trajectory", "Trajectory", _trajectory_section(runs)),
        ("figures", "Figures", _figures_section(plots, why_not)),
        ("details", "Per-run tables", _details_section(runs)),
        ("settings", "Settings and thresholds", _settings_section(settings, thresholds)),
        ("reproduce", "Command, version and date", _reproduce_section(command, version, date)),
        ("appendix", "Appendix: every summary column", _appendix_section(runs)),
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
