"""The classifier on hand-built summary rows (no tensors)."""

from __future__ import annotations

import math

import pytest

from opdgeo.calibration import Calibration, wilson_lower
from opdgeo.config import Thresholds
from opdgeo.regimes import (
    INDETERMINATE,
    OPD,
    RL,
    RLVR,
    SFT,
    UNCHANGED,
    UNRELATED,
    classify,
    relative_order,
)

# The published OPDG Qwen3-8B signatures (papers.md §7.2), as summary rows (OPDG gives no
# rel_norm, so the per-unit-of-update bands cannot apply).
PUBLISHED = {
    SFT: {
        "sparsity_bf16": 0.081,
        "lowmag_enrichment": 0.3188 / 0.3,
        "principal_angle_deg": 12.0,
        "nss": 1e-3,
        "rel_norm": math.nan,
    },
    OPD: {
        "sparsity_bf16": 0.516,
        "lowmag_enrichment": 0.5359 / 0.3,
        "principal_angle_deg": 1.0,
        "nss": 1e-4,
        "rel_norm": math.nan,
    },
    RLVR: {
        "sparsity_bf16": 0.772,
        "lowmag_enrichment": 0.7348 / 0.3,
        "principal_angle_deg": 0.4,
        "nss": 1e-5,
        "rel_norm": math.nan,
    },
}


def row(**values: float | str) -> dict[str, float | str]:
    base: dict[str, float | str] = {
        "n_tensors": 10,
        "max_abs_delta": 0.01,
        "rel_norm": 0.01,
        "n_nonfinite": 0,
        "dtype_base": "BF16",
        "dtype_tuned": "BF16",
    }
    base.update(values)
    return base


@pytest.mark.parametrize("label", [SFT, OPD, RLVR])
def test_published_signatures_get_their_label(label: str) -> None:
    verdict = classify(row(**PUBLISHED[label]))
    assert verdict.regime == label
    assert verdict.regime_papers == label
    assert verdict.rule == f"{label} 4/4"
    assert verdict.confidence == Calibration().confidence(verdict.rule)
    assert len(verdict.reasons) == 4
    assert all(label in reason for reason in verdict.reasons)


def test_reasons_quote_value_and_threshold() -> None:
    verdict = classify(row(**PUBLISHED[RLVR]))
    assert "sparsity_bf16 0.772 > 0.650 -> rlvr-like" in verdict.reasons
    assert "principal_angle_deg 0.400 < 0.700 -> rlvr-like" in verdict.reasons


def test_unchanged_when_nothing_moved() -> None:
    verdict = classify(row(max_abs_delta=0.0, sparsity_bf16=1.0, rel_norm=0.0))
    assert verdict.regime == UNCHANGED
    assert verdict.confidence == 1.0


def test_unrelated_when_update_is_as_large_as_weights() -> None:
    verdict = classify(row(rel_norm=1.4, sparsity_bf16=0.001, principal_angle_deg=60.0))
    assert verdict.regime == UNRELATED
    assert verdict.confidence == 1.0
    assert any("rel_norm 1.400 >= 0.500" in r for r in verdict.reasons)


def test_large_dense_fine_tune_is_not_unrelated() -> None:
    verdict = classify(
        row(
            rel_norm=0.12,
            sparsity_bf16=0.005,
            principal_angle_deg=15.0,
            nss=2e-3,
            lowmag_enrichment=1.0,
        )
    )
    assert verdict.regime == SFT


def test_missing_features_abstain() -> None:
    verdict = classify(row(sparsity_bf16=0.8, lowmag_enrichment=math.nan))
    # one RL-family vote: the family, not a specific label (PNT: RLVR spans 36-92 %)
    assert verdict.regime == RL
    assert verdict.regime_papers == RLVR
    assert verdict.rule == f"{RL} 1/1"
    assert any("not measured" in r for r in verdict.reasons)
    assert any("cannot tell OPD from RLVR" in r for r in verdict.reasons)


def test_split_between_sft_and_rl_is_indeterminate() -> None:
    # two SFT votes and two RLVR votes: the papers' tie rule says opd-like, the verdict abstains
    verdict = classify(
        row(sparsity_bf16=0.9, lowmag_enrichment=3.0, principal_angle_deg=20.0, nss=1e-2)
    )
    assert verdict.regime_papers == OPD
    assert verdict.regime == INDETERMINATE
    assert verdict.confidence == 0.0
    assert any("do not separate" in r for r in verdict.reasons)


def test_three_to_one_decides_the_family() -> None:
    verdict = classify(row(**PUBLISHED[OPD]) | {"nss": 1e-3})  # nss alone says SFT
    assert verdict.regime == OPD
    assert verdict.rule == f"{OPD} 3/4"


def test_fp32_checkpoint_sparsity_abstains_with_caveat() -> None:
    verdict = classify(row(dtype_tuned="F32", **PUBLISHED[SFT]) | {"sparsity_bf16": 0.9})
    assert verdict.regime == SFT
    assert verdict.rule == f"{SFT} 3/3"
    assert any("float32" in c for c in verdict.caveats)


def test_rlvr_sparsity_range_caveat_only_when_it_applies() -> None:
    assert any("36-92 %" in c for c in classify(row(**PUBLISHED[OPD])).caveats)
    for label in (SFT, RLVR):
        assert not any("36-92 %" in c for c in classify(row(**PUBLISHED[label])).caveats)
    low_opd = PUBLISHED[OPD] | {"sparsity_bf16": 0.32}  # OPD band, below every published RLVR
    assert not any("36-92 %" in c for c in classify(row(**low_opd)).caveats)


