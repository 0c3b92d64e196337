"""The regime classifier: a pure function of a summary row that explains itself.

Two verdicts per run. ``regime_papers`` is the geometric regime as the papers define it
(papers.md §7.3): four features each vote ``sft-like``, ``opd-like`` or ``rlvr-like`` against
cut points placed between OPDG's (2606.07082) published Qwen3-8B values, and the plurality wins:

=====================  ==========================  ===============================
feature                published SFT / OPD / RLVR  default cut points
=====================  ==========================  ===============================
sparsity_bf16          8.1 % / 51.6 % / 77.2 %     0.30, 0.65
lowmag_enrichment      1.06x / 1.79x / 2.45x       1.3, 2.1  (lowmag_overlap / alpha)
principal_angle_deg    >10° / ~1° / <0.5°          4°, 0.7°
nss                    1e-3 / 1e-4 / 1e-5          3e-4, 3e-5
=====================  ==========================  ===============================

``regime`` is the verdict to act on. The same votes, except that a feature whose value is
explained by update size alone abstains (zoo/ANALYSIS.md: on a real training grid all four
follow learning rate x steps, not the algorithm):

* sparsity_bf16 and lowmag_enrichment when ``update_ulp_ratio`` >= ``bf16_uninformative_above``
  (the typical changed weight moved several bf16 steps, so nearly every touched weight shows);
* nss when ``nss / rel_norm`` (``spectral_drift_ratio``) and the principal angle when
  ``principal_angle_deg / rel_norm`` lie in the band where SFT, OPD and RLVR all fell on the
  zoo grid (cut points in configs/default.toml, with the runs they came from).

Then: SFT against the RL family is decided only when one side has more than twice the other's
votes (else ``indeterminate``); inside the RL family a specific ``opd-like`` / ``rlvr-like``
needs two or more votes that all agree, otherwise ``rl-like (opd or rlvr)`` (a lone sparsity
value cannot separate them: published RLVR runs span 36-92 %, PNT Table 1). ``confidence`` is
the measured accuracy of the rule that fired (:mod:`opdgeo.calibration`), 0 for
``indeterminate``. Before voting: ``unchanged`` when every compared entry is bit-identical;
``unrelated`` when ``rel_norm`` is of order one and almost no bf16 entry is shared; nothing to
classify (``indeterminate``) without a 2-D matrix. Relative mode (:func:`relative_order`) ranks
runs that share a base on each feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from opdgeo.calibration import Calibration
from opdgeo.config import Thresholds


class Regime(StrEnum):
    """The label of a comparison (output contract: the ``regime`` column)."""

    SFT = "sft-like"
    OPD = "opd-like"
    RLVR = "rlvr-like"
    RL = "rl-like (opd or rlvr)"
    INDETERMINATE = "indeterminate"
    UNCHANGED = "unchanged"
    UNRELATED = "unrelated"
    QUANTIZED = "quantized"
    """A quantized release of the base (see :func:`opdgeo.quantized.quantization_verdict`)."""


class Locking(StrEnum):
    """The trajectory verdict (output contract: the ``locking`` column)."""

    LOCKED = "locked"
    EXPANDING = "expanding"
    CONTRACTING = "contracting"
    DRIFTING = "drifting"


SFT, OPD, RLVR, RL = Regime.SFT, Regime.OPD, Regime.RLVR, Regime.RL
UNCHANGED, UNRELATED, INDETERMINATE = Regime.UNCHANGED, Regime.UNRELATED, Regime.INDETERMINATE
REGIMES = tuple(Regime)
NEAR_CUT = 0.05
"""A value within 5 % of a cut point is flagged in its reason."""
_POSITION = {SFT: 0, OPD: 1, RLVR: 2}

# (feature, direction): +1 when larger values are more RLVR-like, -1 when smaller are.
FEATURES: tuple[tuple[str, int], ...] = (
    ("sparsity_bf16", +1),
    ("lowmag_enrichment", +1),
    ("principal_angle_deg", -1),
    ("nss", -1),
)


@dataclass(frozen=True)
class Verdict:
    """A label with its confidence, the reasons behind it and caveats that apply."""

    regime: Regime
    confidence: float
    reasons: tuple[str, ...]
    caveats: tuple[str, ...] = ()
    votes: Mapping[str, Regime] = field(default_factory=dict)
    regime_papers: Regime | None = None
    """The papers' four-feature plurality vote (no abstention for update size)."""
    rule: str = ""
    """The calibration rule that gave the confidence (``"<label> <agreeing>/<voting>"``)."""


