"""Known-answer tests for every registered metric (:data:`opdgeo.metrics.METRICS`)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from opdgeo.config import Settings
from opdgeo.metrics import METRICS
from opdgeo.metrics.masks import mask_rank
from opdgeo.pair import TensorPair

F64 = torch.float64
BF16 = torch.bfloat16
TIER = {"gram": "standard", "svd": "exact"}
"""Tier that selects each spectral method."""
SIGMA1_GRAM = "krylov-f32"
"""``methods`` label of sigma_1(ΔW) for stable rank in the standard tier."""


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(m: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(m, m, generator=_gen(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def _run(name: str, base: torch.Tensor, tuned: torch.Tensor, **settings: Any) -> dict[str, float]:
    return METRICS[name].fn(TensorPair(base, tuned, Settings(**settings)))


def _run_all(pair: TensorPair) -> dict[str, float]:
    """Every metric the pair's tier computes (the engine skips the others, e.g. intruder_dims)."""
    out: dict[str, float] = {}
    for spec in METRICS.values():
        if pair.settings.tier in spec.tiers:
            out.update(spec.fn(pair))
    return out


def _svd_matrix(m: int, n: int, s: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    """W = U diag(s) Vᵀ with random orthogonal U (m x m), V (n x n); returns (W, U, V)."""
    u = _orthogonal(m, seed)
    v = _orthogonal(n, seed + 1)
    r = s.numel()
    return (u[:, :r] * s) @ v[:, :r].T, u, v


# -- registry -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("dtype", [BF16, torch.float32, F64])
def test_metric_returns_declared_columns(name: str, dtype: torch.dtype) -> None:
    spec = METRICS[name]
    base = torch.randn(24, 40, generator=_gen(0)).to(dtype)
    tuned = (base.to(F64) + 0.05 * torch.randn(24, 40, generator=_gen(1), dtype=F64)).to(dtype)
    values = spec.fn(TensorPair(base, tuned, Settings()))
    assert sorted(values) == sorted(spec.columns)
    assert len(values) == len(spec.columns) == len(set(spec.columns))
    for col, val in values.items():
        assert isinstance(val, float | int), col
        assert math.isfinite(val), col


@pytest.mark.parametrize("name", list(METRICS))
def test_metric_is_documented(name: str) -> None:
    spec = METRICS[name]
    assert spec.name == name
    assert spec.doc.strip()
    assert spec.columns


def test_columns_unique_across_registry() -> None:
    cols = [c for spec in METRICS.values() for c in spec.columns]
    assert len(cols) == len(set(cols))


# -- identical checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [BF16, torch.float32, F64])
def test_identical_checkpoints(dtype: torch.dtype) -> None:
    w = torch.randn(32, 48, generator=_gen(2)).to(dtype)
    pair = TensorPair(w, w.clone(), Settings())
    r = _run_all(pair)
    assert r["sparsity_bf16"] == r["sparsity_atol"] == r["sparsity_exact"] == 1.0
    assert r["sparsity_atol_strict"] == 1.0
    assert r["unchanged_bf16"] == r["unchanged_atol"] == w.numel()
    assert r["rel_norm"] == 0.0 and r["delta_fro"] == 0.0 and r["max_abs_delta"] == 0.0
    assert r["base_fro"] == pytest.approx(float(torch.linalg.vector_norm(w.to(F64))), rel=1e-12)
    for side in ("left", "right"):
        assert r[f"angle_{side}_mean_deg"] == 0.0 and r[f"angle_{side}_max_deg"] == 0.0
    assert r["nss"] == 0.0
    assert math.isnan(r["spectral_drift_ratio"])
    assert math.isnan(r["stable_rank"]) and r["delta_sigma1"] == 0.0
    for col in ("principal_energy", "principal_energy_left", "principal_energy_right"):
        assert math.isnan(r[col])
    for col in ("principal_overlap", "lowmag_overlap", "principal_notlow_overlap"):
        assert math.isnan(r[col])
    assert r["overlap_baseline"] == 0.3


def test_identical_but_not_shortcut_agrees() -> None:
    """The same values in different dtypes skip the bit-identity shortcut; results agree."""
    w = torch.randn(32, 48, generator=_gen(3)).to(BF16)
    r = _run_all(TensorPair(w, w.to(torch.float32), Settings()))
    assert r["sparsity_bf16"] == r["sparsity_atol"] == r["sparsity_exact"] == 1.0
    assert r["rel_norm"] == 0.0 and r["nss"] == 0.0
    assert math.isnan(r["stable_rank"])
    assert math.isnan(r["lowmag_overlap"])


# -- sparsity -------------------------------------------------------------------------------


def _bump_bits(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A bf16 copy of x with the entries at flat ``idx`` moved one bf16 step away from zero."""
    bits = x.clone().view(torch.int16).reshape(-1)
    bits[idx] += 1
    return bits.view(BF16).reshape(x.shape)


def test_planted_sparsity_bf16() -> None:
    x = torch.randn(50, 40, generator=_gen(4))
    base = (x.sign() * (0.05 + x.abs())).to(BF16)  # |x| >= 0.05: one bf16 ULP >= 2^-12
    n, k = base.numel(), 137
    idx = torch.randperm(n, generator=_gen(5))[:k]
    tuned = _bump_bits(base, idx)
    r = _run("sparsity_bf16", base, tuned)
    assert r["sparsity_bf16"] == 1 - k / n
    assert r["unchanged_bf16"] == n - k
    assert _run("sparsity_exact", base, tuned)["sparsity_exact"] == 1 - k / n
    # One ULP at |x| ~ 1 is far above the default atol of 1e-5.
    ra = _run("sparsity_atol", base, tuned)
    assert ra["unchanged_atol"] == n - k and ra["sparsity_atol"] == 1 - k / n


def test_signed_zero_is_unchanged() -> None:
    base = torch.zeros(8, 8, dtype=BF16)
    tuned = -base  # -0.0 everywhere: every bit pattern differs
    assert bool((tuned.view(torch.int16) != base.view(torch.int16)).all())
    n = base.numel()
    assert _run("sparsity_bf16", base, tuned) == {"sparsity_bf16": 1.0, "unchanged_bf16": n}
    assert _run("sparsity_exact", base, tuned)["sparsity_exact"] == 1.0
    assert _run("sparsity_atol", base, tuned)["sparsity_atol_strict"] == 1.0


@pytest.mark.parametrize("same_tensor", [True, False], ids=["identical", "not-identical"])
def test_nan_at_same_position_counts_as_changed(same_tensor: bool) -> None:
    base = torch.randn(10, 10, generator=_gen(6)).to(BF16)
    base.view(-1)[[3, 17, 42]] = float("nan")
    tuned = base.clone()
    k = 3
    if not same_tensor:
        tuned.view(-1)[[5, 6]] = tuned.view(-1)[[5, 6]] * 2
        k = 5
    n = base.numel()
    r = _run("sparsity_bf16", base, tuned)
    assert r["unchanged_bf16"] == n - k
    assert _run("sparsity_exact", base, tuned)["sparsity_exact"] == (n - k) / n
    ra = _run("sparsity_atol", base, tuned)
    assert ra["unchanged_atol"] == n - k
    assert ra["sparsity_atol_strict"] == (n - k) / n


@pytest.mark.parametrize("same_tensor", [True, False], ids=["identical", "not-identical"])
def test_inf_at_same_position_is_exactly_equal(same_tensor: bool) -> None:
    """inf == inf: sparsity_exact and sparsity_bf16 count it as unchanged on either path."""
    base = torch.randn(10, 10, generator=_gen(7))
    base.view(-1)[[3, 17]] = float("inf")
    base.view(-1)[42] = float("-inf")
    tuned = base.clone()
    k = 0
    if not same_tensor:
        tuned.view(-1)[[5, 6]] = tuned.view(-1)[[5, 6]] * 2
        k = 2
    base.view(-1)[50] = 3.4e38  # finite in fp32, beyond the bf16 range (rounds to inf)
    tuned.view(-1)[50] = 3.4e38
    n = base.numel()
    assert _run("sparsity_bf16", base, tuned)["unchanged_bf16"] == n - k
    assert _run("sparsity_exact", base, tuned)["sparsity_exact"] == (n - k) / n


def test_sub_half_ulp_fp32_change_bf16_vs_exact() -> None:
    base = torch.randn(30, 30, generator=_gen(8)).to(BF16).float()  # bf16-representable fp32
    n = base.numel()
    changed = torch.zeros(n, dtype=torch.bool)
    changed[torch.randperm(n, generator=_gen(9))[:200]] = True
    changed = changed.reshape(base.shape)
    # bf16 ULP of x is 2^(floor(log2|x|) - 7); a quarter of it never crosses the rounding point.
    ulp = torch.exp2(torch.floor(torch.log2(base.abs())) - 7)
    tuned = torch.where(changed, base + 0.25 * ulp, base)
    assert bool((tuned != base)[changed].all())
    assert torch.equal(tuned.to(BF16), base.to(BF16))
    assert _run("sparsity_bf16", base, tuned)["sparsity_bf16"] == 1.0
    assert _run("sparsity_atol", base, tuned)["sparsity_atol"] == 1.0
    assert _run("sparsity_exact", base, tuned)["sparsity_exact"] == (n - 200) / n


def test_bit_compare_equals_relative_rule() -> None:
    """bits(bf16 a) == bits(bf16 b)  <=>  |a - b| <= 1e-3 max(|a|, |b|)  (PNT App. E.2)."""
    shape = (128, 96)
    base = torch.randn(shape, generator=_gen(10)).to(BF16)
    # Relative perturbations spread over 1e-5 .. 1e-1, straddling half a bf16 ULP (~2^-9).
    rel = torch.exp(torch.empty(shape).uniform_(math.log(1e-5), math.log(1e-1), generator=_gen(11)))
    sign = torch.where(torch.rand(shape, generator=_gen(12)) < 0.5, -1.0, 1.0)
    tuned = (base.float() * (1 + sign * rel)).to(BF16)
    a, b = base.to(F64), tuned.to(F64)
    assert bool((a != 0).all()) and bool(torch.isfinite(a).all() & torch.isfinite(b).all())
    rule = (a - b).abs() <= 1e-3 * torch.maximum(a.abs(), b.abs())
    n_rule = int(rule.sum())
    assert 0.2 * a.numel() < n_rule < 0.8 * a.numel()  # both outcomes well represented
    r = _run("sparsity_bf16", base, tuned)
    assert r["unchanged_bf16"] == n_rule
    # And entry by entry: the visible-update mask is the complement of the rule.
    pair = TensorPair(base, tuned, Settings())
    assert torch.equal(pair.visible, ~rule)


def test_sparsity_atol_tie_le_vs_lt() -> None:
    atol = 2.0**-10  # the bf16 ULP on [1/8, 1/4)
    base = torch.full((4, 5), 0.125, dtype=BF16)
    tuned = base.clone().view(-1)
    tuned[:6] = 0.125 + 2.0**-10  # difference exactly atol (a tie)
    tuned[6:9] = 0.125 + 2.0**-9  # difference 2 atol
    tuned[9:11] = 0.125 - 2.0**-11  # below 1/8 the ULP halves: difference atol / 2
    tuned = tuned.reshape(base.shape).to(BF16)
    assert float(tuned.view(-1)[0].float() - 0.125) == atol
    n = base.numel()
    r = _run("sparsity_atol", base, tuned, atol=atol)
    assert r["unchanged_atol"] == n - 3
    assert r["sparsity_atol"] == (n - 3) / n
    assert r["sparsity_atol_strict"] == (n - 3 - 6) / n
    # All 11 moved entries are visible bf16 changes.
    assert _run("sparsity_bf16", base, tuned)["unchanged_bf16"] == n - 11
    # atol = 0: only bit-identical (or +-0) entries count, equal to sparsity_bf16.
    r0 = _run("sparsity_atol", base, tuned, atol=0.0)
    assert r0["unchanged_atol"] == n - 11 and r0["sparsity_atol_strict"] == 0.0


# -- norms ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [BF16, torch.float32, F64])
def test_norms_doubling(dtype: torch.dtype) -> None:
    w0 = torch.randn(40, 30, generator=_gen(13)).to(dtype)
    w1 = (w0.to(F64) * 2).to(dtype)  # exact in every dtype
    r = _run("update_norms", w0, w1)
    # bf16 pairs sum squares in float32 rows of 256, then float64 (pair.sumsq: < 1e-6)
    rel = 1e-6 if dtype == BF16 else 1e-12
    assert r["rel_norm"] == pytest.approx(1.0, abs=1e-6)
    assert r["delta_fro"] == pytest.approx(r["base_fro"], rel=rel)
    assert r["base_fro"] == pytest.approx(float(torch.linalg.vector_norm(w0.to(F64))), rel=rel)
    assert r["max_abs_delta"] == float(w0.abs().max())


def test_norms_known_values() -> None:
    w0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=F64)
    w1 = torch.tensor([[3.0, -1.0], [0.5, 4.0]], dtype=F64)
    r = _run("update_norms", w0, w1)
    assert r["base_fro"] == 5.0
    assert r["delta_fro"] == pytest.approx(math.sqrt(1.25), rel=1e-15)
    assert r["rel_norm"] == pytest.approx(math.sqrt(1.25) / 5, rel=1e-15)
    assert r["max_abs_delta"] == 1.0
    z = torch.zeros(2, 2, dtype=F64)
    assert _run("update_norms", z, z)["rel_norm"] == 0.0
    assert math.isnan(_run("update_norms", z, w1)["rel_norm"])


# -- stable rank ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_stable_rank_rank_one(method: str) -> None:
    w0 = torch.randn(40, 60, generator=_gen(14), dtype=F64)
    x = torch.randn(40, generator=_gen(15), dtype=F64)
    y = torch.randn(60, generator=_gen(16), dtype=F64)
    r = _run("stable_rank", w0, w0 + 0.01 * torch.outer(x, y), tier=TIER[method])
    assert r["stable_rank"] == pytest.approx(1.0, abs=1e-9)
    sigma = 0.01 * float(torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))
    assert r["delta_sigma1"] == pytest.approx(sigma, rel=1e-9)


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("k", [1, 3, 8, 13, 40])
def test_stable_rank_flat_spectrum(method: str, k: int) -> None:
    m, n = 40, 60
    w0 = torch.randn(m, n, generator=_gen(17), dtype=F64)
    q1 = _orthogonal(m, 18)[:, :k]
    q2 = _orthogonal(n, 19)[:, :k]
    delta = 1e-2 * q1 @ q2.T  # k equal singular values 1e-2
    r = _run("stable_rank", w0, w0 + delta, tier=TIER[method])
    assert r["stable_rank"] == pytest.approx(k, rel=1e-6)
    assert r["delta_sigma1"] == pytest.approx(1e-2, rel=1e-6)


def test_stable_rank_known_spectrum() -> None:
    s = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=F64)
    delta, _, _ = _svd_matrix(30, 50, s, 20)
    w0 = torch.zeros(30, 50, dtype=F64)
    r = _run("stable_rank", w0, delta)
    assert r["stable_rank"] == pytest.approx(22.0 / 16.0, rel=1e-7)
    assert r["delta_sigma1"] == pytest.approx(4.0, rel=1e-7)


# -- principal energy -----------------------------------------------------------------------


@pytest.fixture
def spectral_base() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W0 (40 x 60) with well-separated singular values 20, 19.5, ..., and its U, V."""
    s = torch.linspace(20.0, 0.5, 40, dtype=F64)
    return _svd_matrix(40, 60, s, 21)


def test_principal_energy_inside_top_k(spectral_base: tuple[torch.Tensor, ...]) -> None:
    w0, u, v = spectral_base
    k = 4  # energy_rank_frac 0.1 of min(40, 60)
    c = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=F64)
    delta = (u[:, :k] * c) @ v[:, :k].T
    r = _run("principal_energy", w0, w0 + delta)
    assert r["energy_k"] == k
    assert r["principal_energy_baseline"] == pytest.approx(k * k / (40 * 60))
    for col in ("principal_energy", "principal_energy_left", "principal_energy_right"):
        assert r[col] == pytest.approx(1.0, abs=1e-10), col
    # A general update inside U_k (x) V_k, not diagonal, is still all principal energy.
    a = torch.randn(k, k, generator=_gen(22), dtype=F64)
    r = _run("principal_energy", w0, w0 + 0.1 * u[:, :k] @ a @ v[:, :k].T)
    assert r["principal_energy"] == pytest.approx(1.0, abs=1e-10)


def test_principal_energy_outside_top_k(spectral_base: tuple[torch.Tensor, ...]) -> None:
    w0, u, v = spectral_base
    k = 4
    a = torch.randn(36, 56, generator=_gen(23), dtype=F64)
    delta = 0.01 * u[:, k:] @ a @ v[:, k:].T
    r = _run("principal_energy", w0, w0 + delta)
    for col in ("principal_energy", "principal_energy_left", "principal_energy_right"):
        assert r[col] == pytest.approx(0.0, abs=1e-10), col


def test_principal_energy_one_sided(spectral_base: tuple[torch.Tensor, ...]) -> None:
    w0, u, v = spectral_base
    k = 4
    a = torch.randn(k, 60, generator=_gen(24), dtype=F64)
    r = _run("principal_energy", w0, w0 + 0.01 * u[:, :k] @ a)
    assert r["principal_energy_left"] == pytest.approx(1.0, abs=1e-10)
    # The right-side share of U_k A is ||A V_k||^2 / ||A||^2: check against the definition.
    expect = (
        float(torch.linalg.matrix_norm(a @ v[:, :k])) ** 2 / float(torch.linalg.matrix_norm(a)) ** 2
    )
    assert r["principal_energy_right"] == pytest.approx(expect, rel=1e-8)
    assert r["principal_energy"] == pytest.approx(expect, rel=1e-8)
    b = torch.randn(40, k, generator=_gen(25), dtype=F64)
    r = _run("principal_energy", w0, w0 + 0.01 * b @ v[:, :k].T)
    assert r["principal_energy_right"] == pytest.approx(1.0, abs=1e-10)


def test_principal_energy_random_update_near_baseline() -> None:
    m, n = 200, 240
    w0 = torch.randn(m, n, generator=_gen(26), dtype=F64)
    delta = 1e-3 * torch.randn(m, n, generator=_gen(27), dtype=F64)
    r = _run("principal_energy", w0, w0 + delta)
    k = r["energy_k"]
    assert k == 20
    assert r["principal_energy_left"] == pytest.approx(k / m, rel=0.15)
    assert r["principal_energy_right"] == pytest.approx(k / n, rel=0.15)
    assert r["principal_energy"] == pytest.approx(r["principal_energy_baseline"], rel=0.3)


# -- principal angles -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_angles_zero_for_update_orthogonal_to_top_k(
    spectral_base: tuple[torch.Tensor, ...], method: str
) -> None:
    w0, u, v = spectral_base
    k = 6
    # Tail update on both sides, ||update||_2 = 0.2, below the gap sigma_k - sigma_{k+1} = 0.5.
    a = torch.randn(40 - k, 60 - k, generator=_gen(28), dtype=F64)
    a *= 0.2 / float(torch.linalg.matrix_norm(a, ord=2))
    w1 = w0 + u[:, k:] @ a @ v[:, k:].T
    r = _run("principal_angles", w0, w1, angle_k=k, tier=TIER[method])
    assert r["angle_k"] == k
    for side in ("left", "right"):
        for stat in ("mean", "max"):
            col = f"angle_{side}_{stat}_deg"
            assert 0.0 <= r[col] < 1e-6, col


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_angles_90_when_singular_values_swap_across_k(method: str) -> None:
    s0 = torch.linspace(20.0, 0.5, 40, dtype=F64)
    k = 6
    s1 = s0.clone()
    s1[k - 1], s1[k] = s0[k], s0[k - 1]  # sigma_k and sigma_{k+1} trade places
    w0, _, _ = _svd_matrix(40, 60, s0, 21)
    w1, _, _ = _svd_matrix(40, 60, s1, 21)
    r = _run("principal_angles", w0, w1, angle_k=k, tier=TIER[method])
    for side in ("left", "right"):
        assert r[f"angle_{side}_max_deg"] == pytest.approx(90.0, abs=1e-8)
        assert r[f"angle_{side}_mean_deg"] == pytest.approx(90.0 / k, abs=1e-8)


