"""One base/tuned tensor pair with the shared, lazily computed quantities the metrics use.

Every expensive intermediate (upcasts, the update, bf16 bit patterns, decompositions) is a
``cached_property``, so several metrics share one decomposition and nothing is computed for
metrics that do not run. Float32 upcasts go into buffers reused from pair to pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from opdgeo.config import Settings
from opdgeo.linalg import Spectrum, spectrum, top_singular_value

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


class TensorPair:
    """A base tensor ``W0`` and a tuned tensor ``W1`` of the same shape (CPU, stored dtypes)."""

    def __init__(
        self,
        base: torch.Tensor,
        tuned: torch.Tensor,
        settings: Settings,
        pool: BufferPool | None = None,
        module: str = "other",
        base_spectra: dict[int, Spectrum] | None = None,
    ) -> None:
        if base.shape != tuned.shape:
            raise ValueError(f"shape mismatch {tuple(base.shape)} vs {tuple(tuned.shape)}")
        self.base = base
        self.tuned = tuned
        self.settings = settings
        self.module = module
        self.pool = pool or BufferPool(settings.device)
        self.base_spectra = base_spectra if base_spectra is not None else {}
        """Spectra of W0 by k, shared by the caller across pairs with the same base tensor."""
        self.methods: set[str] = set()
        """Numerical methods actually used, for the ``method`` column."""

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
        device = self.settings.device
        if x.dtype == self.compute_dtype and device == "cpu":
            return x
        if self.compute_dtype == torch.float64:
            return x.to(device=device, dtype=torch.float64)
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
        tensor size (an embedding matrix costs no full-size float32 copies).
        """
        stats = ElementStats()
        b_flat, t_flat = self.base.reshape(-1), self.tuned.reshape(-1)
        atol = self.settings.atol
        cd = self.compute_dtype
        for i in range(0, self.numel, CHUNK):
            b, t = b_flat[i : i + CHUNK], t_flat[i : i + CHUNK]
            b_bits, t_bits = bf16_bits(b), bf16_bits(t)
            stats.unchanged_bf16 += int(bf16_unchanged(b_bits, t_bits).sum())
            # bf16 arithmetic as MUK's code: the exact difference of two bf16 values, rounded
            d16 = t_bits.view(torch.bfloat16).float() - b_bits.view(torch.bfloat16).float()
            d16 = d16.to(torch.bfloat16).float().abs_()
            stats.le_atol += int((d16 <= atol).sum())
            stats.lt_atol += int((d16 < atol).sum())
            b_c, t_c = b.to(cd), t.to(cd)
            stats.exact_equal += int((b_c == t_c).sum())
            # norms over the finite entries only, so one NaN does not poison the totals
            bad = ~(torch.isfinite(b_c) & torch.isfinite(t_c))
            stats.nonfinite += int(bad.sum())
            delta = torch.where(bad, 0.0, t_c - b_c)
            base = torch.where(bad, 0.0, b_c)
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

    @cached_property
    def angle_k(self) -> int:
        """k for principal angles: the setting, or clamp(min(m, n) // 8, 1, 512)."""
        m, n = self.base.shape
        k = self.settings.angle_k or min(512, max(1, min(m, n) // 8))
        return min(k, m, n)

    @cached_property
    def energy_k(self) -> int:
        """k for principal energy: max(1, floor(energy_rank_frac · min(m, n)))."""
        m, n = self.base.shape
        return max(1, int(self.settings.energy_rank_frac * min(m, n)))

    @cached_property
    def mask_rank(self) -> int:
        """Rank of the principal-mask reconstruction: min(mask_rank, ceil(min(m, n) / 16))."""
        m, n = self.base.shape
        return max(1, min(self.settings.mask_rank, math.ceil(min(m, n) / 16)))

    def _spectrum(self, w: torch.Tensor, k: int) -> Spectrum:
        sp = spectrum(w, k, self.settings.spectral_method)
        self.methods.add(sp.method)
        return sp

    @cached_property
    def spec0(self) -> Spectrum:
        """Spectrum of W0 with vectors for the largest k any metric needs."""
        k = max(self.angle_k, self.energy_k, self.mask_rank)
        cached = self.base_spectra.get(k)
        if cached is not None:
            self.methods.add(cached.method)
            return cached
        self.base_spectra[k] = self._spectrum(self.w0, k)
        return self.base_spectra[k]

    @cached_property
    def spec1(self) -> Spectrum:
        """Spectrum of W1 with its top angle_k vectors."""
        return self._spectrum(self.w1, self.angle_k)

    @property
    def delta_fro2(self) -> float:
        """‖ΔW‖_F², accumulated in float64."""
        return self.elementwise.delta_sq

    @cached_property
    def delta_sigma1(self) -> float:
        """σ₁(ΔW): the largest eigenvalue of the float32 Gram of ΔW (``gram-f32``), or float64
        SVD with ``spectral_method = "svd"``. σ₁ is well conditioned, so float32 suffices for
        stable rank; it is deterministic, unlike power iteration on a flat spectrum."""
        if self.settings.spectral_method == "svd":
            self.methods.add("svd-f64")
            return float(torch.linalg.svdvals(self.delta.to(torch.float64))[0])
        self.methods.add("gram-f64" if self.delta.dtype == torch.float64 else "gram-f32")
        return top_singular_value(self.delta)