def _num(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}"


def _near(value: float, cut: float) -> bool:
    return abs(value - cut) <= NEAR_CUT * abs(cut)


def _vote(name: str, value: float, t: Thresholds) -> tuple[Regime, str]:
    cuts = {
        "sparsity_bf16": (t.sparsity_sft_below, t.sparsity_rlvr_above, +1),
        "lowmag_enrichment": (t.lowmag_sft_below, t.lowmag_rlvr_above, +1),
        "principal_angle_deg": (t.angle_rlvr_below, t.angle_sft_above, -1),
        "nss": (t.nss_rlvr_below, t.nss_sft_above, -1),
    }
    low, high, direction = cuts[name]
    if value < low:
        label = SFT if direction > 0 else RLVR
        reason = f"{name} {_fmt(value)} < {_fmt(low)} -> {label}"
    elif value > high:
        label = RLVR if direction > 0 else SFT
        reason = f"{name} {_fmt(value)} > {_fmt(high)} -> {label}"
    else:
        label = OPD
        reason = f"{name} {_fmt(value)} in [{_fmt(low)}, {_fmt(high)}] -> {OPD}"
    near = [cut for cut in (low, high) if _near(value, cut)]
    if near:
        reason += f" (within 5 % of the cut point {_fmt(near[0])}: could go either way)"
    return label, reason


def _stored_fp32(row: Mapping[str, Any]) -> bool:
    """True when the tuned checkpoint is mostly stored in float32/float64 (not bf16)."""
    return str(row.get("dtype_tuned", "")).split("+")[0] in ("F32", "F64")


def _size_explained(name: str, row: Mapping[str, Any], t: Thresholds) -> str:
    """Why feature ``name`` abstains because update size explains it ("" if it does not)."""
    if name in ("sparsity_bf16", "lowmag_enrichment"):
        ratio = _num(row, "update_ulp_ratio")
        if ratio >= t.bf16_uninformative_above:
            what = "bf16 sparsity" if name == "sparsity_bf16" else "low-magnitude enrichment"
            return (
                f"{what} uninformative: updates are {ratio:.3g}x the rounding boundary "
                f"(update_ulp_ratio >= {t.bf16_uninformative_above:.3g})"
            )
        return ""
    rel = _num(row, "rel_norm")
    if not rel > 0:
        return ""
    ratio = _num(row, name) / rel
    low, high, label = (
        (t.drift_ratio_band_low, t.drift_ratio_band_high, "nss / rel_norm")
        if name == "nss"
        else (t.angle_ratio_band_low, t.angle_ratio_band_high, "angle / rel_norm")
    )
    if low <= ratio <= high:
        return (
            f"{name} explained by update size: {label} {_fmt(ratio)} is in "
            f"[{_fmt(low)}, {_fmt(high)}], where SFT, OPD and RLVR all fall on the zoo grid"
        )
    return ""


