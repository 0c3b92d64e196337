"""Pool per-tensor records into whole-model, per-module-type and per-layer summaries.

Every pooled column comes from the metric registry (:mod:`opdgeo.metrics`): each
:class:`~opdgeo.metrics.Summary` names a per-tensor column, a :class:`~opdgeo.metrics.Pool`
and the tensors it pools over, and each :class:`~opdgeo.metrics.Derived` value is computed
from pooled ones. This module only adds what belongs to a set of tensors rather than to a
metric: counts, dtypes, the merged ``method`` text and non-finite entries.

Tied rows (an lm_head paired with an embedding) and skipped tensors never enter the totals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from opdgeo.experts import expert_groups
from opdgeo.metrics import Over, Pool, derived, summaries
from opdgeo.records import ELEMENTWISE, IDENTITY_COLUMNS, TensorRecord, merge_methods, method_text
from opdgeo.records import clean as clean  # re-exported: reports import it from here

SCHEMA_VERSION = 1


def group_columns() -> list[str]:
    """Columns of the per-module / per-layer rows, in order."""
    pooled = [s.name for s in summaries() if s.group] + [d.name for d in derived() if d.group]
    return ["n_tensors", "n_params", *pooled]


def tensor_columns() -> list[str]:
    """All columns of the per-tensor CSV, in order."""
    from opdgeo.metrics import all_columns

    return [*IDENTITY_COLUMNS, *all_columns()]


def frame_of(records: Sequence[TensorRecord]) -> pd.DataFrame:
    """The per-tensor table of ``records`` (one row each, :func:`tensor_columns` in order)."""
    frame = pd.DataFrame([r.row() for r in records], columns=tensor_columns())
    frame["skipped"] = frame["skipped"].fillna("")
    frame["tied"] = frame["tied"].fillna(False).astype(bool)
    return frame


def compared(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that count towards totals: compared (not skipped) and not tied duplicates."""
    if frame.empty:
        return frame
    return frame[(frame["skipped"] == "") & (~frame["tied"].astype(bool))]


def _over(rows: pd.DataFrame, over: Over) -> np.ndarray:
    """Boolean mask of the rows a summary pools over."""
    if over is Over.MATRICES:
        return np.asarray(rows["spectral_skipped"].isna().to_numpy(), dtype=bool)
    if over is Over.TWO_D:
        return np.asarray((rows["shape"].astype(str).str.count("x") == 1).to_numpy(), dtype=bool)
    return np.ones(len(rows), dtype=bool)


def _floats(values: pd.Series) -> np.ndarray:
    """A column as float64 (None / NaN as NaN)."""
    return np.asarray(values.to_numpy(dtype=float, na_value=np.nan), dtype=float)


def _pool(x: np.ndarray, numel: np.ndarray, how: Pool, run_total_sq: float) -> float:
    defined = x[~np.isnan(x)]
    n = float(numel.sum())
    if how is Pool.SUM:
        return float(defined.sum())
    if how is Pool.MAX:
        return float(defined.max()) if len(defined) else math.nan
    if how is Pool.MEAN:
        return float(defined.mean()) if len(defined) else math.nan
    if how is Pool.MEDIAN:
        return float(np.median(defined)) if len(defined) else math.nan
    if how is Pool.PER_PARAM:
        return float(defined.sum()) / n if n > 0 else math.nan
    if how is Pool.WEIGHTED:
        return float(np.nansum(x * numel)) / n if n > 0 else math.nan
    if how is Pool.RSS:
        return math.sqrt(float((defined**2).sum()))
    if how is Pool.SHARE_OF_SQUARES:
        part = float((defined**2).sum())
        return part / run_total_sq if run_total_sq > 0 else math.nan
    raise ValueError(f"unknown pooling {how!r}")


def pool(rows: pd.DataFrame, run_rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Pooled metrics over ``rows`` (already restricted to compared, untied tensors);
    ``run_rows`` are the whole run's, for shares of the run (per-group rows). Works on numpy
    arrays (each column and row subset converted once): pandas indexing per summary made
    pooling the slowest step of small comparisons."""
    numel = _floats(rows["numel"])
    everything = rows if run_rows is None else run_rows
    masks = {over: _over(rows, over) for over in Over}
    out: dict[str, Any] = {
        "n_tensors": len(rows),
        "n_params": int(numel.sum()),
        "n_matrices": int(masks[Over.MATRICES].sum()),
    }
    for s in summaries():
        mask = masks[s.over]
        total_sq = 0.0
        if s.pool is Pool.SHARE_OF_SQUARES:
            total_sq = float(np.nansum(_floats(everything[s.column]) ** 2))
        out[s.name] = _pool(_floats(rows[s.column])[mask], numel[mask], s.pool, total_sq)
    for d in derived():
        out[d.name] = d.fn(out)
    out["n_nonfinite"] = int(rows["n_nonfinite"].fillna(0).sum())
    return out


def _dominant(rows: pd.DataFrame, column: str) -> str:
    if rows.empty:
        return ""
    weights = rows.groupby(column)["numel"].sum().sort_values(ascending=False)
    return "+".join(str(d) for d in weights.index)


def summarize(records: Sequence[TensorRecord], frame: pd.DataFrame) -> dict[str, Any]:
    """The whole-model summary row of one run (``frame`` = :func:`frame_of` its records)."""
    rows = compared(frame)
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": str(frame["run"].iloc[0]),
        "base": str(frame["base"].iloc[0]),
    }
    group_only = {s.name for s in summaries() if not s.summary}
    summary.update({k: v for k, v in pool(rows).items() if k not in group_only})
    counted = [r for r in records if not r.skipped and not r.tied]
    summary.update(
        n_skipped=int((frame["skipped"] != "").sum()),
        n_tied=int((frame["skipped"] == "").sum() - len(rows)),
        dtype_base=_dominant(rows, "dtype_base"),
        dtype_tuned=_dominant(rows, "dtype_tuned"),
        method=method_text(merge_methods(r.methods for r in counted)) or ELEMENTWISE,
    )
    return summary


def groups(frame: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    """Pooled metrics per module type (``by="module"``), per layer (``by="layer"``) or per
    MoE expert (``by="expert"``: one row per layer x expert, group ``L3.E7``, with
    ``expert_layer`` and ``expert`` columns; see :mod:`opdgeo.experts`)."""
    rows = compared(frame)
    if by == "expert":
        return expert_groups(rows, group_columns(), pool)
    keyed = rows[rows[by].notna()] if by == "layer" else rows
    columns = group_columns()
    out = []
    for key, part in keyed.groupby(by, sort=True):
        pooled = pool(part, rows)
        key_value: Any = int(cast(float, key)) if by == "layer" else str(key)
        out.append({"group_by": by, "group": key_value, **{c: pooled[c] for c in columns}})
    return out
