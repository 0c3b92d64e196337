"""Linear-algebra kernels with stated precision.

* :func:`spectrum` - singular values and top-k singular vectors of a matrix, either through
  the float64 Gram matrix and ``eigh`` (``gram``; 2-17x faster than SVD on CPU, peers.md §C)
  or through float64 ``torch.linalg.svd`` (``svd``; exact reference). bf16 SVD does not exist
  on CPU, and float32 Gram spectra inflate the NSS of tiny updates (papers.md §8), so both
  routes work in float64.
* :func:`principal_angles` - angles between two subspaces, accurate for tiny angles.
* :func:`top_singular_value` - sigma_1 from the Gram matrix's top eigenvalue (stable rank).
* :func:`fraction_mask` - an exact top/bottom-fraction mask with deterministic tie-breaking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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


def spectrum(w: torch.Tensor, k: int, method: str = "gram") -> Spectrum:
    """Singular values of ``w`` and its top-``k`` singular vectors.

    ``gram``: for m <= n, ``G = W Wᵀ`` (float64), ``G = U diag(s²) Uᵀ`` by ``eigh``, and
    ``V_k = Wᵀ U_k diag(1/s_k)``; the transposed route when m > n. Cost ≈ 2·min²·max flops
    + O(min³). Relative error of the top-k values ≈ 1e-12; tail values lose accuracy as
    cond(W)² grows, which NSS (dominated by the largest values) tolerates.
    ``svd``: ``torch.linalg.svd`` of the float64 matrix.
    """
    m, n = w.shape
    k = max(0, min(k, m, n))
    if method == "svd":
        u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
        return Spectrum(s, u[:, :k].contiguous(), vh[:k].T.contiguous(), "svd-f64")
    if method != "gram":
        raise ValueError(f"unknown spectral method {method!r}")
    if m > n:
        t = spectrum(w.T, k, method)
        return Spectrum(t.s, t.v, t.u, t.method)
    evals, evecs = torch.linalg.eigh(gram(w))
    s = evals.flip(0).clamp_min(0.0).sqrt()
    u = evecs.flip(1)[:, :k].contiguous()
    s_max = float(s[0]) if s.numel() else 0.0
    return Spectrum(s, u, _right_vectors(w, u, s[:k], s_max), "gram-eigh-f64")


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


def fraction_mask(x: torch.Tensor, frac: float, largest: bool) -> torch.Tensor:
    """Boolean mask of exactly ``round(frac * numel)`` entries with the largest (or smallest) x.

    Ties at the threshold are filled in index order, so the mask density is exact even for
    bf16 weights, where many entries share a magnitude.
    """
    flat = x.reshape(-1)
    n = flat.numel()
    count = int(round(frac * n))
    if count <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    if count >= n:
        return torch.ones_like(x, dtype=torch.bool)
    if largest:
        thr = torch.kthvalue(flat, n - count + 1).values
        strict = flat > thr
    else:
        thr = torch.kthvalue(flat, count).values
        strict = flat < thr
    need = count - int(strict.sum())
    ties = flat == thr
    fill = ties & (torch.cumsum(ties, 0, dtype=torch.int64) <= need)
    return (strict | fill).reshape(x.shape)


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
