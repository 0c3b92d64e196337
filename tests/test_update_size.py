"""update_ulp_ratio and the per-unit-of-update ratios: known answers."""

from __future__ import annotations

import math

import pytest
import torch

from opdgeo.config import Settings
from opdgeo.metrics.update_size import (
    _angle_per_rel_norm,
    _changed_ratios,
    _drift_ratio,
    _energy_ratio,
    half_spacing,
    update_ulp_ratio,
)
from opdgeo.pair import TensorPair


def _pair(w0: torch.Tensor, w1: torch.Tensor) -> TensorPair:
    return TensorPair(w0, w1, Settings())


def test_half_spacing_known_values() -> None:
    # bf16 has 8 significant bits: spacing at 1.0 is 2**-7, at 0.75 (in [0.5, 1)) 2**-8
    w = torch.tensor([1.0, 1.5, 0.75, 2.0**-10, -3.0, 0.0])
    want = torch.tensor([2.0**-8, 2.0**-8, 2.0**-9, 2.0**-18, 2.0**-7, 2.0**-134])
    assert torch.equal(half_spacing(w), want)


def test_one_bf16_step_reads_two_and_k_steps_read_2k() -> None:
    w0 = torch.full((4, 8), 1.0, dtype=torch.bfloat16)
    steps = torch.tensor([0, 1, 1, 1, 3, 3, 5, 0] * 4, dtype=torch.float32).reshape(4, 8)
    w1 = (w0.float() + steps * 2.0**-7).to(torch.bfloat16)  # k whole steps above 1.0
    # changed entries: 1,1,1,3,3,5 per row -> median (lower middle) of {2,2,2,6,6,10} x4 is 2... 6
    got = update_ulp_ratio(_pair(w0, w1))["update_ulp_ratio"]
    ratios = sorted([2.0] * 12 + [6.0] * 8 + [10.0] * 4)
    assert got == ratios[(len(ratios) + 1) // 2 - 1]


def test_fp32_update_at_the_boundary_reads_one() -> None:
    w0 = torch.linspace(0.5, 0.99, 64).reshape(8, 8)  # one binade: half spacing 2**-9
    w0 = w0.to(torch.bfloat16).float()
    w1 = w0 + 1.001 * 2.0**-9  # just past half a step: visible after bf16 rounding
    got = update_ulp_ratio(_pair(w0, w1))["update_ulp_ratio"]
    assert got == pytest.approx(1.001, rel=1e-4)  # w0 + δ rounds in float32


def test_unchanged_and_nonfinite() -> None:
    w0 = torch.randn(6, 6).to(torch.bfloat16)
    assert math.isnan(update_ulp_ratio(_pair(w0, w0.clone()))["update_ulp_ratio"])
    w1 = w0.clone()
    w1[0, 0] = float("nan")
    assert math.isnan(update_ulp_ratio(_pair(w0, w1))["update_ulp_ratio"])


def test_ratio_grows_with_update_size() -> None:
    g = torch.Generator().manual_seed(0)
    w0 = (0.02 * torch.randn(64, 64, generator=g)).to(torch.bfloat16)
    noise = torch.randn(64, 64, generator=g)
    small = update_ulp_ratio(_pair(w0, (w0.float() + 1e-5 * noise).to(torch.bfloat16)))
    large = update_ulp_ratio(_pair(w0, (w0.float() + 1e-3 * noise).to(torch.bfloat16)))
    assert 1.0 <= small["update_ulp_ratio"] <= 4.0
    assert large["update_ulp_ratio"] >= 5 * small["update_ulp_ratio"]


def test_derived_ratios() -> None:
    pooled = {"nss": 0.002, "rel_norm": 0.004, "principal_angle_deg": 0.5,
              "principal_energy": 0.3, "principal_energy_baseline": 0.01}  # fmt: skip
    assert _drift_ratio(pooled) == pytest.approx(0.5)
    assert _angle_per_rel_norm(pooled) == pytest.approx(125.0)
    assert _energy_ratio(pooled) == pytest.approx(30.0)
    assert math.isnan(_drift_ratio({"nss": 0.1, "rel_norm": 0.0}))
    assert math.isnan(_energy_ratio({"principal_energy": math.nan,
                                     "principal_energy_baseline": 0.01}))  # fmt: skip


def _reference(w0: torch.Tensor, w1: torch.Tensor) -> float:
    """The definition, written out: every changed finite entry's ratio, then kthvalue."""
    r = _changed_ratios(w0.reshape(-1), w1.reshape(-1), torch.float32)
    return float(torch.kthvalue(r, (r.numel() + 1) // 2).values) if r.numel() else math.nan


CASES = ["steps", "cross-binade", "far-jumps", "zeros-subnormal", "nonfinite", "chunks"]


@pytest.mark.parametrize("case", CASES)
def test_bf16_histogram_median_equals_the_definition(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bf16 route (a histogram of the ratios' bits, no sort) gives exactly the value of
    the general route (gather the changed entries, kthvalue), whatever the values."""
    g = torch.Generator().manual_seed(len(case))
    w0 = (0.02 * torch.randn(96, 80, generator=g)).to(torch.bfloat16)
    noise = torch.randn(96, 80, generator=g)
    w1 = (w0.float() + 3e-4 * noise).to(torch.bfloat16)
    if case == "cross-binade":  # sign flips and far jumps: ratios with many significant bits
        w1 = torch.where(noise > 1.0, -0.7 * w0.float() + 1e-3, w1.float()).to(torch.bfloat16)
    elif case == "far-jumps":  # most ratios need more than 8 bits: the median's bin is re-read
        w1 = (-0.3 * w0.float() + 1e-3 * noise).to(torch.bfloat16)
    elif case == "zeros-subnormal":
        w0 = w0.clone()
        w0[:10] = 0.0
        w0[10:20] = torch.tensor(3e-39).to(torch.bfloat16)  # bf16 subnormal
        w0[20:30] = torch.tensor(2.0**-120).to(torch.bfloat16)  # half spacing subnormal
        w1 = (w0.float() + 1e-38 * noise).to(torch.bfloat16)
        w1[:5] = 0.01  # zero to a real value: ratio beyond float32 -> inf
    elif case == "nonfinite":
        w1 = w1.clone()
        w1[3, 4] = float("inf")
        w0 = w0.clone()
        w0[50, 1] = float("nan")
    elif case == "chunks":  # several chunks, and one with a NaN among them
        monkeypatch.setattr("opdgeo.metrics.update_size.CHUNK", 1000)
        w1 = w1.clone()
        w1[40, 7] = float("nan")
    got = update_ulp_ratio(_pair(w0, w1))["update_ulp_ratio"]
    assert got == _reference(w0, w1) or (math.isinf(got) and math.isinf(_reference(w0, w1)))
    assert math.isfinite(got) or case == "zeros-subnormal"


def test_fast_tier_reads_a_strided_sample_of_large_tensors() -> None:
    from opdgeo.metrics.update_size import SAMPLE, _sample_stride

    assert _sample_stride(896 * 4864, 896) % 2 == 1  # 896 = 2^7 * 7: odd, not a multiple of 7
    assert _sample_stride(896 * 4864, 896) % 7 != 0
    g = torch.Generator().manual_seed(3)
    w0 = (0.02 * torch.randn(1024, 640, generator=g)).to(torch.bfloat16)
    steps = torch.randint(1, 4, (1024, 640), generator=g).float()
    w1 = (w0.float() * (1 + steps * 2.0**-7)).to(torch.bfloat16)
    exact = update_ulp_ratio(TensorPair(w0, w1, Settings(tier="standard")))["update_ulp_ratio"]
    fast_pair = TensorPair(w0, w1, Settings(tier="fast"))
    fast_pair.active = "update_ulp_ratio"
    fast = update_ulp_ratio(fast_pair)["update_ulp_ratio"]
    assert w0.numel() > 2 * SAMPLE
    assert fast_pair.metric_methods["update_ulp_ratio"] == {"ulp-sample-1/3"}  # 2 divides 640
    assert fast == pytest.approx(exact, rel=0.1)
