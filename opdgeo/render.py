"""Output: the rich terminal report, CSV and JSON writers, and atomic file output."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from opdgeo.io import Checkpoint
from opdgeo.report import RunResult

REGIME_STYLE = {
    "sft-like": "bold red",
    "opd-like": "bold magenta",
    "rlvr-like": "bold green",
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


SUMMARY_FIELDS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("conf", "confidence", lambda x: f"{float(x):.2f}"),
    ("params", "n_params", lambda x: _params(x)),
    ("sparsity\nbf16", "sparsity_bf16", _pct),
    ("sparsity\natol", "sparsity_atol", _pct),
    ("rel\nnorm", "rel_norm", _num),
    ("angle\n(deg)", "principal_angle_deg", _num),
    ("NSS", "nss", _num),
    ("princ.\nenergy", "principal_energy", _pct),
    ("princ.\noverlap", "principal_overlap", _pct),
    ("low-mag\noverlap", "lowmag_overlap", _pct),
    ("stable\nrank", "stable_rank", _num),
)
WIDE_LAYOUT_COLUMNS = 140
"""Below this terminal width the summary is transposed: one column per run."""


def _regime(s: dict[str, Any]) -> Text:
    return Text(s["regime"], style=REGIME_STYLE.get(s["regime"], ""))


def render_table(console: Console, runs: Sequence[RunResult], settings_line: str) -> None:
    """Print the human report: summary table, reasons, top modules, relative order, skipped."""
    base = runs[0].summary["base"]
    table = Table(title=f"opdgeo compare  base: {base}", caption=settings_line)
    if console.width >= WIDE_LAYOUT_COLUMNS:
        table.add_column("run")
        table.add_column("regime")
        for header, _, _ in SUMMARY_FIELDS:
            table.add_column(header, justify="right")
        for run in runs:
            s = run.summary
            table.add_row(
                str(s["run"]), _regime(s), *(fmt(s[key]) for _, key, fmt in SUMMARY_FIELDS)
            )
    else:
        table.add_column("")
        for run in runs:
            table.add_column(str(run.summary["run"]), justify="right")
        table.add_row("regime", *(_regime(r.summary) for r in runs))
        for header, key, fmt in SUMMARY_FIELDS:
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
            f"{s['run']}: ", (s["regime"], style), f"  (confidence {s['confidence']:.2f})"
        )
    )
    for reason in run.verdict.reasons:
        console.print(f"  - {reason}", soft_wrap=True)
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
    for header in (
        "module",
        "params",
        "energy share",
        "sparsity bf16",
        "rel norm",
        "angle (deg)",
        "low-mag overlap",
        "stable rank",
    ):
        table.add_column(header, justify="left" if header == "module" else "right")
    for g in mods[:TOP_MODULES]:
        table.add_row(
            str(g["group"]),
            _params(g["n_params"]),
            _pct(g["energy_share"]),
            _pct(g["sparsity_bf16"]),
            _num(g["rel_norm"]),
            _num(g["principal_angle_deg"]),
            _pct(g["lowmag_overlap"]),
            _num(g["stable_rank"]),
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
            str(s["run"]), *("-" if _missing(s.get(c)) else _num(s.get(c)) for c in columns)
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
        console.print(f"[yellow]{run.summary['run']}: {len(skipped)} tensor(s) not compared[/]")
        for item in skipped[:MAX_SKIPPED_SHOWN]:
            console.print(f"  {item['tensor']}: {item['reason']}", soft_wrap=True, highlight=False)
        if len(skipped) > MAX_SKIPPED_SHOWN:
            console.print(f"  ... and {len(skipped) - MAX_SKIPPED_SHOWN} more (see --per-tensor)")


def csv_text(frame: pd.DataFrame) -> str:
    """CSV with full float precision (no silent rounding)."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue()


def json_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, allow_nan=False, default=str) + "\n"


def render_inspect(console: Console, ckpt: Checkpoint, frame: pd.DataFrame) -> None:
    """Header-only listing of one checkpoint."""
    title = (
        f"{ckpt.label}: {len(frame)} tensors, {ckpt.n_params:,} params, "
        f"{ckpt.nbytes / 1e6:.1f} MB, {', '.join(ckpt.dtypes)}"
    )
    total, cached = ckpt.download_bytes()
    if total:
        title += f"; {total / 1e9:.2f} GB on the Hub, {cached / 1e9:.2f} GB cached"
    table = Table(title=title)
    for col in ("tensor", "dtype", "shape", "numel", "file"):
        table.add_column(col, justify="right" if col == "numel" else "left")
    for row in frame.itertuples():
        table.add_row(
            str(row.tensor), str(row.dtype), str(row.shape), f"{row.numel:,}", str(row.file)
        )
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
        table.add_row(str(s.get("label", s["run"])), *(_num(s.get(c)) for c in columns))
    console.print()
    console.print(table)
    last = runs[-1].summary
    if last.get("locking"):
        console.print(f"locking: {last['locking']}  ({last.get('locking_reasons', '')})")
