"""The classifier on hand-built summary rows (no tensors)."""

from __future__ import annotations

import math

import pytest

from opdgeo.config import Thresholds
from opdgeo.regimes import OPD, RLVR, SFT, UNCHANGED, UNRELATED, classify, relative_order

# The published OPDG Qwen3-8B signatures (papers.md §7.2), as summary rows.
PUBLISHED = {
    SFT: {
        "sparsity_bf16": 0.081,
        "lowmag_enrichment": 0.3188 / 0.3,
        "principal_angle_deg": 12.0,
        "nss": 1e-3,
    },
    OPD: {
        "sparsity_bf16": 0.516,
        "lowmag_enrichment": 0.5359 / 0.3,
        "principal_angle_deg": 1.0,
        "nss": 1e-4,
    },
    RLVR: {
        "sparsity_bf16": 0.772,
        "lowmag_enrichment": 0.7348 / 0.3,
        "principal_angle_deg": 0.4,
        "nss": 1e-5,
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
def test_published_signatures_get_their_label_with_full_confidence(label: str) -> None:
    verdict = classify(row(**PUBLISHED[label]))
    assert verdict.regime == label
    assert verdict.confidence == 1.0
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


def test_missing_features_abstain_and_lower_confidence() -> None:
    verdict = classify(row(sparsity_bf16=0.8, lowmag_enrichment=math.nan))
    assert verdict.regime == RLVR
    assert verdict.confidence == 0.25
    assert any("not measured" in r for r in verdict.reasons)
    assert any("only one feature" in c for c in verdict.caveats)


def test_tie_goes_to_label_nearest_mean_position() -> None:
    # two SFT votes and two RLVR votes: mean position 1 -> opd-like, confidence 0
    verdict = classify(
        row(sparsity_bf16=0.9, lowmag_enrichment=3.0, principal_angle_deg=20.0, nss=1e-2)
    )
    assert verdict.regime == OPD
    assert verdict.confidence == 0.0


def test_fp32_checkpoint_sparsity_abstains_with_caveat() -> None:
    verdict = classify(row(dtype_tuned="F32", **PUBLISHED[SFT]) | {"sparsity_bf16": 0.9})
    assert verdict.regime == SFT
    assert verdict.confidence == 0.75
    assert any("float32" in c for c in verdict.caveats)


def test_rlvr_sparsity_range_caveat() -> None:
    verdict = classify(row(**PUBLISHED[OPD]))
    assert any("36-92 %" in c for c in verdict.caveats)


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
