"""The ``scan`` kernel: every element-wise statistic of a tensor pair in one blocked pass.

:func:`scan_pair` returns the :class:`ElementStats` of a tensor pair (the three sparsities,
‖ΔW‖_F², ‖W0‖_F², max |ΔW|, non-finite entries). It is
:attr:`opdgeo.pair.TensorPair.elementwise` in every tier, and all the ``scan`` tier computes:
no linear algebra, a first look at a large pair at close to the speed the files can be read.

bf16 pairs have two kernels, same blocks, same counts: the torch kernel below and, where a
comparison reads >= :data:`JIT_MIN_RUN_BYTES` and numba is installed, :mod:`opdgeo.scan_jit`.

How the torch kernel is fast:

* blocks of :data:`BLOCK` entries: every temporary (float32 buffers of 128 KB, ~1 MB in all)
  stays in the core's L2 cache, is allocated once per worker and written with ``out=``
  (no allocation, no page faults), and every torch operation runs inline on the calling
  thread (blocks are no larger than ATen's parallel grain of 32768), so there is no OpenMP
  team to start or synchronise;
* the pair is split across ``workers`` Python threads (torch releases the GIL inside its
  kernels), torch's thread count by default;
* per block, 9 torch operations: two bf16→float32 conversions, ``Δ = W1 − W0`` (exact in
  float32), one multiply and one row-sum for Σ W0² and Σ Δ² per row of 256 entries, ``|Δ|``,
  its maximum, one broadcast comparison with the three bounds and one sum counting them.
  Results go into preallocated per-block slots, turned into Python numbers once at the end.

Counts are exact and equal :class:`ElementStats`'s: ``Δ == 0`` ⟺ the bf16 patterns are equal
or both ±0 (``unchanged_bf16`` and ``exact_equal``), and ``sparsity_atol``'s bf16 comparison
is the float32 range test ``|Δ| ≤ le`` / ``|Δ| ≤ lt`` of :func:`_atol_bounds`.
The maximum is exact. Sums of squares: float32 norms of rows of 256 entries, squared and
summed in float64 (the entries past the last whole row in float64), the rows and arithmetic of
the earlier ``sumsq`` so results match it to float64 rounding; relative error ≤ 256·2⁻²⁴ ≈ 1.5e-5
in the worst case and ≤ 4e-8 in practice against the float64 sum (demo family). A block
holding NaN/Inf (or values whose squares overflow float32) gets non-finite row norms; such
blocks, and every pair that is not bf16/bf16, go through the general path (float64 norms,
bf16 rounding of the difference as MUK's code).
"""

from __future__ import annotations

import importlib
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import torch

from opdgeo.errors import OpdgeoWarning
from opdgeo.threads import configured_threads, threads_for

_SIGN_MASK = 0x7FFF
_BF16_INF = 0x7F80


@dataclass
class ElementStats:
    """Counts and sums from the element-wise pass over a tensor pair."""

    unchanged_bf16: int = 0
    le_atol: int = 0
    lt_atol: int = 0
    exact_equal: int = 0
    nonfinite: int = 0
    delta_sq: float = 0.0
    base_sq: float = 0.0
    max_abs_delta: float = 0.0


def bf16_bits(x: torch.Tensor) -> torch.Tensor:
    """int16 bit patterns of ``x`` rounded to bf16 (round-to-nearest-even, as torch casts)."""
    return (x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16)).view(torch.int16)


def bf16_unchanged(a_bits: torch.Tensor, b_bits: torch.Tensor) -> torch.Tensor:
    """Entries whose bf16 patterns are identical; +0 and −0 count as equal, NaN as changed."""
    same = a_bits == b_bits
    a_mag = a_bits & _SIGN_MASK
    b_mag = b_bits & _SIGN_MASK
    same |= (a_mag == 0) & (b_mag == 0)
    same &= (a_mag <= _BF16_INF) & (b_mag <= _BF16_INF)
    return same


