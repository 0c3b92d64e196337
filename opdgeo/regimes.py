"""The regime classifier: a pure function of a summary row that explains itself.

Absolute mode (papers.md §7.3). Four features each vote ``sft-like``, ``opd-like`` or
``rlvr-like`` by comparing the run's value with two cut points placed between the values
OPDG (2606.07082) published for SFT / OPD / RLVR on Qwen3-8B:

=====================  ==========================  ===============================
feature                published SFT / OPD / RLVR  default cut points
=====================  ==========================  ===============================
sparsity_bf16          8.1 % / 51.6 % / 77.2 %     0.30, 0.65
lowmag_enrichment      1.06x / 1.79x / 2.45x       1.3, 2.1  (lowmag_overlap / alpha)
principal_angle_deg    >10° / ~1° / <0.5°          4°, 0.7°
nss                    1e-3 / 1e-4 / 1e-5          3e-4, 3e-5
=====================  ==========================  ===============================

The label is the plurality vote. A tie goes to the label nearest the mean vote position
(sft = 0, opd = 1, rlvr = 2; ``opd-like`` when two are equally near), so a 2-2 split between
sft-like and rlvr-like reads as the in-between regime with a low confidence.
``confidence`` = agreeing features / 4, so a feature that could not be measured lowers it.
Before voting: ``unchanged`` when every compared entry is bit-identical; ``unrelated`` when
``rel_norm`` (whole model, or the median over 2-D matrices, whichever is larger) is of order
one and almost no bf16 entry is shared. Relative mode (:func:`relative_order`) ranks runs
that share a base on each feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from opdgeo.config import Thresholds


class Regime(StrEnum):
    """The label of a comparison (output contract: the ``regime`` column)."""

    SFT = "sft-like"
    OPD = "opd-like"
    RLVR = "rlvr-like"
    UNCHANGED = "unchanged"
    UNRELATED = "unrelated"


class Locking(StrEnum):
    """The trajectory verdict (output contract: the ``locking`` column)."""

    LOCKED = "locked"
    EXPANDING = "expanding"
    CONTRACTING = "contracting"
    DRIFTING = "drifting"


SFT, OPD, RLVR = Regime.SFT, Regime.OPD, Regime.RLVR
UNCHANGED, UNRELATED = Regime.UNCHANGED, Regime.UNRELATED
REGIMES = tuple(Regime)
_POSITION = {SFT: 0, OPD: 1, RLVR: 2}
N_FEATURES = 4

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


def _num(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}"


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
        return label, f"{name} {_fmt(value)} < {_fmt(low)} -> {label}"
    if value > high:
        label = RLVR if direction > 0 else SFT
        return label, f"{name} {_fmt(value)} > {_fmt(high)} -> {label}"
    return OPD, f"{name} {_fmt(value)} in [{_fmt(low)}, {_fmt(high)}] -> {OPD}"


def _stored_fp32(row: Mapping[str, Any]) -> bool:
    """True when the tuned checkpoint is mostly stored in float32/float64 (not bf16)."""
    return str(row.get("dtype_tuned", "")).split("+")[0] in ("F32", "F64")


def classify(row: Mapping[str, Any], t: Thresholds | None = None) -> Verdict:
    """Label one summary row (see module docstring for the rules and their sources)."""
    t = t or Thresholds()
    n_tensors = int(_num(row, "n_tensors") or 0)
    max_abs = _num(row, "max_abs_delta")
    if max_abs == 0 and not _num(row, "n_nonfinite"):
        return Verdict(UNCHANGED, 1.0, (f"all {n_tensors} compared tensors are bit-identical",))
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
        return Verdict(
            UNRELATED,
            1.0 if len(why) == 3 else 0.75,
            tuple(why),
            ("these checkpoints do not look like a fine-tune of one another",),
        )

    caveats: list[str] = []
    fp32 = _stored_fp32(row)
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
        votes[name], reason = _vote(name, value, t)
        reasons.append(reason)
    if fp32:
        caveats.append(
            "float32-stored checkpoints show little bf16 sparsity whatever the algorithm "
            "(RAZOR 2509.04259 §6); sparsity_bf16 did not vote"
        )
    if not votes:
        return Verdict(OPD, 0.0, tuple(reasons), (*caveats, "no feature could be measured"), votes)
    counts = {label: list(votes.values()).count(label) for label in (SFT, OPD, RLVR)}
    best = max(counts.values())
    tied = [label for label, c in counts.items() if c == best]
    if len(tied) > 1:
        mean_pos = sum(_POSITION[v] for v in votes.values()) / len(votes)
        label = min(_POSITION, key=lambda lab: (abs(_POSITION[lab] - mean_pos), lab != OPD))
    else:
        label = tied[0]
    confidence = counts[label] / N_FEATURES
    if len(votes) < 2:
        caveats.append("only one feature could be measured")
    if label in (OPD, RLVR) and not math.isnan(sparsity) and 0.30 <= sparsity <= 0.92:
        caveats.append(
            "published RLVR runs span 36-92 % bf16 sparsity (PNT Table 1), overlapping the OPD band"
        )
    return Verdict(label, confidence, tuple(reasons), tuple(caveats), votes)


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
