"""One base/tuned tensor pair with the shared, lazily computed quantities the metrics use.

Every expensive intermediate (upcasts, the update, bf16 bit patterns, decompositions) is a
``cached_property``, so several metrics share one decomposition and nothing is computed for
metrics that do not run. Float32 upcasts go into buffers reused from pair to pair.
Quantities of W0 alone live in a :class:`opdgeo.cache.BaseShared`, shared by every run
compared against the same base tensor and stored in the on-disk base cache.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from opdgeo.cache import BaseShared
from opdgeo.io.decoded import annotation
from opdgeo.linalg import (
    Spectrum,
    fraction_threshold,
    spectrum,
    top_singular_value_power,
)
from opdgeo.scan import ElementStats, bf16_bits, bf16_unchanged, bit_identical, scan_pair

if TYPE_CHECKING:  # a type only: config imports the metric registry, which imports this
    from opdgeo.config import Settings

CHUNK = 1 << 22
"""Entries per chunk of chunked element-wise passes (16 MB of float32 temporaries)."""

__all__ = ["CHUNK", "BufferPool", "ElementStats", "TensorPair", "bf16_bits", "bf16_unchanged"]


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
            return bit_identical(self.base, self.tuned)
        return self.elementwise.exact_equal == self.numel

    @cached_property
    def elementwise(self) -> ElementStats:
        """Every element-wise statistic in one blocked pass (:func:`opdgeo.scan.scan_pair`:
        bf16 pairs by exact float32 differences in cache-sized blocks, other dtypes and
        blocks holding NaN/Inf by the general float32/float64 path)."""
        return scan_pair(self.base, self.tuned, self.settings.atol)

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