def _special(row: Mapping[str, Any], t: Thresholds) -> Verdict | None:
    """``unchanged``, ``unrelated`` or nothing to classify, decided before any vote."""
    n_tensors = int(_num(row, "n_tensors") or 0)
    max_abs = _num(row, "max_abs_delta")
    if max_abs == 0 and not _num(row, "n_nonfinite"):
        same = (f"all {n_tensors} compared tensors are bit-identical",)
        return Verdict(UNCHANGED, 1.0, same, regime_papers=UNCHANGED, rule="unchanged")
    rel = max(
        (v for v in (_num(row, "rel_norm"), _num(row, "rel_norm_median")) if not math.isnan(v)),
        default=math.nan,
    )
    sparsity = _num(row, "sparsity_bf16")
    angle = _num(row, "principal_angle_deg")
    if rel >= t.unrelated_rel_norm and sparsity < t.unrelated_sparsity_below:
        why = [
            f"rel_norm {_fmt(rel)} >= {_fmt(t.unrelated_rel_norm)} (whole model or median "
            "matrix): the update is as large as the weights",
            f"sparsity_bf16 {_fmt(sparsity)} < {_fmt(t.unrelated_sparsity_below)}: "
            "almost no entry is shared",
        ]
        if angle > t.unrelated_angle_above:
            why.append(
                f"principal_angle_deg {_fmt(angle)} > {_fmt(t.unrelated_angle_above)}: "
                "subspaces rotated"
            )
        caveat = ("these checkpoints do not look like a fine-tune of one another",)
        confidence = 1.0 if len(why) == 3 else 0.75
        return Verdict(UNRELATED, confidence, tuple(why), caveat, {}, UNRELATED, "unrelated")
    if (
        "n_matrices" in row
        and not _num(row, "n_matrices")
        and math.isnan(
            _num(row, "rel_norm_median")  # pooled over 2-D tensors: NaN when there is none
        )
    ):  # 1-D tensors only: their bf16 sparsity alone must not cast a vote
        none = ("no 2-D weight matrix was compared (only 1-D or scalar tensors): nothing to "
                "classify",)  # fmt: skip
        return Verdict(INDETERMINATE, 0.0, none, regime_papers=INDETERMINATE, rule="no matrices")
    return None


def _plurality(votes: Mapping[str, Regime]) -> Regime:
    counts = {label: list(votes.values()).count(label) for label in (SFT, OPD, RLVR)}
    best = max(counts.values())
    tied = [label for label, c in counts.items() if c == best]
    if len(tied) == 1:
        return tied[0]
    mean_pos = sum(_POSITION[v] for v in votes.values()) / len(votes)
    return min(_POSITION, key=lambda lab: (abs(_POSITION[lab] - mean_pos), lab != OPD))


def _decide(votes: Mapping[str, Regime]) -> tuple[Regime, int, str]:
    """The label from the informative votes, the number that agree with it, and why."""
    if not votes:
        return INDETERMINATE, 0, "every feature abstained: no evidence either way"
    rl = [v for v in votes.values() if v in (OPD, RLVR)]
    n_sft = len(votes) - len(rl)
    if n_sft > 2 * len(rl):
        return SFT, n_sft, ""
    if len(rl) <= 2 * n_sft:
        return (
            INDETERMINATE,
            0,
            f"{n_sft} feature(s) point to SFT and {len(rl)} to the RL family: they do not "
            "separate the candidates",
        )
    if len(rl) >= 2 and len(set(rl)) == 1:
        return rl[0], len(rl), ""
    why = (
        "one feature cannot tell OPD from RLVR"
        if len(rl) == 1
        else "the RL-family features split between OPD and RLVR"
    )
    return RL, len(rl), why


def classify(
    row: Mapping[str, Any], t: Thresholds | None = None, calibration: Calibration | None = None
) -> Verdict:
    """Label one summary row (see module docstring for the rules and their sources)."""
    t = t or Thresholds()
    calibration = calibration or Calibration()
    special = _special(row, t)
    if special is not None:
        return special
    fp32 = _stored_fp32(row)
    caveats: list[str] = []
    papers: dict[str, Regime] = {}
    votes: dict[str, Regime] = {}
    reasons: list[str] = []
    for name, _ in FEATURES:
        value = _num(row, name)
        if math.isnan(value):
            reasons.append(f"{name} not measured (abstains)")
            continue
        if name == "sparsity_bf16" and fp32:
            reasons.append(f"{name} {_fmt(value)} abstains: checkpoint stored in float32")
            continue
        label, reason = _vote(name, value, t)
        papers[name] = label
        why = _size_explained(name, row, t)
        if why:
            reasons.append(f"{reason}, but abstains: {why}")
            continue
        votes[name] = label
        reasons.append(reason)
    if fp32:
        caveats.append(
            "float32-stored checkpoints show little bf16 sparsity whatever the algorithm "
            "(RAZOR 2509.04259 §6); sparsity_bf16 did not vote"
        )
    if (
        "sparsity_bf16" in votes
        and "update_ulp_ratio" in row
        and math.isnan(_num(row, "update_ulp_ratio"))
    ):
        caveats.append(
            "update size not measured (update_ulp_ratio: not in the scan tier): bf16 sparsity "
            "voted without the check that it is not explained by update size alone"
        )
    regime_papers = _plurality(papers) if papers else INDETERMINATE
    label, agreeing, why = _decide(votes)
    if why:
        reasons.append(why)
    rule = f"{label} {agreeing}/{len(votes)}"
    if label == INDETERMINATE:
        confidence = 0.0
    else:
        confidence = calibration.confidence(rule)
        caveats.append(calibration.evidence(rule))
    sparsity = _num(row, "sparsity_bf16")
    if label == OPD and votes.get("sparsity_bf16") == OPD and 0.36 <= sparsity <= 0.92:
        caveats.append(
            "published RLVR runs span 36-92 % bf16 sparsity (PNT Table 1), overlapping the OPD band"
        )
    if label != regime_papers and regime_papers != INDETERMINATE:
        caveats.append(f"the papers' four-feature vote alone would say {regime_papers}")
    return Verdict(label, confidence, tuple(reasons), tuple(caveats), votes, regime_papers, rule)


