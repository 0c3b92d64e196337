"""Typed results of ``opdgeo lineage``: per test, per tensor, per layer, per pair."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("same-weights", "derived", "independent", "inconclusive")


@dataclass(frozen=True)
class TestRecord:
    """One agreement test between two matchings (see :mod:`opdgeo.lineage.statistics`).

    ``hits`` of ``units_a`` units agree (null expectation ``expected``, at most ``max_hits``);
    ``log10_p`` is the randomised exact p-value (uniform under the null), ``log10_p_upper``
    the conservative P(K >= hits). ``effect`` = (hits - expected) / (max_hits - expected):
    0 for independent weights, 1 when every unit is recovered.
    """

    kind: str
    """``mlp`` (gate vs up matching), ``attn_kv`` (k vs v heads), ``attn_q`` (q heads vs the
    k matching's groups), ``embed`` / ``lm_head`` (residual dimensions over two token
    halves), ``matrix`` (rows, over two column halves)."""
    a: str
    b: str
    layer_a: int | None
    layer_b: int | None
    units_a: int
    units_b: int
    hits: int
    expected: float
    max_hits: int
    log10_p: float
    log10_p_upper: float
    effect: float
    in_combined: bool
    log10_p_min: float
    """The smallest p this test can give (every unit recovered): its power."""
    note: str = ""


@dataclass(frozen=True)
class TensorIdentity:
    """Exact identity of one tensor pair on the rows read from both sides."""

    a: str
    b: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    rows_compared: int
    rows_total: int
    identical: bool
    """Equal values at the coarser of the two dtypes (a bf16 -> fp32 cast counts as equal)."""
    bitwise: bool
    """Same dtype and the same bytes."""


@dataclass(frozen=True)
class LayerEvidence:
    """What the tests say about one block (or the embedding / head) of checkpoint A."""

    part: str
    """``layer 3``, ``embed``, ``lm_head``, or a matrix name (generic family)."""
    layer_a: int | None
    layer_b: int | None
    status: str
    """``identical``, ``shared``, ``not shared``, ``weak``, ``missing in B``, ``extra in B``,
    ``duplicate``, ``untested``."""
    log10_p: float
    effect: float
    tests: tuple[str, ...]
    identical_tensors: int
    n_tensors: int
    note: str = ""


@dataclass
class PairResult:
    """The lineage of checkpoint ``b`` relative to ``a``."""

    a: str
    b: str
    verdict: str
    log10_p: float
    """Fisher's combination of the included tests (log10)."""
    log10_p_bonferroni: float
    """min(1, n * min p): valid under any dependence between tests (log10)."""
    effect: float
    family: str
    n_tests: int
    reasons: list[str]
    decided_by: list[str]
    layers: list[LayerEvidence]
    tests: list[TestRecord]
    identity: list[TensorIdentity]
    bytes_read: int
    bytes_a: int
    bytes_b: int
    seconds: float
    alignment: str
    notes: list[str] = field(default_factory=list)

    @property
    def p_value(self) -> float:
        return 10.0**self.log10_p if self.log10_p > -300 else 0.0

    @property
    def pair_bytes(self) -> int:
        return self.bytes_a + self.bytes_b

    @property
    def read_fraction(self) -> float:
        return self.bytes_read / self.pair_bytes if self.pair_bytes else math.nan

    def summary(self) -> dict[str, Any]:
        """One flat row (the CSV / table columns)."""
        shared = [e.part for e in self.layers if e.status in ("shared", "identical")]
        not_shared = [e.part for e in self.layers if e.status == "not shared"]
        return {
            "a": self.a,
            "b": self.b,
            "verdict": self.verdict,
            "p_value": self.p_value,
            "log10_p": self.log10_p,
            "log10_p_bonferroni": self.log10_p_bonferroni,
            "effect": self.effect,
            "family": self.family,
            "n_tests": self.n_tests,
            "layers_shared": len(shared),
            "layers_not_shared": ";".join(not_shared),
            "tensors_identical": sum(i.identical for i in self.identity),
            "tensors_compared": len(self.identity),
            "alignment": self.alignment,
            "bytes_read": self.bytes_read,
            "pair_bytes": self.pair_bytes,
            "read_fraction": self.read_fraction,
            "seconds": self.seconds,
            "decided_by": "; ".join(self.decided_by),
            "reasons": "; ".join(self.reasons),
        }


@dataclass
class LineageResult:
    """Every pair among the checkpoints given (i < j), in input order."""

    labels: list[str]
    pairs: list[PairResult]
    settings: dict[str, Any]
    errors: dict[tuple[int, int], str] = field(default_factory=dict)
    """Pairs that could not be compared, with the one-line reason."""

    def pair(self, i: int, j: int) -> PairResult | None:
        a, b = self.labels[i], self.labels[j]
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        return None
