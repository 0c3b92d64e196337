"""What the classifier's confidence means: how often each of its rules was right on held-out runs.

A verdict names the rule that produced it, ``"<label> <agreeing>/<voting>"`` (e.g.
``"rl-like (opd or rlvr) 2/3"``: two of the three features that voted point to the label).
Its confidence is a conservative estimate of that rule's accuracy on the calibration runs: the
lower end of the Wilson score interval at one standard deviation (z = 1, about 84 % one-sided),
so a rule right 1 time out of 1 reads 0.50, 2 of 2 0.67, 9 of 9 0.90, 30 of 30 0.97, 2 of 6 0.18.
A rule never seen borrows the counts of the rules with the same label and no more agreeing
features (more agreement is assumed to be no less reliable); with none, confidence is 0 and a
caveat says there is no evidence.

The counts come from the zoo's training grid (zoo/grid/features.csv: SFT, RLVR and OPD at four
learning rates), fitted on seed 0 only; seed 1 is kept to check that confidence holds on runs
the counts never saw (``python -m zoo grid-calibrate`` writes the reliability table into
zoo/RESULTS.md). The same counts are listed in configs/default.toml's ``[calibration]`` table,
and a test recomputes them from the committed features.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Z = 1.0
"""Standard deviations below the observed accuracy (Wilson score interval)."""

RULE_LABELS = ("sft-like", "opd-like", "rlvr-like", "rl-like (opd or rlvr)")
"""The labels a rule can name (the classifier's labels that carry a confidence)."""


def check_rule_name(rule: str) -> bool:
    """Whether ``rule`` is a rule the classifier can produce: ``"<label> <agreeing>/<voting>"``
    with a label of :data:`RULE_LABELS` and 1 <= agreeing <= voting."""
    label, _, votes = rule.rpartition(" ")
    counts = re.fullmatch(r"([0-9]{1,3})/([0-9]{1,3})", votes)
    return label in RULE_LABELS and counts is not None and 1 <= int(counts[1]) <= int(counts[2])


GRID_SEED0: dict[str, tuple[int, int]] = {
    "opd-like 2/2": (1, 3),
    "rlvr-like 2/2": (1, 2),
}
"""Rule -> (right, total) on the zoo grid's seed 0 (generated: ``python -m zoo grid-calibrate``)."""

RL_FAMILY = ("opd", "rlvr")


@dataclass(frozen=True)
class Calibration:
    """Per-rule counts of right and total labels on the calibration runs."""

    rules: Mapping[str, tuple[int, int]] = field(default_factory=lambda: dict(GRID_SEED0))
    source: str = "zoo grid seed 0 (zoo/grid/features.csv)"

    def counts(self, rule: str) -> tuple[int, int, str]:
        """(right, total, the rules they come from) behind ``rule``'s confidence."""
        if rule in self.rules:
            return (*self.rules[rule], rule)
        label, _, votes = rule.rpartition(" ")
        agreeing = _agreeing(votes)
        similar = [
            r
            for r in self.rules
            if r.rpartition(" ")[0] == label and _agreeing(r.rpartition(" ")[2]) <= agreeing
        ]
        right = sum(self.rules[r][0] for r in similar)
        total = sum(self.rules[r][1] for r in similar)
        return right, total, " + ".join(similar)

    def confidence(self, rule: str) -> float:
        """Wilson lower bound (z = 1) of ``rule``'s accuracy; 0 without any evidence."""
        right, total, _ = self.counts(rule)
        return wilson_lower(right, total)

    def evidence(self, rule: str) -> str:
        """One line saying what the confidence of ``rule`` rests on."""
        right, total, used = self.counts(rule)
        if not total:
            return (
                f"rule '{rule}' never occurred on the {self.source}: confidence 0 means no "
                "evidence, not a wrong label"
            )
        via = "" if used == rule else f" (borrowed from {used})"
        return (
            f"confidence {wilson_lower(right, total):.2f}: rule '{rule}' was right {right} of "
            f"{total} times on the {self.source}{via}"
        )


def _agreeing(votes: str) -> int:
    head = votes.partition("/")[0]
    return int(head) if head.isdigit() else 0


def wilson_lower(right: int, total: int, z: float = Z) -> float:
    """Lower end of the Wilson score interval for ``right`` successes in ``total`` trials."""
    if total <= 0:
        return 0.0
    p = right / total
    centre = p + z * z / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, (centre - spread) / (1 + z * z / total))


def is_right(regime: str, algorithm: str) -> bool | None:
    """Whether ``regime`` is a right label for a run of ``algorithm`` (sft / opd / rlvr);
    None when the regime makes no claim about the algorithm (indeterminate and the like)."""
    if regime.startswith("rl-like"):
        return algorithm in RL_FAMILY
    if regime in ("sft-like", "opd-like", "rlvr-like"):
        return regime == f"{algorithm}-like"
    return None


def fit(outcomes: Iterable[tuple[str, str, str]]) -> dict[str, tuple[int, int]]:
    """Counts per rule from ``(rule, regime, algorithm)`` triples; verdicts that make no claim
    (``indeterminate``, whose confidence is 0) are not counted."""
    counts: dict[str, tuple[int, int]] = {}
    for rule, regime, algorithm in outcomes:
        right_now = is_right(regime, algorithm)
        if right_now is None:
            continue
        right, total = counts.get(rule, (0, 0))
        counts[rule] = (right + int(right_now), total + 1)
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class ReliabilityRow:
    """Among runs labelled with confidence >= ``at_least``: how many, and how many right."""

    at_least: float
    labelled: int
    right: int

    @property
    def accuracy(self) -> float:
        return self.right / self.labelled if self.labelled else float("nan")

    @property
    def holds(self) -> bool:
        """Confidence means what it says at this level: accuracy >= the level (or no runs)."""
        return not self.labelled or self.accuracy >= self.at_least


def reliability(
    scored: Sequence[tuple[float, bool | None]], levels: Sequence[float] = (0.5, 0.75, 0.9)
) -> list[ReliabilityRow]:
    """The reliability table of ``(confidence, right)`` pairs at ``levels`` and at every
    confidence that occurs; abstentions (right is None) are not labels and are left out."""
    seen = {conf for conf, right in scored if right is not None and conf > 0}
    rows = []
    for level in sorted(set(levels) | seen):
        chosen = [right for conf, right in scored if right is not None and conf >= level]
        rows.append(ReliabilityRow(level, len(chosen), sum(chosen)))
    return rows
