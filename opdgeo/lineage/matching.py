"""Matching units between two checkpoints: similarity matrices and linear assignment.

A matching is only an input to a test (see :mod:`opdgeo.lineage.exact`): its p-value comes
from the agreement of two matchings computed on different weights, so the similarity used
here need not be calibrated, only invariant to what training and packaging do:

- units (MLP hidden units, matrix rows) are compared by |cosine| of their weight rows:
  invariant to permuting units, to flipping a unit's sign and to rescaling it;
- attention heads are compared by linear CKA of their d x H projection blocks (Kornblith et
  al. 2019; AWM, arXiv 2510.06738, compares Q/K weights this way): invariant to any
  orthogonal transform inside a head and to rescaling a head;
- residual dimensions are compared by |correlation| of embedding columns over shared tokens.

Linear assignment is scipy's ``linear_sum_assignment`` (Crouse 2016, a Jonker-Volgenant
variant), maximising total similarity. Similarities are computed in float32 from unit-norm
rows: exact agreement counts do not depend on the last bits of a similarity.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero."""
    x = x.to(torch.float32)
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / torch.where(norms > 0, norms, torch.ones_like(norms))


def abs_cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|cos| between every row of ``a`` (m x p) and of ``b`` (n x p): an m x n array."""
    out: np.ndarray = np.abs((unit_rows(a) @ unit_rows(b).T).numpy())
    return out


def assign(similarity: np.ndarray) -> np.ndarray:
    """Injective matching maximising total similarity: out[i] = matched column of row i.

    Needs rows <= columns (every row is matched); ties are broken by scipy deterministically.
    """
    m, n = similarity.shape
    if m > n:
        raise ValueError(f"cannot match {m} rows injectively into {n} columns")
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    out = np.empty(m, dtype=np.int64)
    out[rows] = cols
    return out


def head_blocks(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(heads, head_dim, H) view of a (heads*head_dim, H) projection, rows centred over H."""
    x = w.to(torch.float32)
    x = x - x.mean(dim=1, keepdim=True)
    return x.reshape(-1, head_dim, x.shape[1])


def head_cka(a: torch.Tensor, b: torch.Tensor, head_dim: int) -> np.ndarray:
    """Linear CKA between every head of ``a`` and of ``b`` (heads x heads).

    With X = a head's block of A (d x H, rows centred over the H residual dimensions, which
    play the role of samples), CKA(X, Y) = ||X Y^T||_F^2 / (||X X^T||_F ||Y Y^T||_F).
    """
    xa, xb = head_blocks(a, head_dim), head_blocks(b, head_dim)
    cross = torch.einsum("adh,beh->abde", xa, xb)
    num = cross.pow(2).sum(dim=(2, 3))
    self_a = torch.linalg.matrix_norm(torch.einsum("adh,aeh->ade", xa, xa))
    self_b = torch.linalg.matrix_norm(torch.einsum("adh,aeh->ade", xb, xb))
    den = self_a[:, None] * self_b[None, :]
    return (num / torch.where(den > 0, den, torch.ones_like(den))).numpy()


def column_correlation(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """|Pearson correlation| between every column of ``a`` (t x p) and of ``b`` (t x q)."""
    xa = a.to(torch.float32)
    xb = b.to(torch.float32)
    xa = xa - xa.mean(dim=0, keepdim=True)
    xb = xb - xb.mean(dim=0, keepdim=True)
    return abs_cosine(xa.T.contiguous(), xb.T.contiguous())


def signed_alignment(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed permutation of B's columns that best matches A's (AWM-style residual alignment).

    Returns ``(perm, sign, corr)`` with A[:, i] ~ sign[i] * B[:, perm[i]] and corr[i] their
    |correlation|; ``a`` and ``b`` are t x H over the same t tokens.
    """
    xa = a.to(torch.float32)
    xb = b.to(torch.float32)
    xa = xa - xa.mean(dim=0, keepdim=True)
    xb = xb - xb.mean(dim=0, keepdim=True)
    corr = (unit_rows(xa.T.contiguous()) @ unit_rows(xb.T.contiguous()).T).numpy()
    perm = assign(np.abs(corr))
    matched = corr[np.arange(len(perm)), perm]
    sign = np.sign(matched)
    sign[sign == 0] = 1.0
    return perm, sign, np.abs(matched)
