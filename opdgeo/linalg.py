"""Linear-algebra kernels with stated precision.

* :func:`spectrum` - singular values and top-k singular vectors of a matrix, either through
  the float64 Gram matrix and ``eigh`` (``gram``; 2-17x faster than SVD on CPU, peers.md §C)
  or through float64 ``torch.linalg.svd`` (``svd``; exact reference). bf16 SVD does not exist
  on CPU, and float32 Gram spectra inflate the NSS of tiny updates (papers.md §8), so both
  routes work in float64.
* :func:`principal_angles` - angles between two subspaces, accurate for tiny angles.
* :func:`top_singular_value` - sigma_1 from the Gram matrix's top eigenvalue (stable rank).
* :func:`top_singular_value_power` - sigma_1 from block power iteration (the fast tier).
* :func:`fraction_threshold` / :func:`threshold_mask` - an exact top/bottom-fraction mask with
  deterministic tie-breaking (histograms of bit patterns for bf16 and float32 values, else
  kthvalue).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from opdgeo.linalg_eig import eigh_top
from opdgeo.linalg_select import fraction_threshold_f32

_CHUNK_ELEMS = 1 << 24
"""Entries converted to float64 at a time when forming Grams and projections (128 MB)."""


@dataclass(frozen=True)
class Spectrum:
    """Singular values (descending, float64) and the top-k left/right singular vectors."""

    s: torch.Tensor
    u: torch.Tensor
    """m x k, float64, orthonormal columns."""
    v: torch.Tensor
    """n x k, float64, orthonormal columns."""
    method: str


def count(mask: torch.Tensor) -> int:
    """Number of True entries (``count_nonzero``: ~30x faster than ``sum`` on bool tensors)."""
    return int(torch.count_nonzero(mask))


def gram(w: torch.Tensor) -> torch.Tensor:
    """``W Wᵀ`` in float64, formed in column chunks so no full float64 copy of W is made."""
    m, n = w.shape
    g = torch.zeros(m, m, dtype=torch.float64, device=w.device)
    step = max(1, _CHUNK_ELEMS // max(1, m))
    for j in range(0, n, step):
        block = w[:, j : j + step].to(torch.float64)
        g.addmm_(block, block.T)
    return g


def _right_vectors(w: torch.Tensor, u: torch.Tensor, s: torch.Tensor, s_max: float) -> torch.Tensor:
    """``V_k = Wᵀ U_k / s_k`` in float64.

    Where s_k is numerically zero for the Gram route (≤ 10·sqrt(max(m, n)·eps)·s_1: eigenvalues
    of WWᵀ carry absolute errors of order eps·s_1², so smaller singular values are noise) the
    direction is arbitrary: those columns are completed to an orthonormal set by QR, so V_k
    always has orthonormal columns.
    """
    m, n = w.shape
    v = project_left(w, u).T
    tol = 10 * math.sqrt(max(m, n) * torch.finfo(torch.float64).eps) * s_max
    good = s > tol
    v = v * torch.where(good, 1.0 / s.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    if bool(good.all()):
        return v
    gen = torch.Generator(device="cpu").manual_seed(0)
    filler = torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.device)
    q, _ = torch.linalg.qr(torch.where(good, v, filler))
    return torch.where(good, v, q)


def spectrum_from_vectors(
    w: torch.Tensor, s: torch.Tensor, small: torch.Tensor, k: int, method: str
) -> Spectrum:
    """Rebuild a Gram-route :class:`Spectrum` from its singular values and the top singular
    vectors of W's smaller side (as stored by :mod:`opdgeo.cache`); the other side is
    ``Wᵀ U_k / s_k`` exactly as :func:`spectrum` computes it, so the result is the same."""
    m, n = w.shape
    k = max(0, min(k, m, n, small.shape[1]))
    s = s.to(w.device)
    small = small[:, :k].to(w.device).contiguous()
    s_max = float(s[0]) if s.numel() else 0.0
    if m <= n:
        return Spectrum(s, small, _right_vectors(w, small, s[:k], s_max), method)
    return Spectrum(s, _right_vectors(w.T, small, s[:k], s_max), small, method)


def spectrum(w: torch.Tensor, k: int, method: str = "gram") -> Spectrum:
    """Singular values of ``w`` and its top-``k`` singular vectors.

    ``gram`` (the standard tier): for m <= n, ``G = W Wᵀ`` (float64), all eigenvalues of G but
    only its top-k eigenvectors (:func:`opdgeo.linalg_eig.eigh_top`: one tridiagonal
    reduction, divide and conquer on the tridiagonal, back-transformation of k vectors;
    method ``gram-dc-f64``, or ``gram-eigh-f64`` where the full ``eigh`` did the
    work: Grams of order < 224, GPU tensors), and ``V_k = Wᵀ U_k diag(1/s_k)``; the transposed
    route when m > n. 2-4x faster than the full ``eigh`` at k = min(m, n)/8 with the same
    accuracy (bench/KERNELS.md). Cost ≈ 2·min²·max flops + 4/3·min³. Relative error of the
    top-k values ≈ 1e-12; tail values lose accuracy as cond(W)² grows, which NSS (dominated
    by the largest values) tolerates. ``gram-dc`` (and the older name ``gram-mrrr``) is the
    same route.
    ``gram-eigh``: the same Gram matrix with ``torch.linalg.eigh`` (all n eigenvectors); the
    route before the top-k solver, kept as a reference (``gram-eigh-f64``).
    ``svd``: ``torch.linalg.svd`` of the float64 matrix.
    """
    m, n = w.shape
    k = max(0, min(k, m, n))
    if method not in ("gram", "gram-dc", "gram-mrrr", "gram-eigh", "svd"):
        raise ValueError(f"unknown spectral method {method!r}")
    if method == "svd":
        u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
        return Spectrum(s, u[:, :k].contiguous(), vh[:k].T.contiguous(), "svd-f64")
    if m > n:
        t = spectrum(w.T, k, method)
        return Spectrum(t.s, t.v, t.u, t.method)
    if method == "gram-eigh":
        evals, evecs = torch.linalg.eigh(gram(w))
        s = evals.flip(0).clamp_min(0.0).sqrt()
        u = evecs.flip(1)[:, :k].contiguous()
        label = "eigh"
    else:
        top = eigh_top(gram(w), k, overwrite=True)
        s = top.values.clamp_min(0.0).sqrt()
        u, label = top.vectors, top.method
    s_max = float(s[0]) if s.numel() else 0.0
    return Spectrum(s, u, _right_vectors(w, u, s[:k], s_max), f"gram-{label}-f64")


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between span(a) and span(b).

    ``a``, ``b``: m x k with orthonormal columns (float64). ``cos θ_i = σ_i(aᵀb)``; for small
    angles the sines ``σ(b − a aᵀ b)`` are used instead, since arccos loses all precision
    near 1 (Knyazev & Argentati 2002): θ_i = arcsin(sin θ_i) where sin² θ_i < 1/2.
    """
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    if a.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    c = a.T @ b
    cos = torch.linalg.svdvals(c).clamp(0.0, 1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(b - a @ c).clamp(0.0, 1.0).flip(0)  # ascending
    k = cos.shape[0]
    sin = sin[-k:] if sin.shape[0] >= k else torch.cat([sin.new_zeros(k - sin.shape[0]), sin])
    small = sin * sin < 0.5
    return torch.where(small, torch.arcsin(sin), torch.arccos(cos))


def top_singular_value(w: torch.Tensor) -> float:
    """σ₁(W) = sqrt(λ_max(G)) with G the Gram matrix of W's smaller side, in W's dtype.

    Cost 2·min²·max flops + O(min³). λ_max is perfectly conditioned (relative error ≈ machine
    epsilon of the Gram's dtype), so a float32 Gram gives σ₁ to ~1e-7, enough for stable rank;
    unlike power iteration it needs no spectral gap.
    """
    if w.numel() == 0:
        return 0.0
    m, n = w.shape
    g = w @ w.T if m <= n else w.T @ w
    return math.sqrt(max(float(torch.linalg.eigvalsh(g)[-1]), 0.0))


def top_singular_value_power(
    w: torch.Tensor, tol: float = 1e-5, max_iter: int = 40, block: int = 16, seed: int = 0
) -> tuple[float, int]:
    """σ₁(W) by block power iteration with Krylov acceleration (block Lanczos); (σ₁, steps).

    A = WᵀW on W's smaller side is applied to a seeded Gaussian block of ``block`` vectors
    (deterministic); every product is orthogonalised against all previous blocks (twice,
    so the basis stays orthonormal), and the Rayleigh-Ritz value of A on the whole Krylov
    basis, a lower bound of σ₁² that only grows, is taken each step. It stops when σ₁
    changes by less than ``tol`` relative, or after ``max_iter`` steps. Each step costs two
    GEMMs with ``block`` columns (4·m·n·block flops) and never forms a Gram matrix; Krylov
    bases converge on flat spectra far faster than plain power iteration.
    """
    if w.numel() == 0:
        return 0.0, 0
    m, n = w.shape
    wt = w if m >= n else w.T  # tall: the basis lives on the small side
    small = wt.shape[1]
    b = max(1, min(block, small))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(small, b, generator=gen, dtype=torch.float32).to(wt.device, wt.dtype)
    q, _ = torch.linalg.qr(q)
    basis: list[torch.Tensor] = []
    images: list[torch.Tensor] = []
    prev = 0.0
    steps = 0
    for steps in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        aq = wt.T @ (wt @ q)
        basis.append(q)
        images.append(aq)
        big_q, big_aq = torch.cat(basis, 1), torch.cat(images, 1)
        t = big_q.T @ big_aq
        est = math.sqrt(max(float(torch.linalg.eigvalsh(((t + t.T) / 2).double())[-1]), 0.0))
        room = small - big_q.shape[1]
        if est == 0.0 or abs(est - prev) <= tol * est or room <= 0:
            return est, steps  # converged, or the basis spans the whole space (exact)
        prev = est
        y = _orthogonalise(aq[:, : min(b, room)], big_q)
        scale = float(torch.linalg.matrix_norm(aq)) or 1.0
        lost = torch.linalg.vector_norm(y, dim=0) <= 1e-4 * scale
        if bool(lost.any()):  # the Krylov space (nearly) closed: refill with random directions
            fresh = torch.randn(y.shape, generator=gen, dtype=torch.float32).to(y.device, y.dtype)
            y = torch.where(lost, _orthogonalise(fresh, big_q), y)
        q, _ = torch.linalg.qr(y)
        q = _orthogonalise(q, big_q)
        q, _ = torch.linalg.qr(q)
    return prev, steps


def _orthogonalise(y: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``y`` minus its projection on the orthonormal ``basis`` (classical Gram-Schmidt, twice)."""
    for _ in range(2):
        y = y - basis @ (basis.T @ y)
    return y


def _bf16_magnitude_bits(x: torch.Tensor) -> torch.Tensor | None:
    """int32 magnitude bit patterns when every value of ``x`` is exactly a bf16, else None."""
    if x.dtype == torch.bfloat16:
        b = x
    elif x.dtype == torch.float32:
        b = x.to(torch.bfloat16)
        if not torch.equal(b.float(), x):
            return None
    else:
        return None
    return (b.view(torch.int16) & 0x7FFF).to(torch.int32)


def fraction_threshold(x: torch.Tensor, frac: float, largest: bool) -> tuple[float, int]:
    """(threshold, ties to take) of the exact ``frac`` mask of ``x`` (non-negative values).

    The mask holds every entry strictly beyond the threshold plus the first ``need`` entries
    (in index order) equal to it, so it has exactly ``round(frac · numel)`` entries. Exact
    selection without sorting for non-negative values: bf16 tensors by a 32768-bin histogram
    of magnitude bit patterns (one pass), float32 tensors by a two-level radix select on
    their bit patterns (:mod:`opdgeo.linalg_select`); anything else (float64, negative values,
    NaN) by ``kthvalue``. All three give the same (threshold, ties).
    """
    flat = x.reshape(-1)
    n = flat.numel()
    size = int(round(frac * n))
    if size <= 0:
        return math.inf if largest else -math.inf, 0
    if size >= n:
        return -math.inf if largest else math.inf, 0
    # min() propagates NaN, so this is all(x >= 0) (and False with NaN) in one cheap pass
    nonneg = flat.dtype in (torch.bfloat16, torch.float32) and bool(flat.min() >= 0)
    if nonneg and flat.dtype == torch.float32 and flat.device.type == "cpu":
        return fraction_threshold_f32(flat, size, largest)
    bits = _bf16_magnitude_bits(flat) if nonneg else None
    if bits is not None:
        hist = torch.bincount(bits, minlength=1 << 15)
        if largest:
            hist = hist.flip(0)
        cum = torch.cumsum(hist, 0)
        idx = int(torch.searchsorted(cum, torch.tensor(size, device=cum.device)))
        before = int(cum[idx - 1]) if idx > 0 else 0
        code = (1 << 15) - 1 - idx if largest else idx
        thr = float(torch.tensor([code], dtype=torch.int16).view(torch.bfloat16).float())
        return thr, size - before
    if largest:
        thr_t = torch.kthvalue(flat, n - size + 1).values
        strict = count(flat > thr_t)
    else:
        thr_t = torch.kthvalue(flat, size).values
        strict = count(flat < thr_t)
    return float(thr_t), size - strict


def threshold_mask(x: torch.Tensor, thr: float, need: int, largest: bool) -> torch.Tensor:
    """The mask of :func:`fraction_threshold`: beyond ``thr``, plus the first ``need`` ties."""
    flat = x.reshape(-1)
    strict = flat > thr if largest else flat < thr
    if need > 0:
        ties = flat == thr
        n_ties = count(ties)
        fill = ties if need >= n_ties else ties & (torch.cumsum(ties, 0) <= need)
        strict |= fill
    return strict.reshape(x.shape)


def fraction_mask(x: torch.Tensor, frac: float, largest: bool) -> torch.Tensor:
    """Boolean mask of exactly ``round(frac * numel)`` entries with the largest (or smallest) x.

    Ties at the threshold are filled in index order, so the mask density is exact even for
    bf16 weights, where many entries share a magnitude.
    """
    thr, need = fraction_threshold(x, frac, largest)
    return threshold_mask(x, thr, need, largest)


def project_left(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Uᵀ W`` (k x n) in float64, converting W in column chunks."""
    m, n = w.shape
    out = torch.empty(u.shape[1], n, dtype=torch.float64, device=w.device)
    step = max(1, _CHUNK_ELEMS // max(1, m))
    for j in range(0, n, step):
        out[:, j : j + step] = u.T @ w[:, j : j + step].to(torch.float64)
    return out


def project_right(w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``W V`` (m x k) in float64, converting W in column chunks."""
    m, n = w.shape
    out = torch.zeros(m, v.shape[1], dtype=torch.float64, device=w.device)
    step = max(1, _CHUNK_ELEMS // max(1, m))
    for j in range(0, n, step):
        out.addmm_(w[:, j : j + step].to(torch.float64), v[j : j + step])
    return out
