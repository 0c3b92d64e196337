"""Per-expert views of a MoE comparison: one pooled row per layer x expert, and the spread of
the update over experts for the summary.

Experts are recognised by name (``...experts.<e>.``, :func:`opdgeo.naming.expert_index`), so
per-expert checkpoints and fused ones (split by :mod:`opdgeo.io.experts`) give the same rows.
An expert's row pools its gate, up and down matrices (and biases, where stored) like any group
(:func:`opdgeo.aggregate.pool`, passed in by :func:`opdgeo.aggregate.groups`, so this module
imports nothing of aggregate's); shared experts and routers are not experts here (module types
``shared_expert`` and ``router``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import pandas as pd

from opdgeo.naming import expert_index

TOP_SHARE = 0.10
"""``expert_energy_top10_share``: the share of the expert update energy in this fraction of
the (layer, expert) units with the largest ||dW||_F^2."""


def expert_label(layer: int | None, expert: int) -> str:
    """``L3.E7`` (``E7`` outside numbered layers)."""
    return f"E{expert}" if layer is None else f"L{layer}.E{expert}"


Pooling = Callable[[pd.DataFrame, pd.DataFrame], dict[str, Any]]
"""``pool(group rows, run rows)``: :func:`opdgeo.aggregate.pool`."""


def expert_groups(rows: pd.DataFrame, columns: list[str], pool: Pooling) -> list[dict[str, Any]]:
    """One row per (layer, expert) of the compared, untied ``rows``, pooled by ``pool``."""
    if rows.empty:
        return []
    experts = rows["tensor"].map(expert_index)
    keyed = rows[experts.notna()].assign(
        _expert=experts[experts.notna()].astype(int),
        _layer=rows["layer"].fillna(-1).astype(int),
    )
    out = []
    for key, part in keyed.groupby(["_layer", "_expert"], sort=True):
        layer, expert = (int(cast(int, k)) for k in cast(tuple[Any, Any], key))
        pooled = pool(part.drop(columns=["_layer", "_expert"]), rows)
        lay = None if layer < 0 else layer
        out.append({
            "group_by": "expert", "group": expert_label(lay, expert),
            "expert_layer": lay, "expert": expert, **{c: pooled[c] for c in columns},
            "delta_fro": pooled["delta_fro"],
        })  # fmt: skip
    return out


def expert_summary(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary columns from the expert rows: ``n_experts`` (experts per MoE layer, the most
    any layer has), ``n_moe_layers``, ``expert_energy_top10_share`` (share of the experts'
    Σ||dW||_F² held by the top 10 % of (layer, expert) units, at least one; 0.1 when the
    update is spread evenly, 1 when one unit in ten holds it all) and the most- and
    least-changed experts by relative norm ``||dW||_F / ||W0||_F``."""
    if not groups:
        return {"n_experts": 0, "n_moe_layers": 0, "expert_energy_top10_share": math.nan,
                "expert_most_changed": "", "expert_least_changed": ""}  # fmt: skip
    per_layer: dict[Any, set[int]] = {}
    for g in groups:
        per_layer.setdefault(g["expert_layer"], set()).add(g["expert"])
    energy = sorted((_num(g.get("delta_fro")) ** 2 for g in groups), reverse=True)
    energy = [e for e in energy if math.isfinite(e)]
    total = sum(energy)
    top = max(1, math.ceil(TOP_SHARE * len(energy)))
    share = sum(energy[:top]) / total if total > 0 else math.nan
    ranked = sorted((g for g in groups if math.isfinite(_num(g.get("rel_norm")))),
                    key=lambda g: _num(g["rel_norm"]))  # fmt: skip
    return {
        "n_experts": max(len(v) for v in per_layer.values()),
        "n_moe_layers": len(per_layer),
        "expert_energy_top10_share": share,
        "expert_most_changed": ranked[-1]["group"] if ranked else "",
        "expert_least_changed": ranked[0]["group"] if ranked else "",
    }


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
