"""Update size against bf16 resolution, and the geometric features per unit of update.

bf16 sparsity, low-magnitude enrichment, NSS and the principal angle all grow or shrink with
the size of the update (learning rate x steps) whatever the algorithm (zoo/ANALYSIS.md): a
bf16 weight changes only when its cumulative update passes half its bf16 spacing (PNT
Lemma E.2). ``update_ulp_ratio`` puts a number on that axis, and the derived ratios divide
the geometric features by ``rel_norm`` so that runs of different sizes can be compared. The
classifier (:mod:`opdgeo.regimes`) uses the first to decide when sparsity can carry evidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from opdgeo.metrics.registry import Derived, Over, Pool, Summary, metric
from opdgeo.pair import CHUNK, TensorPair, bf16_bits, bf16_unchanged

NAN = float("nan")
# bf16 keeps 8 significant bits: for |w| = m * 2**e with m in [0.5, 1), the spacing is
# 2**(e - 8), half of it 2**(e - 9). Below the smallest normal (2**-126) the spacing is the
# subnormal step 2**-133.
_MIN_HALF_SPACING_EXP = -134


def half_spacing(w: torch.Tensor) -> torch.Tensor:
    """Half the bf16 spacing at each value of ``w`` (float32): the rounding boundary."""
    rounded = w.to(torch.bfloat16).to(torch.float32)
    _, exponent = torch.frexp(rounded)
    exponent = torch.where(rounded == 0, _MIN_HALF_SPACING_EXP + 9, exponent)
    return torch.ldexp(
        torch.ones_like(rounded), (exponent - 9).clamp_(min=_MIN_HALF_SPACING_EXP).to(torch.float32)
    )


def _ratio(pooled: Mapping[str, float], num: str, den: str) -> float:
    a, b = pooled.get(num, NAN), pooled.get(den, NAN)
    if not (isinstance(a, float | int) and isinstance(b, float | int)):
        return NAN
    return float(a) / float(b) if b and math.isfinite(b) and b > 0 else NAN


def _drift_ratio(pooled: Mapping[str, float]) -> float:
    """``nss / rel_norm``: spectral shift per unit of relative update."""
    return _ratio(pooled, "nss", "rel_norm")


def _angle_per_rel_norm(pooled: Mapping[str, float]) -> float:
    """``principal_angle_deg / rel_norm``: subspace rotation (degrees) per unit of update."""
    return _ratio(pooled, "principal_angle_deg", "rel_norm")


def _energy_ratio(pooled: Mapping[str, float]) -> float:
    """``principal_energy / principal_energy_baseline``: 1 = as aligned as a random update."""
    return _ratio(pooled, "principal_energy", "principal_energy_baseline")


@metric(
    "update_ulp_ratio",
    columns=("update_ulp_ratio",),
    tiers=("fast", "standard", "exact"),  # the scan tier reads at disk speed: no gathers / medians
    summaries=(
        Summary("update_ulp_ratio", "update_ulp_ratio", Pool.MEDIAN, Over.TWO_D, group=True),
    ),
    derived=(
        Derived("spectral_drift_ratio", _drift_ratio),
        Derived("angle_per_rel_norm", _angle_per_rel_norm),
        Derived("energy_ratio", _energy_ratio),
    ),
)  # fmt: skip
def update_ulp_ratio(pair: TensorPair) -> dict[str, float]:
    """Median over visibly changed entries of ``|ΔW_i| / (½ ulp_bf16(W0_i))``.

    ``½ ulp_bf16(w)`` is half the bf16 spacing at bf16(w), the rounding boundary a bf16
    weight's cumulative update must pass to change (PNT Lemma E.2). Changed entries are those
    sparsity_bf16 counts as changed (bf16 bit patterns differ); non-finite entries are left
    out. ΔW is the stored difference in float32 (float64 for float64 pairs), the ratio is
    exact in float32 (a power-of-two division), the median is the lower middle value
    (``torch.kthvalue``). NaN when nothing changed.

    Reading it: fp32-stored pairs show the real update, so 1 is "just at the boundary". A
    bf16-stored pair can only change by whole bf16 steps, so its smallest visible change
    reads 2 (one step within a binade; 1 across a power of two). Values of a few and more
    mean the typical changed weight moved several bf16 steps: then almost every weight the
    optimiser touched is visible, and bf16 sparsity measures the update size, not the
    algorithm. The summary is the median over 2-D tensors.
    """
    b_flat, t_flat = pair.base.reshape(-1), pair.tuned.reshape(-1)
    parts: list[torch.Tensor] = []
    cd = pair.compute_dtype
    for i in range(0, pair.numel, CHUNK):
        b, t = b_flat[i : i + CHUNK], t_flat[i : i + CHUNK]
        changed = ~bf16_unchanged(bf16_bits(b), bf16_bits(t))
        if not bool(changed.any()):
            continue
        b_c, t_c = b[changed].to(cd), t[changed].to(cd)
        finite = torch.isfinite(b_c) & torch.isfinite(t_c)
        b_c, t_c = b_c[finite], t_c[finite]
        parts.append((t_c - b_c).abs_().div_(half_spacing(b_c).to(cd)))
    if not parts:
        return {"update_ulp_ratio": NAN}
    ratios = torch.cat(parts)
    if not ratios.numel():
        return {"update_ulp_ratio": NAN}
    k = (ratios.numel() + 1) // 2
    return {"update_ulp_ratio": float(torch.kthvalue(ratios, k).values)}
