"""All eigenvalues and only the top-k eigenvectors of a symmetric float64 matrix.

The Gram route of :func:`opdgeo.linalg.spectrum` needs every eigenvalue of ``G = W Wᵀ`` (NSS
uses the whole singular spectrum) but only the top-k eigenvectors (k ≤ 512, by default
min(m, n)/8). ``torch.linalg.eigh`` (LAPACK ``syevd``) computes all n vectors: after the
tridiagonal reduction (4/3·n³ flops) come divide and conquer on the tridiagonal and the
back-transformation of n vectors (another ≈ 2·n³ + O(n³)). :func:`eigh_top` reduces once and
then back-transforms only the vectors that are used, with LAPACK routines through scipy:

1. ``dsytrd``: ``G = Q T Qᵀ``, T tridiagonal, Q as n−1 Householder reflectors (blocked);
2. ``dstevd``: every eigenpair of T by divide and conquer (``dstedc``, the solver ``syevd``
   itself runs on T, so values and vectors are ``eigh``'s to rounding), O(n²)–O(n³) with
   deflation but far below the reduction in practice (n = 896: 79 ms against 112 ms for
   ``dsytrd`` on one thread);
3. ``ormqr`` (torch/MKL, blocked): ``X = Q Z`` applied to the top k vectors only, 2·n²·k flops
   instead of ``syevd``'s 2·n³.

Total ≈ 4/3·n³ + 2·n²·k + (the tridiagonal solve) instead of ≈ 4·n³. An earlier version
solved T by ``dsterf`` + MRRR (``dstemr``, k vectors) + a Rayleigh-Ritz step: as fast, but
its angles were up to 5x less accurate against the float64 SVD inside the Marchenko-Pastur
bulk (1.2e-10 against 2.4e-11 relative; bench/RESULTS.md table D), so it was replaced.
Should ``dstevd`` report a failure (info ≠ 0; it has never happened in the tests) the
tridiagonal matrix is solved by ``torch.linalg.eigh`` instead (method ``eigh``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from opdgeo.threads import EIGH_PARALLEL_FLOPS, threads_for

METHOD = "dc"
"""The method label of the selective route (``dsytrd`` + ``dstevd`` + ``ormqr`` of k vectors)."""
SMALL_N = 224
"""Below this order the full ``torch.linalg.eigh`` is faster (fixed costs of the four LAPACK
calls): on one thread 0.27 vs 0.47 ms at n = 64, 3.7 vs 4.0 ms at 192, 5.4 vs 5.2 ms at 224,
8.3 vs 7.0 ms at 256 (k = n/8; load 7)."""
FALLBACK = "eigh"
"""The label when ``torch.linalg.eigh`` did the work (n < :data:`SMALL_N`, non-CPU tensors,
a LAPACK failure)."""


@dataclass(frozen=True)
class TopEigen:
    """All eigenvalues (descending, float64) and the eigenvectors of the ``k`` largest."""

    values: torch.Tensor
    """n, float64, descending."""
    vectors: torch.Tensor
    """n x k, float64, orthonormal columns, column i belongs to ``values[i]``."""
    method: str
    """:data:`METHOD`, or :data:`FALLBACK` when ``torch.linalg.eigh`` did the work."""


def eigh_flops(n: int, k: int) -> float:
    """Arithmetic of :func:`eigh_top`: reduction 4/3·n³ plus back-transformation 2·n²·k."""
    return 4.0 / 3.0 * n**3 + 2.0 * n * n * k


def _full(g: torch.Tensor, k: int) -> TopEigen:
    values, vectors = torch.linalg.eigh(g)
    return TopEigen(values.flip(0), vectors.flip(1)[:, :k].contiguous(), FALLBACK)


def eigh_top(g: torch.Tensor, k: int, overwrite: bool = False) -> TopEigen:
    """All eigenvalues and the top-``k`` eigenvectors of the symmetric float64 matrix ``g``.

    Only the upper triangle of ``g`` is read. ``overwrite=True`` lets the reduction work in
    ``g``'s memory (it is then destroyed; saves an n x n copy). k is clamped to [0, n]. Runs
    on one thread below n ≈ 1200 (:data:`opdgeo.threads.EIGH_PARALLEL_FLOPS`). Matrices of
    order below :data:`SMALL_N` and non-CPU tensors take the full ``torch.linalg.eigh``.
    """
    n = g.shape[0]
    if g.dim() != 2 or g.shape[1] != n:
        raise ValueError(f"eigh_top needs a square matrix, got {tuple(g.shape)}")
    k = max(0, min(k, n))
    g = g.to(torch.float64)
    if g.device.type != "cpu":
        return _full(g, k)
    if n <= 1:
        return TopEigen(g.reshape(n).clone(), torch.ones(n, k, dtype=torch.float64), METHOD)
    import scipy.linalg.lapack  # noqa: F401 - loaded before threads_for, which limits its BLAS

    with threads_for(eigh_flops(n, k), EIGH_PARALLEL_FLOPS):
        if n < SMALL_N:
            return _full(g, k)
        return _eigh_top_cpu(g, k, overwrite)


def _eigh_top_cpu(g: torch.Tensor, k: int, overwrite: bool) -> TopEigen:
    import scipy.linalg.lapack as lapack  # here: the scan and fast tiers never load scipy

    n = g.shape[0]
    # gᵀ of a row-major g is column-major: LAPACK reads it without a copy (and works in place
    # when overwrite is set). Its lower triangle is g's upper one, whatever g's layout.
    a = g.numpy().T if g.is_contiguous() else np.asfortranarray(g.numpy().T)
    lwork = int(lapack.dsytrd_lwork(n, lower=1)[0])
    refl, diag, off, tau, info = lapack.dsytrd(a, lower=1, lwork=lwork, overwrite_a=overwrite)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise RuntimeError(f"dsytrd failed (info={info})")
    method = METHOD
    values, z, info = lapack.dstevd(diag, off, compute_v=1)  # ascending
    if info != 0:  # pragma: no cover - divide and conquer failed: eigh of T itself
        t = torch.diag(torch.from_numpy(diag)) + torch.diag(torch.from_numpy(off), -1)
        t_values, t_vectors = torch.linalg.eigh(t)
        values, z = t_values.numpy(), t_vectors.numpy()
        method = FALLBACK
    top = torch.from_numpy(values[::-1].copy())
    if k == 0:
        return TopEigen(top, torch.zeros(n, 0, dtype=torch.float64), method)
    zt = torch.from_numpy(z[:, n - k :][:, ::-1].copy())  # the k largest, descending
    # Q = diag(1, Q'), Q' the QR-style product of the reflectors stored below the first
    # sub-diagonal of the lower triangle (LAPACK dormtr with uplo='L' does the same).
    reflectors = torch.from_numpy(refl)
    rest = torch.ormqr(reflectors[1:, : n - 1], torch.from_numpy(tau), zt[1:], True, False)
    return TopEigen(top, torch.cat([zt[:1], rest], 0), method)