def relative_order(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rank runs that share a base on each feature, 1 = most SFT-like (OPDG: SFT < OPD < RLVR).

    Returns one dict per row with ``order_<feature>`` ranks, ``order_mean`` and the
    concordance of the features' rankings (Kendall's W, 1 = every feature agrees).
    """
    n = len(rows)
    ranks: list[dict[str, Any]] = [{} for _ in rows]
    used: list[list[float]] = []
    for name, direction in FEATURES:
        values = [_num(r, name) for r in rows]
        present = [i for i, v in enumerate(values) if not math.isnan(v)]
        order = sorted(present, key=lambda i: direction * values[i])
        feature_ranks = [math.nan] * n
        for rank, i in enumerate(order, start=1):
            feature_ranks[i] = float(rank)
            ranks[i][f"order_{name}"] = rank
        for i in range(n):
            ranks[i].setdefault(f"order_{name}", None)
        if len(present) == n:
            used.append(feature_ranks)
    w = _kendall_w(used, n)
    for i in range(n):
        mine = [ranks[i][f"order_{name}"] for name, _ in FEATURES if ranks[i][f"order_{name}"]]
        ranks[i]["order_mean"] = sum(mine) / len(mine) if mine else None
        ranks[i]["order_concordance"] = w
    return ranks


def _kendall_w(rankings: list[list[float]], n: int) -> float | None:
    m = len(rankings)
    if m < 2 or n < 2:
        return None
    totals = [sum(r[i] for r in rankings) for i in range(n)]
    mean = sum(totals) / n
    s = sum((x - mean) ** 2 for x in totals)
    return 12 * s / (m * m * (n**3 - n))


def locking_verdict(
    rows: Sequence[Mapping[str, Any]], t: Thresholds | None = None
) -> tuple[Locking, list[str]]:
    """``locked``, ``expanding``, ``contracting`` or ``drifting``, with the deciding numbers
    (cut points from :class:`opdgeo.config.Thresholds`, as papers.md §7.3 proposes)."""
    t = t or Thresholds()
    srank = [float(r["stable_rank"]) for r in rows if not math.isnan(float(r["stable_rank"]))]
    if len(rows) < 2 or len(srank) < 2:
        return Locking.DRIFTING, ["fewer than two checkpoints with an update: no trend"]
    sim_first = float(rows[0]["sim_final"])
    mean = sum(srank) / len(srank)
    band = (max(srank) - min(srank)) / mean if mean > 0 else math.inf
    change = srank[-1] / srank[0] - 1 if srank[0] > 0 else math.inf
    facts = [
        f"sim_final at the first checkpoint {sim_first:.3f} (locked needs >= {t.locked_sim_first})",
        f"stable-rank band (max-min)/mean {band:.3f} (locked needs < {t.locked_band})",
        f"stable rank first -> last {srank[0]:.3g} -> {srank[-1]:.3g} ({100 * change:+.1f} %)",
    ]
    if sim_first >= t.locked_sim_first and band < t.locked_band:
        return Locking.LOCKED, facts
    if change > t.expanding_rise:
        return Locking.EXPANDING, facts
    if change < -t.contracting_fall:
        return Locking.CONTRACTING, facts
    return Locking.DRIFTING, facts
