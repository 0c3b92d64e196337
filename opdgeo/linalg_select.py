"""Exact order statistics of non-negative float32 tensors by radix select on bit patterns.

IEEE-754 floats that are ≥ 0 order exactly like their bit patterns read as integers (sign 0,
then exponent, then mantissa; +Inf above every finite value). The k-th smallest value is
therefore found with two counting passes instead of a sort or ``kthvalue``'s quickselect:

1. a 32768-bin histogram of the high 16 bits (sign cleared, so −0.0 counts as +0.0) picks
   the bin holding the k-th value and counts the entries below it;
2. a 65536-bin histogram of the low 16 bits of the entries in that bin picks the exact
   pattern, and the counts give how many entries lie strictly below and at the value.

The result is exact (the same value ``torch.kthvalue`` returns, compared as floats), with
the counts of entries below / equal to it for free. NaN has no place in this order: callers
check ``x >= 0`` first (False for NaN) and use ``kthvalue`` otherwise.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

_HIGH_BINS = 1 << 15
_LOW_BINS = 1 << 16


@dataclass(frozen=True)
class Selected:
    """The k-th smallest value and how many entries are below it and equal to it."""

    value: float
    below: int
    equal: int


def _pick(hist: torch.Tensor, k: int) -> tuple[int, int, int]:
    """(bin, entries in earlier bins, entries in the bin) of the k-th entry (1-based)."""
    cum = torch.cumsum(hist, 0)
    idx = int(torch.searchsorted(cum, torch.tensor(k, dtype=cum.dtype, device=cum.device)))
    before = int(cum[idx - 1]) if idx > 0 else 0
    return idx, before, int(hist[idx])


def _high_halves(flat: torch.Tensor) -> torch.Tensor:
    """The high 16 bits of each float32 with the sign cleared, as non-negative int16.

    On little-endian machines these are the odd int16 halves of the data (a strided view:
    one pass for the mask, half the bytes written); elsewhere a shift of the int32 patterns.
    """
    if sys.byteorder == "little":
        return flat.view(torch.int16)[1::2].bitwise_and(0x7FFF)
    # arithmetic shift keeps the sign of -0.0 (0x80000000 -> 0xFFFF8000); & 0x7FFF clears it
    return torch.bitwise_right_shift(flat.view(torch.int32), 16).bitwise_and_(0x7FFF)


def kth_smallest_nonneg_f32(x: torch.Tensor, k: int) -> Selected:
    """The ``k``-th smallest (1-based) entry of a float32 tensor whose entries are all ≥ 0
    (−0.0 included, no NaN; not checked here), by two histogram passes (module doc)."""
    if x.dtype != torch.float32:
        raise TypeError(f"kth_smallest_nonneg_f32 needs float32, got {x.dtype}")
    flat = x.reshape(-1)
    n = flat.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside 1..{n}")
    bits = flat.view(torch.int32)
    high = _high_halves(flat)
    hbin, below, _ = _pick(torch.bincount(high, minlength=_HIGH_BINS), k)
    inside = bits[high == hbin]
    del high
    low = inside.bitwise_and_(0xFFFF)
    lbin, below_low, equal = _pick(torch.bincount(low, minlength=_LOW_BINS), k - below)
    pattern = (hbin << 16) | lbin
    value = float(torch.tensor([pattern], dtype=torch.int32).view(torch.float32))
    return Selected(value, below + below_low, equal)


def fraction_threshold_f32(x: torch.Tensor, size: int, largest: bool) -> tuple[float, int]:
    """(threshold, ties to take) of a mask of the ``size`` largest (or smallest) entries of a
    non-negative float32 tensor, 0 < size < numel, as :func:`opdgeo.linalg.fraction_threshold`
    defines them: every entry strictly beyond the threshold, plus the first ``ties`` entries
    equal to it."""
    n = x.numel()
    if largest:
        sel = kth_smallest_nonneg_f32(x, n - size + 1)
        above = n - sel.below - sel.equal
        return sel.value, size - above
    sel = kth_smallest_nonneg_f32(x, size)
    return sel.value, size - sel.below
