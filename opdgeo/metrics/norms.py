"""Update norms (papers.md D9)."""

from __future__ import annotations

import math

import torch

from opdgeo.metrics import metric
from opdgeo.pair import TensorPair


@metric("update_norms", columns=("delta_fro", "base_fro", "rel_norm", "max_abs_delta"))
def update_norms(pair: TensorPair) -> dict[str, float]:
    """Frobenius norms of the update and the base, their ratio, and the largest change.

    ``delta_fro = ‖ΔW‖_F``, ``base_fro = ‖W0‖_F``, ``rel_norm = ‖ΔW‖_F / ‖W0‖_F`` (NaN when
    W0 = 0), ``max_abs_delta = max |ΔW_ij|``. ΔW is formed in float32 from the stored values
    (float64 if either side is float64); norms are accumulated in float64.
    """
    base = float(torch.linalg.vector_norm(pair.w0, dtype=torch.float64)) if pair.numel else 0.0
    if pair.identical:
        delta, max_abs = 0.0, 0.0
    else:
        delta = math.sqrt(pair.delta_fro2)
        max_abs = float(pair.delta.abs().max())
    rel = delta / base if base > 0 else (0.0 if delta == 0 else float("nan"))
    return {"delta_fro": delta, "base_fro": base, "rel_norm": rel, "max_abs_delta": max_abs}