def _atol_bounds(atol: float) -> tuple[float, float]:
    """float32 bounds ``(le, lt)`` with ``bf16(|d|) <= bf16(atol)`` ⟺ ``|d| <= le`` and
    ``bf16(|d|) < bf16(atol)`` ⟺ ``|d| <= lt`` for float32 ``d`` (-1: nothing qualifies).

    As in MUK's code (a bf16 tensor compared with a Python float) the comparison runs in
    bf16, so ``atol`` is first rounded to bf16 (1e-5 becomes 1.0014e-5). bf16 rounding of
    float32 is round-to-nearest-even on the upper 16 bits, so the largest float32 that
    rounds to the bf16 pattern ``p`` (or below) has upper bits ``p`` and lower bits 0x8000
    when ``p`` is even (the tie goes to ``p``) or 0x7FFF when ``p`` is odd.
    """

    def top(p: int) -> float:
        if p < 0:
            return -1.0
        if p >= 0x7F80:
            return math.inf
        bits = (p << 16) | (0x8000 if p % 2 == 0 else 0x7FFF)
        return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))

    p = int(torch.tensor([atol], dtype=torch.float32).to(torch.bfloat16).view(torch.int16))
    return top(p), top(p - 1)


BLOCK = 1 << 15
"""Entries per block (32768: ATen runs element-wise ops of this size inline, and 128 KB of
float32 per buffer keeps the working set in a 1 MB L2)."""
_ROW = 256
"""Entries per float32 partial sum of squares (then summed in float64)."""
_MIN_PER_WORKER = 1 << 20
"""Smallest share of a pair worth a second thread (4 MB of bf16 pairs)."""


