"""Exact null distribution of an agreement count between two matchings.

Every lineage test in this package reduces to the same question. Two matchings ``f`` and ``g``
map the ``m`` units read from checkpoint A injectively into the ``n >= m`` units read from B.
They are computed from *different* weights (MLP gate vs up rows, head k vs q projections, two
halves of a matrix's columns), so when A and B were initialised independently they are two
independent, uniformly distributed injections (B's units are exchangeable: i.i.d.
initialisation and permutation-equivariant training). The statistic is the number of hits

    K = #{i : (i, g(i)) lies on the board},    board = {(i, j) : j is where f says i belongs}

For the MLP test the board is the diagonal of ``f`` (K = #{i : f(i) = g(i)}); for grouped
query attention it is a union of blocks (q head i may land on any q head of the kv group
that the k matching chose). With f fixed, g uniform, rook theory gives the law of K exactly
(Riordan, *An Introduction to Combinatorial Analysis*, 1958, ch. 7-8): with r_j the number of
ways to place j non-attacking rooks on the board,

    #{g : K >= k} = sum_{j>=k} (-1)^(j-k) C(j-1, k-1) r_j (n-j)!/(n-m)!      (k >= 1)

out of n!/(n-m)! injections. For a diagonal of m cells r_j = C(m, j) (the rencontres numbers
when m = n: K is close to Poisson(1)); for disjoint full blocks of a x b cells the rook
polynomial is the product of sum_j C(a, j) C(b, j) j! x^j over blocks. Everything is computed
in exact integer arithmetic (Python ints), so a p-value of 1/384! is exact, not an underflow.

Discrete p-values are made exactly uniform under the null by randomisation (the standard
device for discrete tests): p = P(K > k) + U * P(K = k), U ~ Uniform(0, 1). The conservative
P(K >= k) is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_TRUNCATE_BITS = 120
"""The diagonal series stops when a term is below 2^-120 of the first (error < (k+1) 2^-120)."""


@dataclass(frozen=True)
class Board:
    """Where a hit may land: disjoint full blocks of ``rows x cols`` cells.

    ``m`` units of A are matched into ``n`` units of B. A diagonal board (the MLP and split
    tests) is ``Board.diagonal(m, n, cells)``: ``cells`` blocks of 1 x 1.
    """

    m: int
    n: int
    blocks: tuple[tuple[int, int], ...]
    diagonal_cells: int = 0
    """Extra 1 x 1 blocks, kept as a count so a diagonal of 18 944 cells stays cheap."""

    @classmethod
    def diagonal(cls, m: int, n: int, cells: int | None = None) -> Board:
        cells = m if cells is None else cells
        return cls(m, n, (), cells)

    def __post_init__(self) -> None:
        if not 0 < self.m <= self.n:
            raise ValueError(f"need 0 < m <= n, got m={self.m}, n={self.n}")
        if self.max_hits > self.m:
            raise ValueError("board has more independent cells than rows")

    @property
    def max_hits(self) -> int:
        return self.diagonal_cells + sum(min(a, b) for a, b in self.blocks)

    @property
    def expected_hits(self) -> float:
        """E[K] under the null = (number of cells) / n."""
        return (self.diagonal_cells + sum(a * b for a, b in self.blocks)) / self.n


def _block_rooks(a: int, b: int) -> list[int]:
    return [math.comb(a, j) * math.comb(b, j) * math.factorial(j) for j in range(min(a, b) + 1)]


def _poly_mul(p: list[int], q: list[int]) -> list[int]:
    out = [0] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        if x:
            for j, y in enumerate(q):
                out[i + j] += x * y
    return out


def rook_numbers(board: Board) -> list[int]:
    """r_0..r_max of ``board`` (exact). Only for boards with few cells; see :func:`at_least`."""
    poly = [math.comb(board.diagonal_cells, j) for j in range(board.diagonal_cells + 1)]
    for a, b in board.blocks:
        poly = _poly_mul(poly, _block_rooks(a, b))
    return poly


def _falling(n: int, m: int, j: int) -> int:
    """(n-j)!/(n-m)! = (n-m+1)(n-m+2)...(n-j), an integer for j <= m."""
    return math.prod(range(n - m + 1, n - j + 1))


def total(board: Board) -> int:
    """Number of injections of m units into n: n!/(n-m)!."""
    return _falling(board.n, board.m, 0)


def at_least(board: Board, k: int) -> int:
    """#{injections g : K >= k} for a uniformly drawn g (exact, see module docstring)."""
    if k <= 0:
        return total(board)
    if k > board.max_hits:
        return 0
    if board.blocks:
        rooks = rook_numbers(board)
        return sum(
            (-1) ** (j - k) * math.comb(j - 1, k - 1) * rooks[j] * _falling(board.n, board.m, j)
            for j in range(k, len(rooks))
        )
    # Diagonal: terms shrink at least like 1/(j-k)!, so the alternating series is truncated
    # once a term is negligible. Built incrementally: C(j-1,k-1), C(cells,j), (n-j)!/(n-m)!.
    cells, n, m = board.diagonal_cells, board.n, board.m
    comb_k = 1  # C(j-1, k-1) at j = k
    comb_c = math.comb(cells, k)
    fall = _falling(n, m, k)
    first = comb_k * comb_c * fall
    acc, j = first, k
    while j < cells:
        j += 1
        comb_k = comb_k * (j - 1) // (j - k)
        comb_c = comb_c * (cells - j + 1) // j
        fall //= n - j + 1
        term = comb_k * comb_c * fall
        if term == 0 or term << _TRUNCATE_BITS < first:
            break
        acc += term if (j - k) % 2 == 0 else -term
    return acc


@dataclass(frozen=True)
class Tail:
    """Exact null tail of an observed agreement count, as log10 probabilities."""

    hits: int
    log10_p_ge: float
    """log10 P(K >= hits): the conservative p-value."""
    log10_p_random: float
    """log10 of the randomised p-value P(K > hits) + U P(K = hits) (exactly uniform)."""
    expected: float
    max_hits: int
    log10_p_min: float
    """log10 P(K >= max_hits): the smallest p-value this test can give (its power)."""


def _log10(x: int) -> float:
    return -math.inf if x <= 0 else math.log10(x)


def tail(board: Board, hits: int, u: float) -> Tail:
    """Null tail of ``hits`` on ``board``; ``u`` in (0, 1) is the randomisation draw."""
    if not 0.0 < u < 1.0:
        raise ValueError(f"u must lie in (0, 1), got {u}")
    t = total(board)
    ge = at_least(board, hits)
    gt = at_least(board, hits + 1)
    scale = 1 << 64
    numerator = gt * scale + int(u * scale) * (ge - gt)
    return Tail(
        hits=hits,
        log10_p_ge=_log10(ge) - _log10(t),
        log10_p_random=_log10(numerator) - _log10(scale) - _log10(t),
        expected=board.expected_hits,
        max_hits=board.max_hits,
        log10_p_min=_log10(at_least(board, board.max_hits)) - _log10(t),
    )
