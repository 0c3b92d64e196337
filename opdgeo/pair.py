"""One base/tuned tensor pair with the shared, lazily computed quantities the metrics use.

Every expensive intermediate (upcasts, the update, bf16 bit patterns, decompositions) is a
``cached_property``, so several metrics share one decomposition and nothing is computed for
metrics that do not run. Float32 upcasts go into buffers reused from pair to pair.
Quantities of W0 alone live in a :class:`opdgeo.cache.BaseShared`, shared by every run
compared against the same base tensor and stored in the on-disk base cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from opdgeo.cache import BaseShared
from opdgeo.config import Settings
from opdgeo.io.decoded import annotation
from opdgeo.linalg import (
    Spectrum,
    count,
    fraction_threshold,
    spectrum,
    top_singular_value_power,
)

CHUNK = 1 << 22
"""Entries per chunk of the element-wise pass (16 MB of float32 temporaries)."""
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


class BufferPool:
    """Flat float32 buffers, one per slot, grown on demand and reused across tensors."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._slots: dict[str, torch.Tensor] = {}

    def take(self, slot: str, shape: tuple[int, ...]) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._slots.get(slot)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=torch.float32, device=self.device)
            self._slots[slot] = buf
        return buf[:numel].view(shape)


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


_ROW = 256
"""Entries per float32 partial sum of squares (then summed in float64); see :func:`sumsq`."""


def sumsq(x: torch.Tensor) -> float:
    """Σ x² of a float32 vector: float32 sums over rows of 256 entries, float64 across rows.

    Relative error below 1e-6 (torch's float32 reductions are pairwise), at a twentieth of
    the cost of converting to float64; a single float32 sum over millions of entries would
    lose ~1e-4. NaN/Inf (or an overflowing square) make the result non-finite.
    """
    n = x.numel()
    full = n - n % _ROW
    rows = torch.linalg.vector_norm(x[:full].view(-1, _ROW), dim=1).double().square().sum()
    tail = torch.linalg.vector_norm(x[full:], dtype=torch.float64) ** 2
    return float(rows + tail)


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


def _bf16_chunk(
    b: torch.Tensor, t: torch.Tensor, le: float, lt: float, stats: ElementStats
) -> bool:
    """The element-wise pass for a chunk of two bf16 tensors without NaN/Inf; returns False
    (adding nothing) when the chunk holds NaN/Inf or huge values, for the general path.

    Exact for such chunks with fewer passes: the difference of two bf16 values is exact in
    float32, so values are equal (bit patterns equal, or ±0) exactly when it is 0, and
    ``sparsity_atol``'s bf16 comparison becomes a float32 range test (:func:`_atol_bounds`).
    """
    b_c, t_c = b.float(), t.float()
    delta = t_c - b_c
    delta_sq, base_sq = sumsq(delta), sumsq(b_c)
    if not (math.isfinite(delta_sq) and math.isfinite(base_sq)):
        return False  # NaN or Inf somewhere (or a square beyond float32): general path
    equal = count(delta == 0)
    stats.unchanged_bf16 += equal
    stats.exact_equal += equal
    for bound, attr in ((le, "le_atol"), (lt, "lt_atol")):
        if bound >= 0:
            inside = count(delta <= bound) - count(delta < -bound)
            setattr(stats, attr, getattr(stats, attr) + inside)
    stats.delta_sq += delta_sq
    stats.base_sq += base_sq
    if delta.numel():
        low, high = torch.aminmax(delta)
        stats.max_abs_delta = max(stats.max_abs_delta, -float(low), float(high))
    return True