@dataclass
class _Blocks:
    """Per-block results of the fast path, reduced once at the end."""

    counts: torch.Tensor
    """nblocks x 3 float32 (exact integers): Δ == 0, |Δ| ≤ le, |Δ| ≤ lt."""
    max_abs: torch.Tensor
    """nblocks float32: max |Δ|."""
    tail: torch.Tensor
    """2 float64: Σ W0² and Σ Δ² of the entries past the last whole row of 256 (the pair's
    last block only), in float64."""
    rows: torch.Tensor
    """nblocks x 2 x (BLOCK / 256) float32: ‖W0‖ and ‖Δ‖ over rows of 256 entries (0 past
    the end of a short block)."""

    def totals(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per block: counts, max |Δ|, float64 (Σ W0², Σ Δ²) and whether they are finite."""
        sums = self.rows.double().square().sum(2)
        finite = torch.isfinite(self.rows).flatten(1).all(1)
        if len(sums):  # the entries past the last whole row belong to the last block
            sums[-1] += self.tail
            finite[-1] &= bool(torch.isfinite(self.tail).all())
        return self.counts, self.max_abs, sums, finite


def default_workers() -> int:
    """The process's thread count (the engine sets it from ``--threads``: physical cores by
    default), whatever count the engine chose for the pair's linear algebra.

    On this 2-core VM with other jobs running (load 7), two workers were slower than one
    (bench/KERNELS.md, section "scan"): pass ``--threads 1`` on a busy machine.
    """
    return max(1, configured_threads())


def scan_pair(
    base: torch.Tensor, tuned: torch.Tensor, atol: float, workers: int | None = None
) -> ElementStats:
    """Element-wise statistics of ``tuned`` against ``base`` (same shape and device), as
    :attr:`opdgeo.pair.TensorPair.elementwise` defines them (module doc), with ``atol`` the
    ``sparsity_atol`` tolerance. ``workers``: threads to use (default
    :func:`default_workers`; fewer when the pair is small). Tensors on a GPU take the
    general path (today's code, on the device)."""
    if base.shape != tuned.shape:
        raise ValueError(f"shape mismatch {tuple(base.shape)} vs {tuple(tuned.shape)}")
    b, t = base.reshape(-1), tuned.reshape(-1)
    n = b.numel()
    if n and b.dtype == t.dtype and bit_identical(b, t) and bool(torch.isfinite(b).all()):
        base_sq = sum(
            float(torch.linalg.vector_norm(b[i : i + _GENERAL], dtype=torch.float64)) ** 2
            for i in range(0, n, _GENERAL)
        )  # early exit: bit-identical tensors without NaN/Inf need only ‖W0‖_F
        return ElementStats(n, n, n if atol > 0 else 0, n, 0, 0.0, base_sq, 0.0)
    if not (b.dtype == t.dtype == torch.bfloat16) or b.device.type != "cpu":
        stats = ElementStats()
        for i in range(0, n, _GENERAL):
            _general(b[i : i + _GENERAL], t[i : i + _GENERAL], atol, stats)
        return stats
    le, lt = _atol_bounds(atol)
    nblocks = (n + BLOCK - 1) // BLOCK
    count = workers or default_workers()
    count = max(1, min(count, n // _MIN_PER_WORKER))
    bounds = [nblocks * i // count for i in range(count + 1)]
    spans = [(bounds[i], bounds[i + 1]) for i in range(count)]
    jit = _jit() if n >= JIT_MIN_ENTRIES and _JIT_WANTED.get() else None
    if jit is not None:  # the compiled kernel (opdgeo.scan_jit): same blocks, same numbers
        a16, b16 = (x.view(torch.int16).numpy().view("uint16") for x in (b, t))
        totals = jit.BlockTotals.empty(nblocks)
        try:
            _run_workers(partial(jit.scan_span, a16, b16, le, lt, BLOCK, totals), spans)
        except Exception as exc:  # numba failed to compile or load: the torch kernel instead
            _JIT[0] = None
            warnings.warn(f"numba kernel failed ({exc!s:.100}); torch's runs", OpdgeoWarning, 2)
            return scan_pair(base, tuned, atol, workers)
        sums = torch.from_numpy(totals.sums)
        finite = torch.from_numpy(totals.bad == 0) & torch.isfinite(sums).all(1)
        blocks = torch.from_numpy(totals.counts), torch.from_numpy(totals.max_abs), sums, finite
        return _reduce(b, t, atol, le, lt, *blocks)
    out = _Blocks(
        counts=torch.zeros(nblocks, 3, dtype=torch.float32),
        max_abs=torch.zeros(nblocks, dtype=torch.float32),
        tail=torch.zeros(2, dtype=torch.float64),
        rows=torch.zeros(nblocks, 2, BLOCK // _ROW, dtype=torch.float32),
    )
    # torch's own threads off while the workers run (they inherit it): an OpenMP team per
    # block operation costs far more than the operation whenever another process holds a core
    with threads_for(0.0):
        _run_workers(partial(_fast_blocks, b, t, le, lt, out), spans)
        return _reduce(b, t, atol, le, lt, *out.totals())


JIT_MIN_ENTRIES = 1 << 20
"""Smaller pairs (2 MB of bf16 per side) always take the torch kernel."""
JIT_MIN_RUN_BYTES = 2 * 10**9
"""Comparisons that read fewer bytes than this (both sides) keep the torch kernel: loading
numba and its compiled kernel costs ~0.5 s once per process, and the compiled kernel saves
~0.3 s per GB on this 2-core VM (bench/RESULTS.md: 2.5 GB is past the break-even)."""
_JIT: list[ModuleType | None] = []
_JIT_WANTED: ContextVar[bool] = ContextVar("opdgeo_scan_jit", default=True)


@contextmanager
def jit_for(run_bytes: int) -> Iterator[None]:
    """Within the block, :func:`scan_pair` uses the compiled kernel only if the comparison
    reads at least :data:`JIT_MIN_RUN_BYTES` (the engine wraps each tensor's analysis)."""
    token = _JIT_WANTED.set(run_bytes >= JIT_MIN_RUN_BYTES)
    try:
        yield
    finally:
        _JIT_WANTED.reset(token)


def _jit() -> ModuleType | None:
    """:mod:`opdgeo.scan_jit` when numba is installed and ``OPDGEO_JIT`` is not ``0``, else
    None (imported on first use; a numba that fails to import counts as not installed)."""
    if os.environ.get("OPDGEO_JIT", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not _JIT:
        try:  # numba missing or broken: the torch kernel still works
            _JIT.append(importlib.import_module("opdgeo.scan_jit"))
        except Exception:
            _JIT.append(None)
    return _JIT[0]


def _run_workers(work: Callable[[int, int], None], spans: list[tuple[int, int]]) -> None:
    """``work(first, last)`` on each span of blocks, the first on this thread and the others
    each on a Python thread of its own (both kernels release the GIL); a worker's error is
    raised here."""
    errors: list[BaseException] = []

    def guarded(first: int, last: int) -> None:
        try:
            work(first, last)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=span) for span in spans[1:]]
    for th in threads:
        th.start()
    guarded(*spans[0])
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


_GENERAL = 1 << 22
"""Entries per chunk of the general path (16 MB of float32 temporaries)."""


def bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Both tensors (same dtype and shape) hold the same bytes: equal values, ±0 and NaN
    payloads told apart."""
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _fast_blocks(
    b: torch.Tensor, t: torch.Tensor, le: float, lt: float, out: _Blocks, first: int, last: int
) -> None:
    """The bf16 fast path over blocks ``first .. last - 1`` (module doc).

    Per block: W0 and Δ go into the two rows of one buffer, so one multiply and one row-sum
    give Σ W0² and Σ Δ² per 256 entries; one broadcast comparison of |Δ| with the three
    float32 bounds writes 0.0/1.0 into three float32 rows and one sum counts them (exact:
    a block has at most 2^15 < 2^24 entries). On this VM this is ~2x faster than bool
    results + count_nonzero and row norms (bench/KERNELS.md). Views of every block are made
    once, up front.
    """
    n = b.numel()
    pair = torch.empty(2, BLOCK, dtype=torch.float32)  # [W0, Δ]
    y = torch.empty(BLOCK, dtype=torch.float32)
    a = torch.empty(BLOCK, dtype=torch.float32)
    hits = torch.empty(3, BLOCK, dtype=torch.float32)
    bounds = torch.tensor([[0.0], [le], [lt]], dtype=torch.float32)
    a3 = a.expand(3, BLOCK)
    full_last = min(last, n // BLOCK)  # blocks first .. full_last - 1 are whole
    if full_last > first:
        span = slice(first * BLOCK, full_last * BLOCK)
        b_blocks = b[span].view(-1, BLOCK).unbind(0)
        t_blocks = t[span].view(-1, BLOCK).unbind(0)
        w0, delta = pair.unbind(0)
        row_view = pair.view(2, BLOCK // _ROW, _ROW)
        rows = out.rows[first:full_last].unbind(0)
        counts = out.counts[first:full_last].unbind(0)
        maxima = out.max_abs[first:full_last].unbind(0)
        for j in range(full_last - first):
            w0.copy_(b_blocks[j])
            y.copy_(t_blocks[j])
            torch.sub(y, w0, out=delta)
            torch.linalg.vector_norm(row_view, dim=2, out=rows[j])
            torch.abs(delta, out=a)
            torch.amax(a, 0, out=maxima[j])
            torch.le(a3, bounds, out=hits)  # the three comparisons in one operation
            torch.sum(hits, 1, out=counts[j])
    for j in range(max(first, full_last), last):  # the pair's last, partial block
        i = j * BLOCK
        size = n - i
        xs, ds = pair[0, :size], pair[1, :size]
        xs.copy_(b[i:])
        torch.sub(t[i:].float(), xs, out=ds)
        torch.abs(ds, out=a[:size])
        torch.amax(a[:size], 0, out=out.max_abs[j])
        whole = size // _ROW * _ROW
        for col, src in enumerate((xs, ds)):
            out.rows[j, col, : size // _ROW] = torch.linalg.vector_norm(
                src[:whole].view(-1, _ROW), dim=1
            )
            if whole < size:
                out.tail[col] = torch.linalg.vector_norm(src[whole:], dtype=torch.float64) ** 2
        torch.le(a[:size].expand(3, size), bounds, out=hits[:, :size])
        torch.sum(hits[:, :size], 1, out=out.counts[j])


def _reduce(
    b: torch.Tensor,
    t: torch.Tensor,
    atol: float,
    le: float,
    lt: float,
    counts: torch.Tensor,
    max_abs: torch.Tensor,
    sums: torch.Tensor,
    finite: torch.Tensor,
) -> ElementStats:
    """Totals of a kernel's per-block ``counts`` (nblocks x 3), ``max_abs``, float64 ``sums``
    (nblocks x 2: Σ W0², Σ Δ²); blocks not ``finite`` are redone by the general path (their
    kernel numbers are discarded)."""
    stats = ElementStats()
    good = finite.nonzero().squeeze(1)
    if good.numel():
        totals = counts.index_select(0, good).to(torch.int64).sum(0).tolist()
        stats.unchanged_bf16 = stats.exact_equal = int(totals[0])
        stats.le_atol = int(totals[1]) if le >= 0 else 0
        stats.lt_atol = int(totals[2]) if lt >= 0 else 0
        total = sums.index_select(0, good).sum(0)
        stats.base_sq, stats.delta_sq = float(total[0]), float(total[1])
        stats.max_abs_delta = float(max_abs.index_select(0, good).max())
    for j in (~finite).nonzero().squeeze(1).tolist():
        i = j * BLOCK
        _general(b[i : i + BLOCK], t[i : i + BLOCK], atol, stats)
    return stats


def _general(b: torch.Tensor, t: torch.Tensor, atol: float, stats: ElementStats) -> None:
    """One chunk of the general path, for pairs that are not both bf16 (or bf16 blocks holding
    NaN/Inf/huge values): bf16 bit comparison, float32/float64 norms, and ``sparsity_atol`` in
    bf16 arithmetic as MUK's code."""
    wide = torch.float64 in (b.dtype, t.dtype)
    cd = torch.float64 if wide else torch.float32
    b_bits, t_bits = bf16_bits(b), bf16_bits(t)
    stats.unchanged_bf16 += int(torch.count_nonzero(bf16_unchanged(b_bits, t_bits)))
    b_c, t_c = b.to(cd), t.to(cd)
    bad = ~(torch.isfinite(b_c) & torch.isfinite(t_c))
    n_bad = int(torch.count_nonzero(bad))
    stats.nonfinite += n_bad
    delta = torch.where(bad, 0.0, t_c - b_c) if n_bad else t_c - b_c
    base = torch.where(bad, 0.0, b_c) if n_bad else b_c
    # bf16 arithmetic as MUK's code: the exact difference of two bf16 values, rounded
    d16 = t_bits.view(torch.bfloat16).float() - b_bits.view(torch.bfloat16).float()
    d16 = d16.to(torch.bfloat16).abs_()
    stats.le_atol += int(torch.count_nonzero(d16 <= atol))
    stats.lt_atol += int(torch.count_nonzero(d16 < atol))
    stats.exact_equal += int(torch.count_nonzero(b_c == t_c))
    stats.delta_sq += float(torch.linalg.vector_norm(delta, dtype=torch.float64)) ** 2
    stats.base_sq += float(torch.linalg.vector_norm(base, dtype=torch.float64)) ** 2
    if delta.numel():
        stats.max_abs_delta = max(stats.max_abs_delta, float(delta.abs().max()))


def gbytes(base: torch.Tensor, tuned: torch.Tensor) -> float:
    """Checkpoint bytes of a pair in GB (both tensors, stored dtypes), for throughput."""
    return (base.numel() * base.element_size() + tuned.numel() * tuned.element_size()) / 1e9
