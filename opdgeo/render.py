"""Output: the rich terminal report, CSV and JSON writers, and atomic file output."""

from __future__ import annotations

import io
import json
import math
import textwrap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from opdgeo.render_fit import Column, print_fitted
from opdgeo.text import printable

if TYPE_CHECKING:
    from opdgeo.api import Inspection
    from opdgeo.report import RunResult

REGIME_STYLE = {
    "sft-like": "bold red",
    "opd-like": "bold magenta",
    "rlvr-like": "bold green",
    "rl-like (opd or rlvr)": "bold cyan",
    "indeterminate": "bold",
    "unchanged": "bold blue",
    "unrelated": "bold yellow",
}
MAX_SKIPPED_SHOWN = 8
TOP_MODULES = 6


def _pct(x: Any) -> str:
    return "-" if _missing(x) else f"{100 * float(x):.1f}%"


def _num(x: Any, digits: int = 3) -> str:
    if _missing(x):
        return "-"
    x = float(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4):
        return f"{x:.2e}"
    return f"{x:.{digits}g}"


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


Field = tuple[str, str, Callable[[Any], str]]
"""(header, summary key, formatter) of one table column."""


def summary_fields() -> list[Field]:
    """Columns of the terminal summary table: confidence and size, then every registered
    summary value that declares a ``label`` (in registry order)."""
    from opdgeo.metrics import derived, summaries

    fields: list[Field] = [
        ("conf", "confidence", lambda x: f"{float(x):.2f}"),
        ("params", "n_params", lambda x: _params(x)),
    ]
    for item in _registry_order():
        if item.label:
            fields.append((item.label, item.name, _pct if item.percent else _num))
    del derived, summaries
    return fields


def module_fields() -> list[Field]:
    """Columns of the per-module table: every registered group value with a ``group_label``."""
    return [
        (item.group_label, item.name, _pct if item.percent else _num)
        for item in _registry_order()
        if item.group_label
    ]


def _registry_order() -> list[Any]:
    from opdgeo.metrics import METRICS

    return [x for spec in METRICS.values() for x in (*spec.summaries, *spec.derived)]


WIDE_LAYOUT_COLUMNS = 140
"""Below this terminal width the summary is transposed: one column per run."""


def _regime(s: dict[str, Any]) -> Text:
    return Text(s["regime"], style=REGIME_STYLE.get(s["regime"], ""))


def render_table(console: Console, runs: Sequence[RunResult], settings_line: str) -> None:
    """Print the human report: summary table, reasons, top modules, relative order, skipped.
    Tables fit the console (:mod:`opdgeo.render_fit`): numbers are never cut."""
    base = runs[0].summary["base"]
    fields = summary_fields()
    title = f"opdgeo compare  base: {printable(base)}"
    if console.width >= WIDE_LAYOUT_COLUMNS:
        columns = [Column("regime", [_regime(r.summary) for r in runs])]
        columns += [Column(header, [fmt(r.summary[key]) for r in runs])
                    for header, key, fmt in fields]  # fmt: skip
        labels: list[str | Text] = [Text(printable(r.summary["run"])) for r in runs]
        print_fitted(console, "run", labels, columns, title, settings_line)
    else:
        names = ["regime", *(header.replace("\n", " ") for header, _, _ in fields)]
        columns = [
            Column(printable(r.summary["run"]),
                   [_regime(r.summary), *(fmt(r.summary[key]) for _, key, fmt in fields)])
            for r in runs
        ]  # fmt: skip
        print_fitted(console, "", list(names), columns, title, settings_line)
    for run in runs:
        _render_reasons(console, run)
        _render_experts(console, run)
    if len(runs) > 1 and any("order_mean" in r.summary for r in runs):
        _render_order(console, runs)
    _render_skipped(console, runs)


def concentration(modules: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], float]]:
    """Module types with their update energy per parameter: share of the update energy over
    share of the parameters (1 = as much as its size predicts), highest first."""
    total = sum(int(g["n_params"]) for g in modules) or 1
    out = []
    for g in modules:
        energy = math.nan if _missing(g.get("energy_share")) else float(g["energy_share"])
        share = int(g["n_params"]) / total
        ratio = energy / share if share > 0 else math.nan
        out.append((g, ratio))
    return sorted(out, key=lambda item: -item[1] if not math.isnan(item[1]) else math.inf)


