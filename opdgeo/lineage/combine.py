"""Combining per-test p-values, and the verdict.

Fisher's method: X = -2 sum ln p_i follows chi-square with 2n degrees of freedom when the n
p-values are independent and uniform under the null. Its survival function has the closed
form sf(X; 2n) = exp(-X/2) sum_{i<n} (X/2)^i / i!, evaluated here in log space, so a
combined p of 10^-2000 is a number, not an underflow. Validity: the tests read disjoint
weights (distinct blocks, distinct projections), and for independently initialised models
the matchings of different tests are functions of independent weights, so their randomised
p-values are independent and exactly uniform (see statistics.py and layers.py for the
conditioning argument behind the block assignment and the residual alignment). Trained
models add dependence (e.g. a shared residual basis); the Bonferroni bound
min(1, n min p_i), valid under *any* dependence, is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LN10 = math.log(10.0)


def fisher_log10(log10_ps: Sequence[float]) -> float:
    """log10 of Fisher's combined p-value (exact chi-square tail, log space)."""
    n = len(log10_ps)
    if n == 0:
        return 0.0
    half_x = -sum(log10_ps) * LN10  # X / 2 = -sum ln p_i
    if half_x <= 0:
        return 0.0
    log_half_x = math.log(half_x)
    terms = [i * log_half_x - math.lgamma(i + 1) for i in range(n)]
    top = max(terms)
    log_sum = top + math.log(sum(math.exp(t - top) for t in terms))
    return min(0.0, (-half_x + log_sum) / LN10)


def bonferroni_log10(log10_ps: Sequence[float]) -> float:
    """log10 min(1, n min p_i)."""
    if not log10_ps:
        return 0.0
    return min(0.0, math.log10(len(log10_ps)) + min(log10_ps))


def contributions(log10_ps: Sequence[float]) -> list[float]:
    """Share of each test in Fisher's statistic -2 sum ln p_i (sums to 1)."""
    total = -sum(log10_ps)
    return [(-p / total) if total > 0 else 0.0 for p in log10_ps]
