"""The bf16 scan kernel compiled with numba: the same per-block numbers as the torch kernel of
:mod:`opdgeo.scan`, in one vectorised loop (1.4-1.5x the torch kernel on one worker, 2.1-2.8x
on two, where the torch kernel does not scale: bench/KERNELS.md, section "scan").

Optional: numba is the ``fast`` extra (``pip install 'opdgeo[fast]'``); :mod:`opdgeo.scan`
imports this module only when ``OPDGEO_JIT`` is not ``0`` and a comparison reads at least
:data:`opdgeo.scan.JIT_MIN_RUN_BYTES` (loading numba and the cached kernel costs ~0.5 s per
process, more than the kernel saves on smaller models). The compiled kernel is cached by numba
(``cache=True``: next to this module, or in the user's cache folder when that is not
writable), so only the first run on a machine compiles it (~2 s).

Per block of :data:`opdgeo.scan.BLOCK` entries (the torch kernel's blocks, so the split across
workers never changes a result), from the bf16 bit patterns widened exactly to float32:

* counts of ``Δ == 0``, ``|Δ| ≤ le`` and ``|Δ| ≤ lt`` (exact integers); Δ = W1 − W0 is exact in
  float32, as in the torch kernel;
* max |Δ|, as the largest bit pattern of |Δ| (non-negative floats order as their bits, and an
  integer maximum vectorises where a float one does not);
* Σ W0² and Σ Δ² in float64: every square is exact (a bf16 value has 8 significant bits and
  Δ at most 24, so their squares fit float64's 53), only the additions round: relative error
  ≤ 2¹⁵·2⁻⁵³ ≈ 4e-12 per block in the worst case, where the torch kernel's float32 row norms
  allow 256·2⁻²⁴ ≈ 1.5e-5;
* whether the block holds a NaN/Inf in either tensor (an exponent of all ones): such blocks
  are redone by the general path, as in the torch kernel.

Fast-math is limited to reassociation and contraction (no "no-NaN" / "no-Inf" assumptions), so
every result is what IEEE float32 arithmetic gives for the order the vectoriser chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import llvmlite.ir as ir
import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@dataclass
class BlockTotals:
    """Per-block results of the compiled kernel (module doc), filled span by span."""

    counts: np.ndarray
    """nblocks x 3 int64: Δ == 0, |Δ| ≤ le, |Δ| ≤ lt."""
    max_abs: np.ndarray
    """nblocks float32: max |Δ|."""
    sums: np.ndarray
    """nblocks x 2 float64: Σ W0², Σ Δ²."""
    bad: np.ndarray
    """nblocks int32: non-zero where the block holds a NaN/Inf in either tensor."""

    @classmethod
    def empty(cls, nblocks: int) -> BlockTotals:
        return cls(
            counts=np.zeros((nblocks, 3), np.int64),
            max_abs=np.zeros(nblocks, np.float32),
            sums=np.zeros((nblocks, 2), np.float64),
            bad=np.zeros(nblocks, np.int32),
        )


def _f32_from_bf16_typing(typingctx: Any, u: Any) -> Any:
    """float32 value of a bf16 bit pattern (uint16): the pattern in the upper half."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        wide = builder.zext(args[0], ir.IntType(32))
        shifted = builder.shl(wide, ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(shifted, ir.FloatType())

    return types.float32(types.uint16), codegen


def _bits_typing(typingctx: Any, f: Any) -> Any:
    """The int32 bit pattern of a float32."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


_f32_from_bf16: Any = intrinsic(_f32_from_bf16_typing)
_bits: Any = intrinsic(_bits_typing)


@numba.njit(cache=True, nogil=True, boundscheck=False, fastmath=_FASTMATH)
def _block(a: Any, b: Any, le: Any, lt: Any) -> Any:
    """One block's counts, sums, largest |Δ| bit pattern and NaN/Inf flag (module doc). A
    function of its own on the block's slices: with loop bounds 0 .. size, LLVM vectorises it
    about 1.7x better than the same loop over ``lo .. hi`` of the whole array."""
    e1 = np.int32(0)
    e2 = np.int32(0)
    e3 = np.int32(0)
    s0 = 0.0
    sd = 0.0
    top = np.int32(0)
    flag = np.int32(0)
    for j in range(a.size):
        ua = a[j]
        ub = b[j]
        x = _f32_from_bf16(ua)
        d = _f32_from_bf16(ub) - x
        ad = abs(d)
        e1 += np.int32(ad == 0)
        e2 += np.int32(ad <= le)
        e3 += np.int32(ad <= lt)
        s0 += np.float64(x) * np.float64(x)
        sd += np.float64(d) * np.float64(d)
        top = max(top, _bits(ad))
        flag |= np.int32((ua & 0x7F80) == 0x7F80) | np.int32((ub & 0x7F80) == 0x7F80)
    return e1, e2, e3, s0, sd, top, flag


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _blocks(
    a: Any, b: Any, le: Any, lt: Any, block: int, counts: Any, maxbits: Any, sums: Any,
    bad: Any, first: int, last: int,
) -> None:  # fmt: skip
    n = a.size
    for blk in range(first, last):
        lo = blk * block
        hi = min(lo + block, n)
        e1, e2, e3, s0, sd, top, flag = _block(a[lo:hi], b[lo:hi], le, lt)
        counts[blk, 0] = e1
        counts[blk, 1] = e2
        counts[blk, 2] = e3
        maxbits[blk] = top
        sums[blk, 0] = s0
        sums[blk, 1] = sd
        bad[blk] = flag


def scan_span(
    a: np.ndarray, b: np.ndarray, le: float, lt: float, block: int, out: BlockTotals,
    first: int, last: int,
) -> None:  # fmt: skip
    """Blocks ``first .. last - 1`` of the bf16 pair with bit patterns ``a`` (W0) and ``b``
    (W1), flat uint16 arrays of one length, into ``out`` (the kernel releases the GIL, so
    :func:`opdgeo.scan._run_workers` runs spans side by side). ``le`` / ``lt``: the float32
    bounds of :func:`opdgeo.scan._atol_bounds` (-1: nothing qualifies)."""
    maxbits = out.max_abs.view(np.int32)
    le32, lt32 = np.float32(le), np.float32(lt)
    _blocks(a, b, le32, lt32, block, out.counts, maxbits, out.sums, out.bad, first, last)