def _params(n: Any) -> str:
    n = int(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _render_reasons(console: Console, run: RunResult) -> None:
    s = run.summary
    style = REGIME_STYLE.get(s["regime"], "")
    console.print()
    console.print(
        Text.assemble(
            f"{printable(s['run'])}: ",
            (s["regime"], style),
            f"  (confidence {s['confidence']:.2f})",
        )
    )
    for reason in run.verdict.reasons:
        console.print(Text(_hanging(reason, "  - ", console.width)), soft_wrap=True)
    for caveat in run.verdict.caveats:
        console.print(Text(_hanging(caveat, "  ! ", console.width), style="yellow"),
                      soft_wrap=True)  # fmt: skip
    mods = concentration(run.modules)[:TOP_MODULES]
    if not mods:
        return
    columns = [Column("energy/param", [_ratio(x) for _, x in mods]),
               Column("params", [_params(g["n_params"]) for g, _ in mods])]  # fmt: skip
    columns += [Column(header, [fmt(g[key]) for g, _ in mods]) for header, key, fmt in
                module_fields()]  # fmt: skip
    print_fitted(console, "module", [Text(printable(g["group"])) for g, _ in mods], columns,
                 "top-changed module types (per parameter: update energy share / parameter "
                 "share)")  # fmt: skip


def _hanging(text: str, lead: str, width: int) -> str:
    """``text`` after ``lead``, wrapped between words to ``width`` with a hanging indent."""
    return textwrap.fill(text, width=max(width, 40), initial_indent=lead,
                         subsequent_indent=" " * len(lead), break_long_words=False,
                         break_on_hyphens=False)  # fmt: skip


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"


def _render_experts(console: Console, run: RunResult) -> None:
    """One line on MoE experts: count, spread of the update, most- and least-changed."""
    s = run.summary
    if not s.get("n_experts"):
        return
    rel = {g["group"]: g.get("rel_norm") for g in run.experts}
    most, least = s["expert_most_changed"], s["expert_least_changed"]
    console.print(
        Text(
            f"experts: {s['n_experts']} per layer in {s['n_moe_layers']} MoE layer(s); the top "
            f"10% hold {_pct(s['expert_energy_top10_share'])} of the expert update energy; "
            f"most changed {most} (rel norm {_num(rel.get(most))}), least changed {least} "
            f"(rel norm {_num(rel.get(least))})"
        ),
        soft_wrap=True,
    )


def _render_order(console: Console, runs: Sequence[RunResult]) -> None:
    columns = ("order_sparsity_bf16", "order_lowmag_enrichment", "order_principal_angle_deg",
               "order_nss", "order_mean")  # fmt: skip
    console.print()
    print_fitted(
        console, "run", [Text(printable(r.summary["run"])) for r in runs],
        [Column(c.removeprefix("order_"), ["-" if _missing(r.summary.get(c)) else
                                           _num(r.summary.get(c)) for r in runs])
         for c in columns],
        "relative order on each feature (1 = most SFT-like; expected SFT < OPD < RLVR)",
    )  # fmt: skip
    w = runs[0].summary.get("order_concordance")
    if isinstance(w, float) and not math.isnan(w):
        console.print(f"feature concordance (Kendall's W): {w:.2f}")


def _render_skipped(console: Console, runs: Sequence[RunResult]) -> None:
    for run in runs:
        skipped = run.skipped
        if not skipped:
            continue
        console.print()
        label = printable(run.summary["run"])
        console.print(Text(f"{label}: {len(skipped)} tensor(s) not compared", style="yellow"))
        for item in skipped[:MAX_SKIPPED_SHOWN]:
            line = f"  {printable(item['tensor'])}: {printable(item['reason'])}"
            console.print(Text(line), soft_wrap=True, highlight=False)
        if len(skipped) > MAX_SKIPPED_SHOWN:
            console.print(f"  ... and {len(skipped) - MAX_SKIPPED_SHOWN} more (see --per-tensor)")


def csv_text(frame: pd.DataFrame) -> str:
    """CSV with full float precision (no silent rounding)."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, allow_nan=False, default=str) + "\n"


def render_inspect(console: Console, info: Inspection) -> None:
    """Header-only listing of one checkpoint."""
    doc = info.document
    title = (
        f"{printable(info.label)}: {doc['n_tensors']} tensors, {doc['n_params']:,} params, "
        f"{doc['nbytes'] / 1e6:.1f} MB, {', '.join(doc['dtypes'])}"
    )
    if doc["remote_bytes"]:
        title += (
            f"; {doc['remote_bytes'] / 1e9:.2f} GB on the Hub, "
            f"{doc['cached_bytes'] / 1e9:.2f} GB cached"
        )
    table = Table(title=Text(title))
    decoding = bool(info.frame["decoding"].astype(bool).any())  # quantized weights, adapters
    for col in ("tensor", "dtype", "shape", "numel", "file", *(("decoding",) if decoding else ())):
        table.add_column(col, justify="right" if col == "numel" else "left")
    for row in info.frame.itertuples():
        table.add_row(
            Text(printable(row.tensor)), str(row.dtype), str(row.shape), f"{row.numel:,}",
            Text(printable(row.file)), *((Text(printable(row.decoding)),) if decoding else ()),
        )  # fmt: skip
    console.print(table)
    experts = doc.get("experts") or {}
    if experts.get("n_moe_layers"):
        details = sorted({b["detail"] for b in experts["blocks"] if b["detail"]})
        console.print(Text(
            f"experts: {experts['n_experts']} per layer in {experts['n_moe_layers']} MoE "
            f"layer(s), {'+'.join(experts['layouts'])}"
            + (f" ({'; '.join(details)})" if details else "")
        ), soft_wrap=True)  # fmt: skip


def render_trajectory(console: Console, runs: Sequence[RunResult]) -> None:
    """Per-checkpoint trajectory columns and the locking verdict."""
    columns = ("step", "stable_rank", "update_norm", "hill_alpha", "sim_final",
               "jaccard_prev", "jaccard_final")  # fmt: skip
    labels: list[str | Text] = [Text(printable(r.summary.get("label", r.summary["run"])))
                                for r in runs]  # fmt: skip
    console.print()
    print_fitted(console, "checkpoint", labels,
                 [Column(c.replace("_", " "), [_num(r.summary.get(c)) for r in runs])
                  for c in columns], "trajectory (cumulative update from the base)")  # fmt: skip
    last = runs[-1].summary
    if last.get("locking"):
        console.print(f"locking: {last['locking']}  ({last.get('locking_reasons', '')})")
