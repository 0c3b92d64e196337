"""The classifier against data: the zoo grid (fit on seed 0, scored on seed 1) and the papers'
published numbers (papers.md §2 D1 tables, §7.2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from opdgeo.calibration import Calibration, fit, is_right, reliability
from opdgeo.config import Thresholds
from opdgeo.regimes import INDETERMINATE, OPD, RL, RLVR, SFT, classify
from zoo.grid_calibrate import fit_bands, fit_classifier, scored

FEATURES = Path(__file__).resolve().parents[1] / "zoo" / "grid" / "features.csv"


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    return pd.read_csv(FEATURES)


def test_shipped_cut_points_and_counts_are_the_seed0_fit(grid: pd.DataFrame) -> None:
    t, cal = fit_classifier(grid)
    assert dataclasses.asdict(Thresholds()) == dataclasses.asdict(t)
    assert dict(Calibration().rules) == dict(cal.rules)


def test_fit_uses_seed0_only(grid: pd.DataFrame) -> None:
    moved = grid.copy()
    moved.loc[moved["seed"] == 1, "nss"] *= 10  # seed 1 cannot move a fitted number
    assert fit_bands(moved) == fit_bands(grid)
    assert fit_classifier(moved)[1].rules == fit_classifier(grid)[1].rules


def test_held_out_seed_has_no_confident_wrong_label(grid: pd.DataFrame) -> None:
    runs = scored(grid, seed=1)
    assert len(runs) == 12
    assert not [r for r in runs if r["right"] is False and r["confidence"] >= 0.75]


def test_confidence_means_what_it_says_on_the_held_out_seed(grid: pd.DataFrame) -> None:
    runs = scored(grid, seed=1)
    table = reliability([(r["confidence"], r["right"]) for r in runs])
    assert table and all(row.holds for row in table), table


def test_fit_and_is_right() -> None:
    assert is_right("rl-like (opd or rlvr)", "opd") and not is_right("rl-like (opd or rlvr)", "sft")
    assert is_right("indeterminate", "sft") is None
    counts = fit([("a 1/1", "sft-like", "sft"), ("a 1/1", "sft-like", "opd"),
                  ("i 0/0", "indeterminate", "sft")])  # fmt: skip
    assert counts == {"a 1/1": (1, 2)}


# OPDG Table 1 / §3.2 and Fig. 3 (papers.md §7.2): the controlled Qwen3-8B signatures.
OPDG = {
    SFT: {"sparsity_bf16": 0.081, "lowmag_enrichment": 0.3188 / 0.3,
          "principal_angle_deg": 12.0, "nss": 1e-3},
    OPD: {"sparsity_bf16": 0.516, "lowmag_enrichment": 0.5359 / 0.3,
          "principal_angle_deg": 1.0, "nss": 1e-4},
    RLVR: {"sparsity_bf16": 0.772, "lowmag_enrichment": 0.7348 / 0.3,
           "principal_angle_deg": 0.4, "nss": 1e-5},
}  # fmt: skip

# Published pairs with their bf16 sparsity only (OPDG Table 1 and PNT Table 1, papers.md D1).
PUBLISHED_SPARSITY = [
    ("SFT", 0.081), ("OPD", 0.516), ("RL", 0.772), ("OPD", 0.503), ("OPD", 0.511),
    ("OPD", 0.517), ("OPD", 0.566), ("OPD", 0.571), ("OPD", 0.486), ("SFT", 0.006),
    ("SFT", 0.188), ("RL", 0.699), ("RL", 0.790), ("RL", 0.799),
    ("SFT", 0.028), ("RL", 0.538), ("RL", 0.455), ("RL", 0.525), ("RL", 0.384), ("RL", 0.363),
    ("SFT", 0.006), ("RL", 0.695), ("RL", 0.799), ("RL", 0.797), ("SFT", 0.188), ("RL", 0.683),
    ("RL", 0.793), ("RL", 0.617), ("RL", 0.917),
]  # fmt: skip


def _row(**values: float) -> dict[str, float | str]:
    return {"n_tensors": 10, "max_abs_delta": 0.01, "n_nonfinite": 0,  # no published rel_norm
            "dtype_base": "BF16", "dtype_tuned": "BF16", **values}  # fmt: skip


@pytest.mark.parametrize("label", [SFT, OPD, RLVR])
def test_opdg_table1_signatures_classify_as_the_paper_says(label: str) -> None:
    verdict = classify(_row(**OPDG[label]))
    assert verdict.regime == label
    assert verdict.regime_papers == label


@pytest.mark.parametrize(("algo", "sparsity"), PUBLISHED_SPARSITY)
def test_published_pairs_by_sparsity_alone(algo: str, sparsity: float) -> None:
    verdict = classify(_row(sparsity_bf16=sparsity))
    if algo == "SFT":
        assert verdict.regime == SFT
    else:  # one feature cannot tell OPD from RLVR: the family, never SFT, never a wrong one
        assert verdict.regime == RL, (algo, sparsity)
    assert verdict.regime != INDETERMINATE
