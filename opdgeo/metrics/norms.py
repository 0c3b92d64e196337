"""Update norms (papers.md D9)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from opdgeo.metrics.registry import Derived, Over, Pool, Summary, metric
from opdgeo.pair import TensorPair


def _rel_norm(pooled: Mapping[str, float]) -> float:
    """sqrt(Σ ‖ΔW‖_F²) / sqrt(Σ ‖W0‖_F²) over the pooled tensors (NaN when the base is 0)."""
    base = pooled["base_fro"]
    return pooled["delta_fro"] / base if base > 0 else math.nan


@metric(
    "update_norms",
    columns=("delta_fro", "base_fro", "rel_norm", "max_abs_delta"),
    summaries=(
        Summary("delta_fro", "delta_fro", Pool.RSS),
        Summary("base_fro", "base_fro", Pool.RSS),
        Summary("energy_share", "delta_fro", Pool.SHARE_OF_SQUARES, group=True, summary=False,
                group_label="energy share", percent=True),
        Summary("rel_norm_median", "rel_norm", Pool.MEDIAN, Over.TWO_D),
        Summary("max_abs_delta", "max_abs_delta", Pool.MAX),
    ),
    derived=(
        Derived("rel_norm", _rel_norm, group=True, label="rel\nnorm", group_label="rel norm"),
    ),
)  # fmt: skip
def update_norms(pair: TensorPair) -> dict[str, float]:
    """Frobenius norms of the update and the base, their ratio, and the largest change.

    ``delta_fro = ‖ΔW‖_F``, ``base_fro = ‖W0‖_F``, ``rel_norm = ‖ΔW‖_F / ‖W0‖_F`` (0 when both
    are 0, NaN when only W0 is), ``max_abs_delta = max |ΔW_ij|``. ΔW is formed in float32 from
    the stored values (float64 if either side is float64) chunk by chunk; the squares are
    accumulated in float64. Entries that are NaN/Inf on either side are left out of all four
    (``n_nonfinite`` counts them), so one bad value cannot poison the model totals.
    """
    stats = pair.elementwise
    delta, base = math.sqrt(stats.delta_sq), math.sqrt(stats.base_sq)
    rel = delta / base if base > 0 else (0.0 if delta == 0 else math.nan)
    return {
        "delta_fro": delta,
        "base_fro": base,
        "rel_norm": rel,
        "max_abs_delta": stats.max_abs_delta,
    }
