"""Per-test statistics: two matchings from different weights, and their exact agreement law.

Each test computes two matchings of A's units into B's units from weights that are
independent when A and B are independently initialised, counts how often they agree, and
reads the p-value off the exact null law (:mod:`opdgeo.lineage.exact`):

- ``mlp``: MLP hidden units matched on gate rows and, separately, on up rows (model tracing,
  Zhu et al. arXiv 2502.12292, matches units with a linear assignment and tests the matching
  on another weight so that the matching cannot bias the p-value). K = #units on which the
  two matchings agree; the null law is that of fixed points of a uniform injection.
- ``attn_kv``: kv heads matched by CKA on k rows and on v rows; K = #agreeing heads.
- ``attn_q``: query heads matched by CKA on q rows; a hit is a q head whose match lies in
  the kv group that the k matching assigned to its own group (a kv-head permutation moves
  the group's q heads with it, so this survives GQA reorderings). The board is one block per
  group.
- ``matrix`` / ``embed``: rows (or embedding columns = residual dimensions) matched on two
  disjoint halves of the other axis (even / odd columns or tokens).

Randomisation draws u from a hash (BLAKE2b) of the test's name and the bytes it read, so a
result is reproducible while u behaves as an independent uniform.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from opdgeo.lineage.exact import Board, Tail, tail
from opdgeo.lineage.matching import abs_cosine, assign, column_correlation, head_cka

_HASH_BYTES = 1 << 16


@dataclass(frozen=True)
class Outcome:
    """Result of one agreement test before it is labelled (see ``records.TestRecord``)."""

    units_a: int
    units_b: int
    tail: Tail
    note: str = ""

    @property
    def effect(self) -> float:
        t = self.tail
        span = t.max_hits - t.expected
        return (t.hits - t.expected) / span if span > 0 else 0.0


def draw_u(key: str, *tensors: torch.Tensor) -> float:
    """u in (0, 1) from BLAKE2b of ``key`` and up to 64 KiB of each tensor's bytes."""
    h = hashlib.blake2b(key.encode(), digest_size=16)
    for t in tensors:
        flat = t.detach().contiguous().reshape(-1)
        h.update(str(tuple(t.shape)).encode())
        h.update(flat.view(torch.uint8)[:_HASH_BYTES].numpy().tobytes())
    value = int.from_bytes(h.digest()[:8], "little")
    return (value + 0.5) / 2.0**64


def _oriented(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(smaller, larger) by rows: matchings go from the side with fewer units."""
    return (a, b) if a.shape[0] <= b.shape[0] else (b, a)


def pair_agreement(
    key: str,
    view1: tuple[torch.Tensor, torch.Tensor],
    view2: tuple[torch.Tensor, torch.Tensor],
) -> Outcome:
    """Rows of A vs rows of B seen through two views; K = #rows where both matchings agree.

    ``view1`` and ``view2`` are (A rows, B rows) pairs with the same unit order on each side
    and the same column count within a view.
    """
    a1, b1 = view1
    a2, b2 = view2
    if a1.shape[0] > b1.shape[0]:
        a1, b1, a2, b2 = b1, a1, b2, a2
    m, n = a1.shape[0], b1.shape[0]
    f = assign(abs_cosine(a1, b1))
    g = assign(abs_cosine(a2, b2))
    hits = int(np.sum(f == g))
    u = draw_u(key, a1, b1, a2, b2)
    return Outcome(m, n, tail(Board.diagonal(m, n), hits, u))


def mlp_test(
    key: str, gate: tuple[torch.Tensor, torch.Tensor], up: tuple[torch.Tensor, torch.Tensor]
) -> Outcome:
    """MLP units: matching on gate rows vs matching on up rows."""
    return pair_agreement(key, gate, up)


def split_test(key: str, a: torch.Tensor, b: torch.Tensor) -> Outcome:
    """Rows of a matrix: matching on even columns vs on odd columns."""
    return pair_agreement(key, (a[:, 0::2], b[:, 0::2]), (a[:, 1::2], b[:, 1::2]))


def embedding_test(key: str, a: torch.Tensor, b: torch.Tensor) -> Outcome:
    """Residual dimensions (columns, over the same t tokens): even tokens vs odd tokens."""
    m = a.shape[1]
    f = _assign_corr(a[0::2], b[0::2])
    g = _assign_corr(a[1::2], b[1::2])
    hits = int(np.sum(f == g))
    u = draw_u(key, a, b)
    return Outcome(m, m, tail(Board.diagonal(m, m), hits, u))


def _assign_corr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return assign(column_correlation(a, b))


def head_match(a: torch.Tensor, b: torch.Tensor, head_dim: int) -> np.ndarray:
    """Matching of A's heads into B's heads by CKA (A must not have more heads than B)."""
    return assign(head_cka(a, b, head_dim))


def kv_test(
    key: str,
    k: tuple[torch.Tensor, torch.Tensor],
    v: tuple[torch.Tensor, torch.Tensor],
    head_dim: int,
) -> tuple[Outcome, np.ndarray]:
    """kv heads: CKA matching on k vs on v. Returns the outcome and the k matching."""
    fk = head_match(k[0], k[1], head_dim)
    fv = head_match(v[0], v[1], head_dim)
    m, n = k[0].shape[0] // head_dim, k[1].shape[0] // head_dim
    hits = int(np.sum(fk == fv))
    u = draw_u(key, k[0], k[1], v[0], v[1])
    return Outcome(m, n, tail(Board.diagonal(m, n), hits, u)), fk


def q_group_test(
    key: str,
    q: tuple[torch.Tensor, torch.Tensor],
    k_match: np.ndarray,
    head_dim: int,
    group: int,
) -> Outcome:
    """q heads matched by CKA; a hit lands in the group that ``k_match`` gave its own group.

    ``group`` = q heads per kv head (1 for multi-head attention). Both sides hold whole
    groups of q heads in order (q head h belongs to kv group h // group).
    """
    m, n = q[0].shape[0] // head_dim, q[1].shape[0] // head_dim
    f = head_match(q[0], q[1], head_dim)
    groups_a, groups_b = -(-m // group), -(-n // group)
    hits = sum(int(k_match[i // group]) == int(f[i]) // group for i in range(m))
    blocks = []
    for ga in range(groups_a):
        rows = min(group, m - ga * group)
        gb = int(k_match[ga]) if ga < len(k_match) else -1
        cols = min(group, n - gb * group) if 0 <= gb < groups_b else 0
        if rows and cols:
            blocks.append((rows, cols))
    u = draw_u(key, q[0], q[1])
    board = Board(m, n, tuple(blocks)) if group > 1 else Board.diagonal(m, n, len(blocks))
    return Outcome(m, n, tail(board, hits, u))