@pytest.mark.parametrize("theta", [1e-8, 1e-4, 0.05])
def test_angles_planted_rotation_of_one_singular_vector(theta: float) -> None:
    """Rotate u_1 toward u_{k+1} by theta (left only): left max = theta, right = 0."""
    s = torch.linspace(20.0, 0.5, 40, dtype=F64)
    k = 6
    u = _orthogonal(40, 21)
    v = _orthogonal(60, 22)[:, :40]
    u1 = u.clone()
    u1[:, 0] = math.cos(theta) * u[:, 0] + math.sin(theta) * u[:, k]
    u1[:, k] = -math.sin(theta) * u[:, 0] + math.cos(theta) * u[:, k]
    w0 = (u * s) @ v.T
    w1 = (u1 * s) @ v.T
    r = _run("principal_angles", w0, w1, angle_k=k)
    assert r["angle_left_max_deg"] == pytest.approx(math.degrees(theta), rel=1e-5)
    assert r["angle_right_max_deg"] < 1e-6


# -- NSS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1e-6, 1e-3, 0.05])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_nss_uniform_scaling(c: float, method: str) -> None:
    w0 = torch.randn(48, 80, generator=_gen(29), dtype=F64)
    r = _run("nss", w0, (1 + c) * w0, tier=TIER[method])
    assert r["nss"] == pytest.approx(c, rel=1e-6, abs=1e-9)
    # Pure rescaling: all of ||ΔW||_F shows up in the spectrum.
    assert r["spectral_drift_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_nss_rotation_is_zero() -> None:
    w0 = torch.randn(48, 80, generator=_gen(30), dtype=F64)
    q = _orthogonal(48, 31)  # W1 = Q W0 has exactly the singular values of W0
    r = _run("nss", w0, q @ w0)
    assert r["nss"] < 1e-12
    assert r["spectral_drift_ratio"] < 1e-9


@pytest.mark.parametrize("dtype", [BF16, F64])
def test_nss_mirsky_and_drift_range(dtype: torch.dtype) -> None:
    w0 = torch.randn(64, 96, generator=_gen(32))
    w1 = w0 + 0.02 * torch.randn(64, 96, generator=_gen(33))
    pair = TensorPair(w0.to(dtype), w1.to(dtype), Settings())
    r = METRICS["nss"].fn(pair)
    rel = METRICS["update_norms"].fn(pair)["rel_norm"]
    assert 0.0 < r["nss"] <= rel
    assert 0.0 < r["spectral_drift_ratio"] <= 1.0


# -- mask overlap ---------------------------------------------------------------------------


def _distinct_bf16(m: int, n: int, seed: int) -> torch.Tensor:
    """An m x n float32 matrix of bf16 values with all-distinct magnitudes and random signs."""
    count = m * n
    start = torch.tensor(2.0**-8, dtype=BF16).view(torch.int16).item()
    bits = torch.arange(start, start + count, dtype=torch.int16)  # consecutive positive bf16
    mags = bits.view(BF16).float()[torch.randperm(count, generator=_gen(seed))]
    signs = torch.where(torch.rand(count, generator=_gen(seed + 1)) < 0.5, -1.0, 1.0)
    return (mags * signs).reshape(m, n)


def _scaled(w0: torch.Tensor, changed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w1 = torch.where(changed, w0 * 1.1, w0)
    base, tuned = w0.to(BF16), w1.to(BF16)
    assert torch.equal(base.view(torch.int16) != tuned.view(torch.int16), changed)
    return base, tuned


@pytest.mark.parametrize("alpha", [0.3, 0.5])
def test_mask_overlap_lowmag_exact(alpha: float) -> None:
    m, n = 32, 48
    w0 = _distinct_bf16(m, n, 34)
    count = round(alpha * m * n)
    order = torch.argsort(w0.abs().reshape(-1))
    low = torch.zeros(m * n, dtype=torch.bool)
    low[order[:count]] = True
    low = low.reshape(m, n)
    r = _run("mask_overlap", *_scaled(w0, low), alpha=alpha)
    assert r["lowmag_overlap"] == 1.0
    assert r["overlap_baseline"] == alpha
    # The complement: the top-(1 - alpha) largest entries never touch the low-magnitude mask.
    r = _run("mask_overlap", *_scaled(w0, ~low), alpha=alpha)
    assert r["lowmag_overlap"] == 0.0
    # Half inside, half outside.
    half = torch.zeros(m * n, dtype=torch.bool)
    half[order[:100]] = True
    half[order[-100:]] = True
    r = _run("mask_overlap", *_scaled(w0, half.reshape(m, n)), alpha=alpha)
    assert r["lowmag_overlap"] == 0.5


def test_mask_overlap_principal_known() -> None:
    m, n, alpha = 32, 48, 0.3
    w0 = _distinct_bf16(m, n, 35)
    pair = TensorPair(w0.to(BF16), w0.to(BF16), Settings(alpha=alpha))
    r = mask_rank(pair)
    assert r == 2  # ceil(32 / 16)
    u, s, vh = torch.linalg.svd(w0.to(F64))
    recon = ((u[:, :r] * s[:r]) @ vh[:r]).abs().reshape(-1)
    order = torch.argsort(recon, descending=True)
    count = round(alpha * m * n)
    # Entries well inside the top-alpha principal mask (away from its threshold).
    inside = torch.zeros(m * n, dtype=torch.bool)
    inside[order[: count - 20]] = True
    res = _run("mask_overlap", *_scaled(w0, inside.reshape(m, n)), alpha=alpha)
    assert res["principal_overlap"] == 1.0
    # Entries well outside it.
    outside = torch.zeros(m * n, dtype=torch.bool)
    outside[order[count + 20 :]] = True
    res = _run("mask_overlap", *_scaled(w0, outside.reshape(m, n)), alpha=alpha)
    assert res["principal_overlap"] == 0.0
    assert res["principal_notlow_overlap"] == 0.0


def test_mask_overlap_random_mask_scores_alpha() -> None:
    m, n, alpha = 256, 256, 0.3
    w0 = torch.randn(m, n, generator=_gen(36))
    changed = torch.rand(m, n, generator=_gen(37)) < 0.2
    base = w0.to(BF16)
    tuned = torch.where(changed, base.float() * 1.1, base.float()).to(BF16)
    assert torch.equal(base != tuned, changed)
    r = _run("mask_overlap", base, tuned, alpha=alpha)
    assert r["overlap_baseline"] == alpha
    # n_vis ~ 13000: one standard deviation of a blind overlap is ~0.004.
    assert r["lowmag_overlap"] == pytest.approx(alpha, abs=0.02)
    assert r["principal_overlap"] == pytest.approx(alpha, abs=0.02)
    assert r["principal_notlow_overlap"] == pytest.approx(r["principal_notlow_baseline"], abs=0.02)
    assert r["mask_rank"] == 16


def test_mask_overlap_nan_without_visible_change() -> None:
    w0 = torch.randn(32, 48, generator=_gen(38))
    # An fp32 change below half a bf16 ULP is invisible to the bf16 update mask.
    w1 = w0.to(BF16).float()
    w1 = w1 + torch.exp2(torch.floor(torch.log2(w1.abs())) - 10)
    r = _run("mask_overlap", w0.to(BF16).float(), w1)
    assert math.isnan(r["lowmag_overlap"]) and math.isnan(r["principal_overlap"])
    assert r["overlap_baseline"] == 0.3


# -- gram vs svd ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_gram_and_svd_agree(dtype: torch.dtype) -> None:
    w0 = torch.randn(48, 80, generator=_gen(39), dtype=F64)
    w1 = w0 + 0.05 * torch.randn(48, 80, generator=_gen(40), dtype=F64)
    base, tuned = w0.to(dtype), w1.to(dtype)
    pg = TensorPair(base, tuned, Settings(tier="standard"))
    ps = TensorPair(base, tuned, Settings(tier="exact"))
    rg, rs = _run_all(pg), _run_all(ps)
    assert rs.keys() - rg.keys() == {"intruder_dims"}  # needs W0's full basis: exact tier only
    assert rg.keys() <= rs.keys()
    for col in rg:
        assert rg[col] == pytest.approx(rs[col], rel=1e-6, abs=1e-12), col
    # The decompositions of W0 and W1, plus sigma_1(ΔW) for stable rank (block Krylov).
    sigma1 = "krylov-f64" if dtype == F64 else SIGMA1_GRAM  # Krylov runs in ΔW's dtype
    assert pg.methods == {"gram-eigh-f64", sigma1}
    assert ps.methods == {"svd-f64"}


def test_methods_record_only_what_ran() -> None:
    w0 = torch.randn(16, 24, generator=_gen(41))
    w1 = w0 + 0.1
    pair = TensorPair(w0, w1, Settings())
    for name in ("sparsity_bf16", "sparsity_atol", "sparsity_exact", "update_norms"):
        METRICS[name].fn(pair)
    assert pair.methods == set()
    METRICS["stable_rank"].fn(pair)
    assert pair.methods == {SIGMA1_GRAM}
    METRICS["nss"].fn(pair)
    assert pair.methods == {SIGMA1_GRAM, "gram-eigh-f64"}


@pytest.mark.parametrize("atol", [0.0, 1e-5, 9.96e-6, 1.0014e-5, 3e-3, 1e30])
def test_bf16_integer_path_equals_general_path(atol: float) -> None:
    """The bf16 fast path (integer views) gives the general path's counts exactly."""
    gen = _gen(77)
    w0 = (0.01 * torch.randn(64, 96, generator=gen)).to(BF16)
    w1 = (w0.float() + 1e-5 * torch.randn(64, 96, generator=gen)).to(BF16)
    flat0, flat1 = w0.view(-1), w1.view(-1)
    flat0[:10] = 0.0
    flat1[:5] = -0.0  # ±0: unchanged
    flat1[20:25] = -flat0[20:25]  # sign flips of non-zero values: changed
    flat1[30:40] = flat0[30:40]
    # differences that round (in bf16) to exactly the bf16 neighbours of 1e-5
    flat1[40:44] = (flat0[40:44].float() + 1.0014e-5).to(BF16)
    flat0[50], flat1[50] = 1.0, 1.0 + 2**-7
    settings = Settings(atol=atol)
    fast = TensorPair(w0, w1, settings).elementwise
    slow = TensorPair(w0.float(), w1.float(), settings).elementwise
    for field in ("unchanged_bf16", "le_atol", "lt_atol", "exact_equal", "nonfinite"):
        assert getattr(fast, field) == getattr(slow, field), field
    assert fast.max_abs_delta == slow.max_abs_delta
    assert fast.delta_sq == pytest.approx(slow.delta_sq, rel=1e-6)
    assert fast.base_sq == pytest.approx(slow.base_sq, rel=1e-6)


def test_bf16_path_falls_back_on_nan_and_inf() -> None:
    w0 = torch.randn(8, 8, generator=_gen(78)).to(BF16)
    w0[2, 2] = 3e38  # finite in bf16, but its square overflows float32
    w1 = w0.clone()
    w1[0, 0] = float("nan")
    w1[1, 1] = float("inf")
    fast = TensorPair(w0, w1, Settings()).elementwise
    slow = TensorPair(w0.double(), w1.double(), Settings()).elementwise
    assert fast.nonfinite == slow.nonfinite == 2
    assert fast.unchanged_bf16 == slow.unchanged_bf16 == 62
    assert fast.base_sq == pytest.approx(slow.base_sq, rel=1e-12)
