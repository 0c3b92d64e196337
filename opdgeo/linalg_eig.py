"""All eigenvalues and only the top-k eigenvectors of a symmetric float64 matrix.

The Gram route of :func:`opdgeo.linalg.spectrum` needs every eigenvalue of ``G = W Wᵀ`` (NSS
uses the whole singular spectrum) but only the top-k eigenvectors (k ≤ 512, by default
min(m, n)/8). ``torch.linalg.eigh`` (LAPACK ``syevd``) computes all n vectors: after the
tridiagonal reduction (4/3·n³ flops) come divide and conquer on the tridiagonal and the
back-transformation of n vectors (another ≈ 2·n³ + O(n³)). :func:`eigh_top` reduces once and
then does only what is used, with LAPACK routines through scipy:

1. ``dsytrd``: ``G = Q T Qᵀ``, T tridiagonal, Q as n−1 Householder reflectors (blocked);
2. ``dsterf``: all eigenvalues of T (Pal-Walker-Kahan QR without vectors, O(n²)); these are
   the eigenvalues ``syevd`` returns for ``jobz='N'``, backward stable like ``eigh``'s;
3. ``dstemr`` (MRRR, Dhillon-Parlett) with an index range: the k largest eigenpairs of T,
   O(n·k); vectors orthogonal to O(n·eps) (the same guarantee as ``syevr``), then a
   Rayleigh-Ritz step on T in their span (:func:`_rayleigh_ritz`, O(n·k²)) so they are
   orthonormal to machine precision and individually as accurate as ``eigh``'s;
4. ``ormqr`` (torch/MKL, blocked): ``X = Q Z`` applied to the k vectors only, 2·n²·k flops.

Total ≈ 4/3·n³ + 2·n²·k + O(n·k²) instead of ≈ 4·n³: 2-4x faster at k = n/8
(bench/KERNELS.md).
Should ``dsterf`` or ``dstemr`` report a failure (info ≠ 0; it has never happened in the
tests) the tridiagonal matrix is solved by ``torch.linalg.eigh`` instead (method ``eigh``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg.lapack as lapack
import torch

from opdgeo.threads import EIGH_PARALLEL_FLOPS, threads_for

METHOD = "mrrr"
"""The method label of the selective route (``dsytrd`` + ``dsterf`` + ``dstemr`` + ``ormqr``)."""
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
    on one thread below n ≈ 9000 (:data:`opdgeo.threads.EIGH_PARALLEL_FLOPS`). Matrices of
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
    with threads_for(eigh_flops(n, k), EIGH_PARALLEL_FLOPS):
        if n < SMALL_N:
            return _full(g, k)
        return _eigh_top_cpu(g, k, overwrite)


def _eigh_top_cpu(g: torch.Tensor, k: int, overwrite: bool) -> TopEigen:
    n = g.shape[0]
    # gᵀ of a row-major g is column-major: LAPACK reads it without a copy (and works in place
    # when overwrite is set). Its lower triangle is g's upper one, whatever g's layout.
    a = g.numpy().T if g.is_contiguous() else np.asfortranarray(g.numpy().T)
    lwork = int(lapack.dsytrd_lwork(n, lower=1)[0])
    refl, diag, off, tau, info = lapack.dsytrd(a, lower=1, lwork=lwork, overwrite_a=overwrite)
    if info != 0:  # pragma: no cover - only for invalid arguments
        raise RuntimeError(f"dsytrd failed (info={info})")
    method = METHOD
    values, info = lapack.dsterf(diag, off)
    z: np.ndarray | None = None
    if info == 0 and k > 0:
        off_n = np.append(off, 0.0)  # dstemr wants an n-long off-diagonal (last: workspace)
        il, iu = n - k + 1, n  # 1-based indices of the k largest eigenvalues, ascending
        work, iwork, _ = lapack.dstemr_lwork(diag, off_n, 2, 0.0, 0.0, il, iu)
        got, _, z, info = lapack.dstemr(
            diag, off_n, 2, 0.0, 0.0, il, iu, lwork=int(work), liwork=int(iwork)
        )
        if got != k:  # pragma: no cover - MRRR failure
            info = -1
    if info != 0:  # pragma: no cover - QR or MRRR failed: eigh of the tridiagonal itself
        t = torch.diag(torch.from_numpy(diag)) + torch.diag(torch.from_numpy(off), -1)
        t_values, t_vectors = torch.linalg.eigh(t)
        values, z = t_values.numpy(), t_vectors[:, n - k :].numpy()
        method = FALLBACK
    top = torch.from_numpy(values[::-1].copy())
    if k == 0 or z is None:
        return TopEigen(top, torch.zeros(n, 0, dtype=torch.float64), method)
    # descending: the last of the ascending columns first
    zt = _rayleigh_ritz(diag, off, torch.from_numpy(z[:, k - 1 :: -1].copy()))
    # Q = diag(1, Q'), Q' the QR-style product of the reflectors stored below the first
    # sub-diagonal of the lower triangle (LAPACK dormtr with uplo='L' does the same).
    reflectors = torch.from_numpy(refl)
    rest = torch.ormqr(reflectors[1:, : n - 1], torch.from_numpy(tau), zt[1:], True, False)
    return TopEigen(top, torch.cat([zt[:1], rest], 0), method)


def _rayleigh_ritz(diag: np.ndarray, off: np.ndarray, z: torch.Tensor) -> torch.Tensor:
    """Rayleigh-Ritz on span(z) for the tridiagonal T (diagonal ``diag``, off-diagonal
    ``off``): ``Q = qr(z)``, ``H = Qᵀ T Q`` (k x k), ``Q · eigvecs(H)``, descending.

    MRRR's vectors are accurate as a subspace but, inside clusters of close eigenvalues,
    individually mixed and orthogonal only to O(n·eps) (3e-13 at n = 1536); the right
    singular vectors ``Wᵀ u_i / s_i`` inherit that. The Ritz vectors are orthonormal to
    machine precision and the best individual vectors in the span; this brought the
    principal-energy errors against the float64 SVD back to the full ``eigh``'s level
    (bench/KERNELS.md). It works on T, so it costs O(n·k²) and never needs G itself.
    """
    q, _ = torch.linalg.qr(z)
    d = torch.from_numpy(diag)
    e = torch.from_numpy(off)
    tq = d[:, None] * q
    tq[:-1] += e[:, None] * q[1:]
    tq[1:] += e[:, None] * q[:-1]
    h = q.T @ tq
    _, y = torch.linalg.eigh((h + h.T) / 2)
    ritz: torch.Tensor = q @ y.flip(1)
    return ritz