def test_values_near_a_cut_point_are_flagged() -> None:
    verdict = classify(row(**PUBLISHED[RLVR]) | {"sparsity_bf16": 0.66})
    flagged = [r for r in verdict.reasons if "within 5 %" in r]
    assert flagged and flagged[0].startswith("sparsity_bf16 0.660 > 0.650")
    assert not any("within 5 %" in r for r in classify(row(**PUBLISHED[RLVR])).reasons)


def test_bf16_features_abstain_when_updates_are_large() -> None:
    t = Thresholds()
    big = row(**PUBLISHED[RLVR]) | {"sparsity_bf16": 0.1, "lowmag_enrichment": 1.05,
                                    "update_ulp_ratio": 6.0}  # fmt: skip
    verdict = classify(big, t)
    assert "sparsity_bf16" not in verdict.votes and "lowmag_enrichment" not in verdict.votes
    assert any("bf16 sparsity uninformative: updates are 6x the rounding boundary" in r
               for r in verdict.reasons)  # fmt: skip
    assert verdict.regime_papers == OPD  # the papers: 2 SFT + 2 RLVR votes, a tie -> opd-like
    assert verdict.regime == RLVR  # the two geometric features, both rlvr-like
    small = big | {"update_ulp_ratio": 2.0}
    assert classify(small, t).votes["sparsity_bf16"] == SFT


def test_size_explained_geometry_abstains() -> None:
    t = Thresholds()
    # nss / rel_norm = 0.4 and angle / rel_norm = 115 sit in the zoo grid's common band
    inside = row(sparsity_bf16=0.5, lowmag_enrichment=1.5, rel_norm=0.004,
                 principal_angle_deg=0.46, nss=0.0016, update_ulp_ratio=2.0)  # fmt: skip
    verdict = classify(inside, t)
    assert set(verdict.votes) == {"sparsity_bf16", "lowmag_enrichment"}
    assert sum("explained by update size" in r for r in verdict.reasons) == 2
    assert verdict.regime == OPD  # both bf16 features, unanimous


def test_every_feature_abstaining_is_indeterminate() -> None:
    verdict = classify(row(sparsity_bf16=0.1, lowmag_enrichment=1.0, rel_norm=0.004,
                           principal_angle_deg=0.46, nss=0.0016, update_ulp_ratio=8.0))  # fmt: skip
    assert verdict.regime == INDETERMINATE and verdict.confidence == 0.0
    assert any("every feature abstained" in r for r in verdict.reasons)


def test_nothing_to_classify_without_matrices() -> None:
    verdict = classify(row(n_matrices=0, sparsity_bf16=0.9, rel_norm_median=math.nan))
    assert verdict.regime == INDETERMINATE and not verdict.votes  # 1-D sparsity does not vote
    assert "nothing to classify" in verdict.reasons[0]
    # the scan tier runs no matrix metric, but its 2-D tensors are there: sparsity votes
    scan = classify(row(n_matrices=0, sparsity_bf16=0.9, rel_norm_median=1e-3))
    assert scan.votes == {"sparsity_bf16": RLVR}


def test_confidence_is_the_rules_measured_accuracy() -> None:
    cal = Calibration({f"{RLVR} 4/4": (9, 9), f"{SFT} 2/2": (1, 4)}, source="test")
    assert classify(row(**PUBLISHED[RLVR]), calibration=cal).confidence == pytest.approx(0.9)
    sft = classify(row(**PUBLISHED[SFT]), calibration=cal)  # 4/4 borrows 2/2's counts
    assert sft.confidence == pytest.approx(wilson_lower(1, 4))
    assert any("borrowed from sft-like 2/2" in c for c in sft.caveats)
    opd = classify(row(**PUBLISHED[OPD]), calibration=cal)
    assert opd.confidence == 0.0
    assert any("never occurred" in c for c in opd.caveats)


@pytest.mark.parametrize(
    ("right", "total", "want"), [(1, 1, 0.5), (2, 2, 2 / 3), (9, 9, 0.9), (0, 0, 0.0), (0, 3, 0.0)]
)
def test_wilson_lower_known_values(right: int, total: int, want: float) -> None:
    assert wilson_lower(right, total) == pytest.approx(want, abs=1e-12)
    assert wilson_lower(2, 6) == pytest.approx(0.1774, abs=1e-4)


def test_thresholds_are_used() -> None:
    strict = Thresholds(sparsity_rlvr_above=0.9)
    verdict = classify(row(sparsity_bf16=0.8), strict)
    assert verdict.votes["sparsity_bf16"] == OPD


def test_relative_order_ranks_sft_opd_rlvr() -> None:
    rows = [row(**PUBLISHED[RLVR]), row(**PUBLISHED[SFT]), row(**PUBLISHED[OPD])]
    order = relative_order(rows)
    assert [o["order_mean"] for o in order] == [3.0, 1.0, 2.0]
    assert order[0]["order_concordance"] == pytest.approx(1.0)
    assert order[1]["order_sparsity_bf16"] == 1


def test_relative_order_concordance_drops_when_features_disagree() -> None:
    a = row(sparsity_bf16=0.1, lowmag_enrichment=2.5, principal_angle_deg=0.1, nss=1e-3)
    b = row(sparsity_bf16=0.8, lowmag_enrichment=1.0, principal_angle_deg=10.0, nss=1e-5)
    order = relative_order([a, b])
    assert order[0]["order_concordance"] < 0.5
