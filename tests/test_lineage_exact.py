"""Known answers for the exact agreement-count null (opdgeo/lineage/exact.py), by enumeration."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from opdgeo.lineage.exact import Board, at_least, rook_numbers, tail, total


def _enumerate(board_cells: set[tuple[int, int]], m: int, n: int) -> Counter[int]:
    """Law of K over all injections g: [m] -> [n] (brute force)."""
    counts: Counter[int] = Counter()
    for g in itertools.permutations(range(n), m):
        counts[sum((i, g[i]) in board_cells for i in range(m))] += 1
    return counts


@pytest.mark.parametrize("m,n", [(1, 1), (3, 3), (5, 5), (6, 6), (3, 5), (4, 7)])
def test_diagonal_matches_enumeration(m: int, n: int) -> None:
    board = Board.diagonal(m, n)
    counts = _enumerate({(i, i) for i in range(m)}, m, n)
    assert sum(counts.values()) == total(board)
    for k in range(m + 2):
        assert at_least(board, k) == sum(c for h, c in counts.items() if h >= k)


def test_rencontres_known_values() -> None:
    # Derangements of 6: 265; permutations of 6 with exactly 2 fixed points: C(6,2)*D(4) = 135.
    board = Board.diagonal(6, 6)
    assert total(board) - at_least(board, 1) == 265
    assert at_least(board, 2) - at_least(board, 3) == 135
    # All fixed: exactly one permutation, p = 1/n!.
    t = tail(Board.diagonal(384, 384), 384, 0.5)
    assert t.log10_p_ge == pytest.approx(-math.lgamma(385) / math.log(10), rel=1e-12)


@pytest.mark.parametrize(
    "blocks,m,n",
    [(((2, 2), (2, 2)), 4, 4), (((3, 3), (3, 3)), 6, 6), (((2, 3), (1, 2)), 4, 6)],
)
def test_blocks_match_enumeration(blocks: tuple[tuple[int, int], ...], m: int, n: int) -> None:
    cells, r0, c0 = set(), 0, 0
    for a, b in blocks:
        cells |= {(r0 + i, c0 + j) for i in range(a) for j in range(b)}
        r0, c0 = r0 + a, c0 + b
    board = Board(m, n, blocks)
    counts = _enumerate(cells, m, n)
    for k in range(m + 2):
        assert at_least(board, k) == sum(c for h, c in counts.items() if h >= k)
    assert rook_numbers(board)[1] == len(cells)


def test_large_diagonal_truncation_is_accurate() -> None:
    # n = 1000, K >= 3: the fixed-point law is Poisson(1) to within 1/n!-ish terms.
    board = Board.diagonal(1000, 1000)
    p = at_least(board, 3) / total(board)
    poisson = 1 - sum(math.exp(-1) / math.factorial(i) for i in range(3))
    assert p == pytest.approx(poisson, rel=1e-12)


def test_randomised_p_is_between_bounds() -> None:
    board = Board.diagonal(8, 8)
    lo = tail(board, 2, 1e-9)
    hi = tail(board, 2, 1 - 1e-9)
    gt = at_least(board, 3) / total(board)
    ge = at_least(board, 2) / total(board)
    assert 10**lo.log10_p_random == pytest.approx(gt, rel=1e-6)
    assert 10**hi.log10_p_random == pytest.approx(ge, rel=1e-6)
    assert lo.log10_p_ge == pytest.approx(math.log10(ge))


def test_randomised_p_is_uniform() -> None:
    # Exact law of K on a 5 x 5 diagonal, U on a fine grid: P(p <= a) = a for every a.
    board = Board.diagonal(5, 5)
    probs = {k: (at_least(board, k) - at_least(board, k + 1)) / total(board) for k in range(6)}
    us = [(i + 0.5) / 400 for i in range(400)]
    for a in (0.01, 0.05, 0.2, 0.5, 0.9):
        mass = sum(
            probs[k] / len(us)
            for k in probs
            for u in us
            if 10 ** tail(board, k, u).log10_p_random <= a
        )
        assert mass == pytest.approx(a, abs=3e-3)
