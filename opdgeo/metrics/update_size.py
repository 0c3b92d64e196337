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
    (``torch.kthvalue``; for bf16 pairs an exact histogram selection, :func:`_bf16_median`).
    NaN when nothing changed. The fast tier reads an evenly strided sample of
    :data:`SAMPLE` entries of larger tensors (method ``ulp-sample-1/<stride>``; its error
    against the exact tier is in the bench's table D).

    Reading it: fp32-stored pairs show the real update, so 1 is "just at the boundary". A
    bf16-stored pair can only change by whole bf16 steps, so its smallest visible change
    reads 2 (one step within a binade; 1 across a power of two). Values of a few and more
    mean the typical changed weight moved several bf16 steps: then almost every weight the
    optimiser touched is visible, and bf16 sparsity measures the update size, not the
    algorithm. The summary is the median over 2-D tensors.
    """
    b_flat, t_flat = pair.base.reshape(-1), pair.tuned.reshape(-1)
    if pair.settings.tier == "fast" and pair.numel > 2 * SAMPLE:
        stride = _sample_stride(pair.numel, pair.base.shape[-1] if pair.base.dim() else 1)
        pair.use(f"ulp-sample-1/{stride}")
        b_flat, t_flat = b_flat[::stride].contiguous(), t_flat[::stride].contiguous()
    if b_flat.dtype == t_flat.dtype == torch.bfloat16 and b_flat.device.type == "cpu":
        return {"update_ulp_ratio": _bf16_median(b_flat, t_flat)}
    parts = [_changed_ratios(b_flat[i : i + CHUNK], t_flat[i : i + CHUNK], pair.compute_dtype)
             for i in range(0, b_flat.numel(), CHUNK)]  # fmt: skip
    ratios = torch.cat(parts) if parts else torch.empty(0)
    if not ratios.numel():
        return {"update_ulp_ratio": NAN}
    k = (ratios.numel() + 1) // 2
    return {"update_ulp_ratio": float(torch.kthvalue(ratios, k).values)}


SAMPLE = 1 << 18
"""Entries the fast tier reads for the median (an evenly strided sample) on larger tensors."""


def _sample_stride(numel: int, row: int) -> int:
    """The smallest stride >= numel / SAMPLE that shares no factor with the row length, so
    the sample walks through every column (not the same few) as it walks down the rows."""
    stride = max(1, numel // SAMPLE)
    while math.gcd(stride, row) != 1:
        stride += 1
    return stride


def _changed_ratios(b: torch.Tensor, t: torch.Tensor, cd: torch.dtype) -> torch.Tensor:
    """The ratio of every changed entry with finite values (any dtypes, any device)."""
    changed = ~bf16_unchanged(bf16_bits(b), bf16_bits(t))
    if not bool(changed.any()):
        return torch.empty(0, dtype=cd, device=b.device)
    b_c, t_c = b[changed].to(cd), t[changed].to(cd)
    finite = torch.isfinite(b_c) & torch.isfinite(t_c)
    b_c, t_c = b_c[finite], t_c[finite]
    return (t_c - b_c).abs_().div_(half_spacing(b_c).to(cd))


_EXP = 0x7F800000
_NORMAL_HALF = 9 << 23
"""float32 exponent field of |W0| from which ½ ulp_bf16 is a normal float32 (|W0| ≥ 2⁻¹¹⁸)."""
_BINS = (_EXP >> 16) + 1
"""Histogram bins: the upper 16 bits of a non-negative float32 (inf included)."""


def _bf16_ratios(b: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
    """The ratio of every entry of a bf16 chunk (0 where unchanged, float32, exact), or None
    when the chunk holds NaN/Inf (then :func:`_changed_ratios` handles it).

    ½ ulp_bf16(w) for |w| ≥ 2⁻¹¹⁸ is the power of two whose float32 exponent field is w's
    minus 8 (bf16 and float32 share the exponent field; bf16 keeps 8 significant bits), so
    it is read off w's bits with two integer operations; the few smaller |w| (zeros,
    subnormals) take :func:`half_spacing`. The division by a power of two is exact.
    """
    w0 = b.float()
    a = t.float().sub_(w0).abs_()
    if not bool(torch.isfinite(a.max())):
        return None
    field = w0.view(torch.int32).bitwise_and(_EXP)
    tiny = field < _NORMAL_HALF
    half = field.sub_(8 << 23).clamp_(min=1 << 23).view(torch.float32)
    ratio = a.div_(half)
    if bool(tiny.any()):
        idx = tiny.nonzero().squeeze(1)
        w = w0.index_select(0, idx)
        d = t.index_select(0, idx).float().sub_(w).abs_()
        ratio.index_copy_(0, idx, d.div_(half_spacing(w)))
    return ratio


def _bf16_median(b_flat: torch.Tensor, t_flat: torch.Tensor) -> float:
    """Exact lower median of the ratios of a bf16 pair without sorting: a histogram of the
    ratios' upper 16 bits (the bf16 part of a non-negative float32, ordered like the values)
    finds the median's bin; only when some ratio in that bin has non-zero lower bits (a
    change across binades) does a second pass select the bin's values exactly."""
    hist = torch.zeros(_BINS, dtype=torch.int64)
    inexact = torch.zeros(_BINS, dtype=torch.int64)
    chunks = [(i, i + CHUNK) for i in range(0, b_flat.numel(), CHUNK)]

    def ratios(lo: int, hi: int) -> torch.Tensor:
        r = _bf16_ratios(b_flat[lo:hi], t_flat[lo:hi])
        return _changed_ratios(b_flat[lo:hi], t_flat[lo:hi], torch.float32) if r is None else r

    for lo, hi in chunks:
        bits = ratios(lo, hi).view(torch.int32)
        top = bits >> 16
        hist += torch.bincount(top, minlength=_BINS)
        low = bits.bitwise_and(0xFFFF) != 0
        if bool(low.any()):
            inexact += torch.bincount(top[low], minlength=_BINS)
    # bin 0 holds the unchanged entries (ratio 0): a changed bf16 entry reads >= 1 (its
    # nearest neighbour is at least half its spacing away, where W0 is a power of two)
    hist[0] = 0
    total = int(hist.sum())
    if total == 0:
        return NAN
    k = (total + 1) // 2
    cum = hist.cumsum(0)
    top_bin = int(torch.searchsorted(cum, k))
    rank = k - (int(cum[top_bin - 1]) if top_bin else 0)
    if int(inexact[top_bin]) == 0:
        return float(torch.tensor([top_bin << 16], dtype=torch.int32).view(torch.float32))
    inside = []
    for lo, hi in chunks:
        r = ratios(lo, hi)
        inside.append(r[(r.view(torch.int32) >> 16) == top_bin])
    return float(torch.kthvalue(torch.cat(inside), rank).values)