class TensorPair:
    """A base tensor ``W0`` and a tuned tensor ``W1`` of the same shape (CPU, stored dtypes)."""

    def __init__(
        self,
        base: torch.Tensor,
        tuned: torch.Tensor,
        settings: Settings,
        pool: BufferPool | None = None,
        module: str = "other",
        shared: BaseShared | None = None,
    ) -> None:
        if base.shape != tuned.shape:
            raise ValueError(f"shape mismatch {tuple(base.shape)} vs {tuple(tuned.shape)}")
        self.decoded = (annotation(base), annotation(tuned))  # quantization steps, LoRA factors
        device = torch.device(settings.device)
        if base.device != device:  # pinned host memory makes these copies asynchronous
            base = base.to(device, non_blocking=True)
        if tuned.device != device:
            tuned = tuned.to(device, non_blocking=True)
        self.base = base
        self.tuned = tuned
        self.settings = settings
        self.module = module
        self.pool = pool or BufferPool(settings.device)
        self.shared = shared if shared is not None else BaseShared()
        """W0's decompositions and mask thresholds, shared across runs and with the cache."""
        self.methods: set[str] = set()
        """Numerical methods actually used, for the ``method`` column."""
        self.metric_methods: dict[str, set[str]] = {}
        """Methods by metric (the metric named in ``active`` when each was used)."""
        self.active = ""
        """The metric now running (set by the engine), for ``metric_methods``."""
        self.w0_k = 0
        """Vectors of W0 to decompose at once: the largest k any running metric needs."""
        self.w1_k = 0
        """Vectors of W1 to decompose at once (likewise)."""
        self._s1: tuple[int, Spectrum] | None = None

    def use(self, method: str) -> None:
        """Record that ``method`` produced (part of) the running metric's values."""
        self.methods.add(method)
        if self.active:
            self.metric_methods.setdefault(self.active, set()).add(method)

    # -- element-wise ------------------------------------------------------------------
    @property
    def numel(self) -> int:
        return self.base.numel()

    @cached_property
    def compute_dtype(self) -> torch.dtype:
        """float64 if either side is stored in float64, else float32 (exact for bf16/fp16)."""
        wide = torch.float64 in (self.base.dtype, self.tuned.dtype)
        return torch.float64 if wide else torch.float32

    def _upcast(self, x: torch.Tensor, slot: str) -> torch.Tensor:
        if x.dtype == self.compute_dtype:
            return x
        if self.compute_dtype == torch.float64:
            return x.to(torch.float64)
        out = self.pool.take(slot, tuple(x.shape))
        out.copy_(x)
        return out

    @cached_property
    def w0(self) -> torch.Tensor:
        """W0 in the compute dtype, on the compute device."""
        return self._upcast(self.base, "w0")

    @cached_property
    def w1(self) -> torch.Tensor:
        """W1 in the compute dtype, on the compute device."""
        return self._upcast(self.tuned, "w1")

    @cached_property
    def delta(self) -> torch.Tensor:
        """ΔW = W1 − W0 in the compute dtype (exact for bf16 inputs, peers.md §C.2)."""
        if self.compute_dtype == torch.float64:
            return self.w1 - self.w0
        out = self.pool.take("delta", tuple(self.base.shape))
        return torch.sub(self.w1, self.w0, out=out)

    @cached_property
    def identical(self) -> bool:
        """True when both tensors hold exactly the same values (cheap early exit)."""
        if self.base.dtype == self.tuned.dtype:
            return torch.equal(
                self.base.reshape(-1).view(torch.uint8), self.tuned.reshape(-1).view(torch.uint8)
            )
        return self.elementwise.exact_equal == self.numel

    @cached_property
    def elementwise(self) -> ElementStats:
        """One chunked pass over both tensors for every element-wise statistic.

        Works on flat chunks of ``CHUNK`` entries, so its temporaries stay small whatever the
        tensor size (an embedding matrix costs no full-size float32 copies). Bit comparisons
        run on int16 views; NaN/Inf handling only runs on chunks that hold such values.
        """
        stats = ElementStats()
        b_flat, t_flat = self.base.reshape(-1), self.tuned.reshape(-1)
        atol = self.settings.atol
        if self.numel and self.base.dtype == self.tuned.dtype and self.identical:
            # early exit: bit-identical tensors without NaN/Inf need only ‖W0‖_F
            if bool(torch.isfinite(b_flat).all()):
                n = self.numel
                base_sq = sum(
                    float(torch.linalg.vector_norm(b_flat[i : i + CHUNK], dtype=torch.float64)) ** 2
                    for i in range(0, n, CHUNK)
                )
                return ElementStats(n, n, n if atol > 0 else 0, n, 0, 0.0, base_sq, 0.0)
        cd = self.compute_dtype
        both_bf16 = self.base.dtype == self.tuned.dtype == torch.bfloat16
        le, lt = _atol_bounds(atol)
        for i in range(0, self.numel, CHUNK):
            b, t = b_flat[i : i + CHUNK], t_flat[i : i + CHUNK]
            if both_bf16 and _bf16_chunk(b, t, le, lt, stats):
                continue
            b_bits, t_bits = bf16_bits(b), bf16_bits(t)
            unchanged = count(bf16_unchanged(b_bits, t_bits))
            stats.unchanged_bf16 += unchanged
            b_c, t_c = b.to(cd), t.to(cd)
            bad = ~(torch.isfinite(b_c) & torch.isfinite(t_c))
            n_bad = count(bad)
            stats.nonfinite += n_bad
            delta = torch.where(bad, 0.0, t_c - b_c) if n_bad else t_c - b_c
            base = torch.where(bad, 0.0, b_c) if n_bad else b_c
            # bf16 arithmetic as MUK's code: the exact difference of two bf16 values, rounded
            d16 = t_bits.view(torch.bfloat16).float() - b_bits.view(torch.bfloat16).float()
            d16 = d16.to(torch.bfloat16).abs_()
            stats.le_atol += count(d16 <= atol)
            stats.lt_atol += count(d16 < atol)
            stats.exact_equal += count(b_c == t_c)
            stats.delta_sq += float(torch.linalg.vector_norm(delta, dtype=torch.float64)) ** 2
            stats.base_sq += float(torch.linalg.vector_norm(base, dtype=torch.float64)) ** 2
            if delta.numel():
                stats.max_abs_delta = max(stats.max_abs_delta, float(delta.abs().max()))
        return stats

    @cached_property
    def n_nonfinite(self) -> int:
        """Entries that are NaN or ±Inf in either tensor."""
        return self.elementwise.nonfinite

    @cached_property
    def visible(self) -> torch.Tensor:
        """Visible-update mask M_upd: bf16(W1) != bf16(W0) (papers.md D3); full size."""
        return ~bf16_unchanged(bf16_bits(self.base), bf16_bits(self.tuned))

    # -- spectral ----------------------------------------------------------------------
    @property
    def is_matrix(self) -> bool:
        return self.base.dim() == 2

    def spec0(self, k: int) -> Spectrum:
        """W0's spectrum with at least ``k`` top vectors.

        Decomposed once per base tensor with max(k, :attr:`w0_k`) vectors (the engine sets
        ``w0_k`` to the largest k any running metric needs), shared by every run against the
        same base tensor and with the base cache."""
        sp = self._spec0(max(k, self.w0_k))
        self.use(sp.method)
        return sp

    def _spec0(self, k: int) -> Spectrum:
        shared = self.shared
        for have, sp in shared.spectra.items():
            if have >= k:
                return sp
        stored = shared.from_store(self.w0)
        method = self.settings.spectral_method
        if stored is not None and stored.serves(k, method):
            sp = stored.spectrum(self.w0, k)
        else:
            sp = spectrum(self.w0, k, method)
            shared.dirty = True
        shared.spectra[k] = sp
        return sp

    def threshold(self, key: str, x: torch.Tensor, frac: float, largest: bool) -> tuple[float, int]:
        """The exact ``frac`` mask threshold of ``x`` (a function of W0 only) for mask ``key``:
        computed once per base tensor, then taken from :class:`BaseShared` and the cache."""
        hit = self.shared.thresholds.get(key)
        if hit is None:
            self.shared.from_store(self.w0)
            hit = self.shared.thresholds.get(key)
        if hit is None:
            hit = fraction_threshold(x, frac, largest)
            self.shared.thresholds[key] = hit
            self.shared.dirty = True
        return hit

    def spec1(self, k: int) -> Spectrum:
        """W1's spectrum with at least ``k`` top vectors (computed once, with
        max(k, :attr:`w1_k`) vectors)."""
        want = max(k, self.w1_k)
        if self._s1 is None or self._s1[0] < want:
            self._s1 = (want, spectrum(self.w1, want, self.settings.spectral_method))
        self.use(self._s1[1].method)
        return self._s1[1]

    @property
    def delta_fro2(self) -> float:
        """‖ΔW‖_F², accumulated in float64."""
        return self.elementwise.delta_sq

    @property
    def delta_sigma1(self) -> float:
        """σ₁(ΔW), by tier: ``exact`` float64 SVD (``svd-f64``); ``standard`` block Krylov
        power iteration in ΔW's compute dtype to 1e-6 relative change (``krylov-f32``), and
        ``fast`` the same to 1e-4. The Krylov value is a lower bound that is exact for
        low-rank updates; on flat spectra it was within 4e-6 of the float64 SVD (1536² and
        8960×1536 Gaussian updates) and costs at most what the Gram matrix of ΔW costs (often
        10× less). :func:`opdgeo.linalg.top_singular_value` (top eigenvalue of the Gram
        matrix) is the dense alternative, used as a reference in the tests."""
        value, method = self._delta_sigma1
        self.use(method)
        return value

    @cached_property
    def lowrank_spectrum(self) -> torch.Tensor | None:
        """σ(ΔW) of a LoRA composition ΔW = L R (tuned side), float64: those of the r x r core
        R_L R_Rᵀ (QR: L = Q_L R_L, Rᵀ = Q_R R_R, ΔW = Q_L R_L R_Rᵀ Q_Rᵀ). None otherwise."""
        decoded = self.decoded[1]
        if decoded is None or decoded.lowrank is None:
            return None
        left, right = (f.to(torch.float64) for f in decoded.lowrank)
        r_left = torch.linalg.qr(left, mode="r").R
        r_right = torch.linalg.qr(right.T, mode="r").R
        values: torch.Tensor = torch.linalg.svdvals(r_left @ r_right.T)
        return values

    @property
    def update_fro2(self) -> float:
        """‖ΔW‖_F²: from the LoRA core when there is one (exact), else :attr:`delta_fro2`."""
        core = self.lowrank_spectrum
        return float((core**2).sum()) if core is not None else self.delta_fro2

    @cached_property
    def _delta_sigma1(self) -> tuple[float, str]:
        core = self.lowrank_spectrum
        if core is not None:
            return float(core[0]) if core.numel() else 0.0, "lowrank-core-f64"
        tier = self.settings.tier
        if tier == "exact":
            return float(torch.linalg.svdvals(self.delta.to(torch.float64))[0]), "svd-f64"
        suffix = "f64" if self.delta.dtype == torch.float64 else "f32"
        tol = 1e-4 if tier == "fast" else 1e-6
        return top_singular_value_power(self.delta, tol=tol)[0], f"krylov-{suffix}"
