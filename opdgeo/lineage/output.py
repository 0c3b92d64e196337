"""Tables and documents of a lineage result, for the CLI's ``--format table|csv|json``.

- :func:`lineage_frame`: one row per pair (CSV);
- :func:`lineage_tests_frame`, :func:`lineage_layers_frame`, :func:`lineage_identity_frame`:
  per-test, per-block and per-tensor detail;
- :func:`lineage_matrix`: the all-pairs matrix (``-log10 p``, effect or verdict);
- :func:`lineage_json`: everything, JSON-ready;
- :func:`render_lineage`: the human report on a rich console.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from opdgeo.lineage.records import LineageResult, PairResult
from opdgeo.text import markup_safe, printable

SCHEMA_VERSION = 1
VERDICT_STYLE = {
    "same-weights": "bold blue",
    "derived": "bold red",
    "independent": "bold green",
    "inconclusive": "bold yellow",
}


def lineage_frame(result: LineageResult) -> pd.DataFrame:
    """One row per compared pair (see ``PairResult.summary``)."""
    return pd.DataFrame([p.summary() for p in result.pairs])


def lineage_tests_frame(result: LineageResult) -> pd.DataFrame:
    """One row per test of every pair."""
    rows = [{"pair_a": p.a, "pair_b": p.b, **dataclasses.asdict(t)} for p in result.pairs
            for t in p.tests]  # fmt: skip
    return pd.DataFrame(rows)


def lineage_layers_frame(result: LineageResult) -> pd.DataFrame:
    """One row per block (and embedding / head) of every pair."""
    rows = []
    for p in result.pairs:
        for e in p.layers:
            row = dataclasses.asdict(e)
            row["tests"] = ";".join(e.tests)
            rows.append({"pair_a": p.a, "pair_b": p.b, **row})
    return pd.DataFrame(rows)


def lineage_identity_frame(result: LineageResult) -> pd.DataFrame:
    """One row per name-paired tensor of every pair: identity on the rows read."""
    rows = []
    for p in result.pairs:
        for i in p.identity:
            row = dataclasses.asdict(i)
            row["shape_a"] = "x".join(map(str, i.shape_a))
            row["shape_b"] = "x".join(map(str, i.shape_b))
            rows.append({"pair_a": p.a, "pair_b": p.b, **row})
    return pd.DataFrame(rows)


def lineage_matrix(result: LineageResult, value: str = "neg_log10_p") -> pd.DataFrame:
    """Square matrix over the checkpoints: ``neg_log10_p`` (capped at 300), ``effect`` or
    ``verdict``; the diagonal is +inf / 1 / ``self``, pairs that failed are empty."""
    labels = result.labels
    cells: dict[tuple[str, str], Any] = {}
    for p in result.pairs:
        if value == "neg_log10_p":
            v: Any = min(300.0, -p.log10_p)
        elif value == "effect":
            v = p.effect
        elif value == "verdict":
            v = p.verdict
        else:
            raise ValueError(f"unknown matrix value {value!r}")
        cells[(p.a, p.b)] = cells[(p.b, p.a)] = v
    diag = {"neg_log10_p": math.inf, "effect": 1.0, "verdict": "self"}[value]
    empty: Any = "" if value == "verdict" else math.nan
    data = [[diag if a == b else cells.get((a, b), empty) for b in labels] for a in labels]
    return pd.DataFrame(data, index=labels, columns=labels)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def pair_document(p: PairResult) -> dict[str, Any]:
    doc = p.summary()
    doc["reasons"] = p.reasons
    doc["decided_by"] = p.decided_by
    doc["notes"] = p.notes
    doc["layers"] = [dataclasses.asdict(e) for e in p.layers]
    doc["tests"] = [dataclasses.asdict(t) for t in p.tests]
    doc["identity"] = [dataclasses.asdict(i) for i in p.identity]
    return _clean(doc)  # type: ignore[no-any-return]


def lineage_json(result: LineageResult, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole result as a JSON-ready document (``json.dumps`` it)."""
    return {
        "schema_version": SCHEMA_VERSION,
        **(meta or {}),
        "settings": result.settings,
        "checkpoints": result.labels,
        "pairs": [pair_document(p) for p in result.pairs],
        "errors": [
            {"a": result.labels[i], "b": result.labels[j], "error": msg}
            for (i, j), msg in sorted(result.errors.items())
        ],
        "matrix_neg_log10_p": _clean(lineage_matrix(result).to_numpy().tolist()),
    }


def _p_text(log10_p: float) -> str:
    if log10_p > -3:
        return f"{10**log10_p:.3f}"
    return f"1e{log10_p:.0f}" if log10_p < -300 else f"{10**log10_p:.1e}"


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"


def render_lineage(console: Console, result: LineageResult) -> None:
    """Summary table (one row per pair), then each pair's reasons and block evidence.

    Labels, reasons and notes hold paths and tensor names (data from files): rich markup in
    them is escaped and control characters are shown as escapes (:mod:`opdgeo.text`)."""
    table = Table(title="opdgeo lineage")
    for header in ("A", "B", "verdict", "p", "effect", "tests", "blocks shared", "read"):
        table.add_column(header, justify="left" if header in ("A", "B", "verdict") else "right")
    for p in result.pairs:
        blocks = [e for e in p.layers if e.part.startswith("layer ")]
        shared = sum(e.status in ("shared", "identical") for e in blocks)
        table.add_row(
            Text(printable(p.a)), Text(printable(p.b)),
            Text(p.verdict, style=VERDICT_STYLE.get(p.verdict, "")),
            _p_text(p.log10_p), f"{p.effect:.2f}", str(p.n_tests),
            f"{shared}/{len(blocks)}" if blocks else "-",
            f"{_gb(p.bytes_read)} ({100 * p.read_fraction:.1f}%)",
        )  # fmt: skip
    console.print(table)
    for p in result.pairs:
        console.print(Text("\n" + printable(f"{p.a} -> {p.b}: {p.verdict}"), style="bold"))
        for line in p.reasons:
            console.print(f"  - {markup_safe(line)}")
        if p.decided_by:
            console.print("  decided by: " + markup_safe("; ".join(p.decided_by)))
        console.print(f"  residual alignment: {markup_safe(p.alignment)}")
        for note in p.notes:
            console.print(f"  ! {markup_safe(note)}")
    for (i, j), msg in sorted(result.errors.items()):
        pair = f"{result.labels[i]} vs {result.labels[j]}: {msg}"
        console.print(f"[yellow]{markup_safe(pair)}[/yellow]")
