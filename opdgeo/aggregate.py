"""Pool per-tensor records into whole-model, per-module-type and per-layer summaries.

Pooling rules (output contract; OPDG App. C.3):

* sparsity columns are parameter-weighted: Σ unchanged / Σ numel;
* ``rel_norm = sqrt(Σ ‖ΔW‖_F²) / sqrt(Σ ‖W0‖_F²)``;
* spectral columns are unweighted over the 2-D matrices that ran the spectral metrics:
  median for ``principal_angle_deg`` and ``principal_energy``, mean for ``nss``,
  ``principal_overlap``, ``lowmag_overlap`` and ``stable_rank``.

Tied rows (an lm_head paired with an embedding) and skipped tensors never enter the totals.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import pandas as pd

from opdgeo.engine import method_text

SCHEMA_VERSION = 1

GROUP_COLUMNS = (
    "n_tensors",
    "n_params",
    "sparsity_bf16",
    "sparsity_atol",
    "rel_norm",
    "energy_share",
    "principal_angle_deg",
    "nss",
    "principal_energy",
    "principal_overlap",
    "lowmag_overlap",
    "stable_rank",
)


def _wmean(values: pd.Series, weights: pd.Series) -> float:
    total = float(weights.sum())
    return float((values * weights).sum()) / total if total > 0 else math.nan


def _nan_stat(values: pd.Series, how: str) -> float:
    clean = values.astype(float).dropna()
    if clean.empty:
        return math.nan
    return float(clean.median() if how == "median" else clean.mean())


def compared(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that count towards totals: compared (not skipped) and not tied duplicates."""
    if frame.empty:
        return frame
    return frame[(frame["skipped"] == "") & (~frame["tied"].astype(bool))]


def pool(rows: pd.DataFrame, total_delta2: float | None = None) -> dict[str, Any]:
    """Pooled metrics over ``rows`` (already restricted to compared, untied tensors)."""
    numel = rows["numel"].astype(float)
    delta2 = float((rows["delta_fro"].astype(float) ** 2).sum())
    base2 = float((rows["base_fro"].astype(float) ** 2).sum())
    mats = rows[rows["spectral_skipped"].isna()]
    out: dict[str, Any] = {
        "n_tensors": len(rows),
        "n_params": int(numel.sum()),
        "n_matrices": len(mats),
        "sparsity_bf16": float(rows["unchanged_bf16"].sum()) / numel.sum()
        if len(rows)
        else math.nan,
        "sparsity_atol": float(rows["unchanged_atol"].sum()) / numel.sum()
        if len(rows)
        else math.nan,
        "sparsity_atol_strict": _wmean(rows["sparsity_atol_strict"], numel),
        "sparsity_exact": _wmean(rows["sparsity_exact"], numel),
        "rel_norm": math.sqrt(delta2 / base2) if base2 > 0 else math.nan,
        "rel_norm_median": _nan_stat(
            rows.loc[rows["shape"].str.count("x") == 1, "rel_norm"], "median"
        ),
        "delta_fro": math.sqrt(delta2),
        "max_abs_delta": float(rows["max_abs_delta"].max()) if len(rows) else math.nan,
        "principal_angle_deg": _nan_stat(mats["angle_left_mean_deg"], "median"),
        "principal_angle_right_deg": _nan_stat(mats["angle_right_mean_deg"], "median"),
        "principal_angle_max_deg": _nan_stat(mats["angle_left_max_deg"], "median"),
        "nss": _nan_stat(mats["nss"], "mean"),
        "nss_median": _nan_stat(mats["nss"], "median"),
        "principal_energy": _nan_stat(mats["principal_energy"], "median"),
        "principal_energy_baseline": _nan_stat(mats["principal_energy_baseline"], "median"),
        "principal_overlap": _nan_stat(mats["principal_overlap"], "mean"),
        "lowmag_overlap": _nan_stat(mats["lowmag_overlap"], "mean"),
        "principal_notlow_overlap": _nan_stat(mats["principal_notlow_overlap"], "mean"),
        "overlap_baseline": _nan_stat(mats["overlap_baseline"], "mean"),
        "stable_rank": _nan_stat(mats["stable_rank"], "mean"),
        "n_nonfinite": int(rows["n_nonfinite"].sum()),
    }
    baseline = out["overlap_baseline"]
    out["lowmag_enrichment"] = (
        out["lowmag_overlap"] / baseline if baseline and not math.isnan(baseline) else math.nan
    )
    if total_delta2 is not None:
        out["energy_share"] = delta2 / total_delta2 if total_delta2 > 0 else math.nan
    return out


def _dominant(rows: pd.DataFrame, column: str) -> str:
    if rows.empty:
        return ""
    weights = rows.groupby(column)["numel"].sum().sort_values(ascending=False)
    return "+".join(str(d) for d in weights.index)


def summarize(frame: pd.DataFrame) -> dict[str, Any]:
    """The whole-model summary row of one run (``frame`` = that run's per-tensor records)."""
    rows = compared(frame)
    summary: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": str(frame["run"].iloc[0]),
        "base": str(frame["base"].iloc[0]),
    }
    summary.update(pool(rows))
    methods: dict[str, set[str]] = {}
    for text in rows["method"].dropna().unique():
        for part in str(text).split(";"):
            metric, sep, used = part.partition("=")
            if sep:
                methods.setdefault(metric, set()).update(used.split("+"))
    summary.update(
        n_skipped=int((frame["skipped"] != "").sum()),
        n_tied=int((frame["skipped"] == "").sum() - len(rows)),
        dtype_base=_dominant(rows, "dtype_base"),
        dtype_tuned=_dominant(rows, "dtype_tuned"),
        method=method_text(methods) or "elementwise",
    )
    return summary


def groups(frame: pd.DataFrame, by: str) -> list[dict[str, Any]]:
    """Pooled metrics per module type (``by="module"``) or per layer (``by="layer"``)."""
    rows = compared(frame)
    total2 = float((rows["delta_fro"].astype(float) ** 2).sum())
    keyed = rows[rows[by].notna()] if by == "layer" else rows
    out = []
    for key, part in keyed.groupby(by, sort=True):
        pooled = pool(part, total2)
        key_value: Any = int(cast(float, key)) if by == "layer" else str(key)
        out.append({"group_by": by, "group": key_value, **{c: pooled[c] for c in GROUP_COLUMNS}})
    return out


def clean(value: Any) -> Any:
    """JSON-safe scalar: numpy types to Python, NaN/inf to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
