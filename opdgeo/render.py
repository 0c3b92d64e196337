"""Output: the rich terminal report, CSV and JSON writers, and atomic file output."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from opdgeo.report import RunResult
from opdgeo.text import printable

if TYPE_CHECKING:
    from opdgeo.api import Inspection

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
    """Print the human report: summary table, reasons, top modules, relative order, skipped."""
    base = runs[0].summary["base"]
    fields = summary_fields()
    table = Table(title=Text(f"opdgeo compare  base: {printable(base)}"), caption=settings_line)
    if console.width >= WIDE_LAYOUT_COLUMNS:
        table.add_column("run")
        table.add_column("regime")
        for header, _, _ in fields:
            table.add_column(header, justify="right")
        for run in runs:
            s = run.summary
            table.add_row(
                Text(printable(s["run"])), _regime(s), *(fmt(s[key]) for _, key, fmt in fields)
            )
    else:
        table.add_column("")
        for run in runs:
            table.add_column(Text(printable(run.summary["run"])), justify="right")
        table.add_row("regime", *(_regime(r.summary) for r in runs))
        for header, key, fmt in fields:
            table.add_row(header.replace("\n", " "), *(fmt(r.summary[key]) for r in runs))
    console.print(table)
    for run in runs:
        _render_reasons(console, run)
    if len(runs) > 1 and any("order_mean" in r.summary for r in runs):
        _render_order(console, runs)
    _render_skipped(console, runs)


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
        console.print(Text(f"  - {reason}"), soft_wrap=True)
    for caveat in run.verdict.caveats:
        console.print(Text(f"  ! {caveat}", style="yellow"), soft_wrap=True)
    mods = sorted(
        run.modules, key=lambda g: -(g["energy_share"] if not _missing(g["energy_share"]) else -1)
    )
    if not mods:
        return
    table = Table(
        title="top-changed module types (by share of update energy)", title_justify="left"
    )
    columns = module_fields()
    table.add_column("module", justify="left")
    table.add_column("params", justify="right")
    for header, _, _ in columns:
        table.add_column(header, justify="right")
    for g in mods[:TOP_MODULES]:
        table.add_row(
            Text(printable(g["group"])),
            _params(g["n_params"]),
            *(fmt(g[key]) for _, key, fmt in columns),
        )
    console.print(table)


def _render_order(console: Console, runs: Sequence[RunResult]) -> None:
    table = Table(
        title="relative order on each feature (1 = most SFT-like; expected SFT < OPD < RLVR)",
        title_justify="left",
    )
    columns = (
        "order_sparsity_bf16",
        "order_lowmag_enrichment",
        "order_principal_angle_deg",
        "order_nss",
        "order_mean",
    )
    table.add_column("run")
    for c in columns:
        table.add_column(c.removeprefix("order_"), justify="right")
    for run in runs:
        s = run.summary
        table.add_row(
            Text(printable(s["run"])),
            *("-" if _missing(s.get(c)) else _num(s.get(c)) for c in columns),
        )
    console.print()
    console.print(table)
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


def render_trajectory(console: Console, runs: Sequence[RunResult]) -> None:
    """Per-checkpoint trajectory columns and the locking verdict."""
    table = Table(title="trajectory (cumulative update from the base)", title_justify="left")
    columns = ("step", "stable_rank", "update_norm", "hill_alpha", "sim_final",
               "jaccard_prev", "jaccard_final")  # fmt: skip
    table.add_column("checkpoint")
    for c in columns:
        table.add_column(c.replace("_", " "), justify="right")
    for run in runs:
        s = run.summary
        label = Text(printable(s.get("label", s["run"])))
        table.add_row(label, *(_num(s.get(c)) for c in columns))
    console.print()
    console.print(table)
    last = runs[-1].summary
    if last.get("locking"):
        console.print(f"locking: {last['locking']}  ({last.get('locking_reasons', '')})")
