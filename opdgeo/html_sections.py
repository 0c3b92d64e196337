"""Sections of the HTML report (:mod:`opdgeo.html`), each a function of the runs returning one
``<section>`` (or ``""`` when it has nothing to show)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opdgeo.html_cells import (
    anchor,
    badge,
    breakable,
    cell,
    escape,
    missing,
    number,
    table,
    value_text,
)
from opdgeo.plots_common import Plot, run_label
from opdgeo.plots_layers import module_order
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
MAX_SKIPPED_SHOWN = 200


def summary_section(runs: Sequence[RunResult]) -> str:
    columns = [(k, h) for k, h in SUMMARY_COLUMNS if any(k in r.summary for r in runs)]
    bases = {str(r.summary.get("base")) for r in runs}
    with_step = any(not missing(r.summary.get("step")) for r in runs)
    text_headers = ["run", *(["base"] if len(bases) > 1 else []), "regime"]
    headers = [*text_headers, *(["step"] if with_step else []), "confidence",
               *(h for _, h in columns)]  # fmt: skip
    rows = []
    for i, run in enumerate(runs):
        s = run.summary
        link = f'<a href="#{anchor(i)}">{breakable(run_label(run))}</a>'
        cells = [f'<td class="text name">{link}</td>']
        if len(bases) > 1:
            cells.append(f'<td class="text name">{breakable(s.get("base"))}</td>')
        cells.append(f'<td class="text">{badge(s.get("regime"))}</td>')
        if with_step:
            cells.append(cell(s.get("step"), "step"))
        cells.append(cell(s.get("confidence"), "confidence"))
        cells += [cell(s.get(k), k) for k, _ in columns]
        rows.append(cells)
    base_line = f"<p>Base: <code>{escape(next(iter(bases)))}</code></p>" if len(bases) == 1 else ""
    return (
        f'<section id="summary"><h2>Summary</h2>{base_line}'
        f"{table(headers, rows, left=len(text_headers))}"
        '<p class="note">confidence = how often the rule behind the label was right on the '
        "calibration runs (a lower bound; the verdicts name the rule). Cells show 4 "
        "significant digits; hover a cell for its full value; the "
        "appendix lists every summary column at full precision.</p>"
        "</section>"
    )


def verdicts_section(runs: Sequence[RunResult]) -> str:
    parts = ['<section id="verdicts"><h2>Verdicts</h2>']
    for i, run in enumerate(runs):
        s, v = run.summary, run.verdict
        parts.append(
            f'<div class="verdict" id="verdict-{i + 1}"><h3>{escape(run_label(run))} '
            f"{badge(v.regime)} <small>confidence {escape(number(v.confidence))}</small></h3>"
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


def order_section(runs: Sequence[RunResult]) -> str:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.summary if k.startswith("order_") and k not in keys]
    concordance = "order_concordance"
    columns = [k for k in keys if k != concordance]
    if len(runs) < 2 or not columns:
        return ""
    rows = [
        [
            f'<td class="text name">{breakable(run_label(r))}</td>',
            *(cell(r.summary.get(k), k) for k in columns),
        ]
        for r in runs
    ]
    w = next((r.summary[concordance] for r in runs if not missing(r.summary.get(concordance))),
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
        f"{table(['run', *(k.removeprefix('order_') for k in columns)], rows)}{note}</section>"
    )


def trajectory_section(runs: Sequence[RunResult]) -> str:
    if not any("sim_final" in r.summary for r in runs):
        return ""
    rows = [
        [
            f'<td class="text name">{breakable(run_label(r))}</td>',
            *(cell(r.summary.get(c), c) for c in TRAJECTORY_COLUMNS),
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
        f"{table(headers, rows)}{line}</section>"
    )


def figures_section(plots: Sequence[Plot] | None, why_not: str) -> str:
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
             *(cell(g.get(c), c) for c in columns)] for g in groups]  # fmt: skip
    return table([first, *(c.replace("_", " ") for c in columns)], rows)


def details_section(runs: Sequence[RunResult]) -> str:
    parts = ['<section id="details"><h2>Per-run tables</h2>']
    for i, run in enumerate(runs):
        parts.append(f'<div class="run" id="{anchor(i)}"><h3>{escape(run_label(run))}</h3>')
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
                     cell(s["reason"], text=True)]
                    for s in skipped[:MAX_SKIPPED_SHOWN]]  # fmt: skip
            parts.append(table(["tensor", "reason"], rows))
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
             f'<td class="text"><code>{escape(value_text(v))}</code></td>']
            for k, v in values.items()]  # fmt: skip
    return table(["key", "value"], rows, caption, left=2)


def settings_section(settings: Mapping[str, Any], thresholds: Mapping[str, Any]) -> str:
    return (
        '<section id="settings"><h2>Settings and thresholds</h2><div class="pair">'
        f"{_mapping_table(settings, 'settings')}{_mapping_table(thresholds, 'thresholds')}"
        "</div></section>"
    )


def reproduce_section(command: str, version: str, date: str) -> str:
    return (
        '<section id="reproduce"><h2>Command, version and date</h2>'
        f"<pre><code>{escape(command)}</code></pre>"
        f"<p>opdgeo {escape(version)}, {escape(date)}</p></section>"
    )


def appendix_section(runs: Sequence[RunResult]) -> str:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.summary if k not in keys]
    rows = [[f'<td class="text"><code>{escape(k)}</code></td>',
             *(f'<td class="text">{escape(value_text(r.summary.get(k)))}</td>' for r in runs)]
            for k in keys]  # fmt: skip
    return (
        '<section id="appendix"><h2>Appendix: every summary column</h2>'
        "<p>Each run's summary row as in the CSV/JSON report, at full precision.</p>"
        f"{table(['column', *(run_label(r) for r in runs)], rows, left=len(runs) + 1)}</section>"
    )
