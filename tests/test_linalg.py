"""Known-answer tests for the linear-algebra kernels in :mod:`opdgeo.linalg`."""

from __future__ import annotations

import math

import pytest
import torch

from opdgeo import linalg
from opdgeo.linalg import (
    fraction_mask,
    gram,
    principal_angles,
    project_left,
    project_right,
    spectrum,
    top_singular_value,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(m: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(m, m, generator=_gen(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _assert_same_subspaces(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-8) -> None:
    """Columns of a and b agree up to sign: |diag(aᵀ b)| ≈ 1."""
    assert a.shape == b.shape
    d = torch.diagonal(a.T @ b).abs()
    torch.testing.assert_close(d, torch.ones_like(d), rtol=0, atol=tol)


# -- spectrum -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32)], ids=["wide", "tall", "square"])
def test_spectrum_gram_matches_svd(shape: tuple[int, int]) -> None:
    w = torch.randn(*shape, generator=_gen(1), dtype=torch.float64)
    k = 6
    g = spectrum(w, k, "gram")
    s = spectrum(w, k, "svd")
    assert g.method == "gram-eigh-f64"
    assert s.method == "svd-f64"
    m, n = shape
    assert g.s.shape == s.s.shape == (min(m, n),)
    assert g.u.shape == s.u.shape == (m, k)
    assert g.v.shape == s.v.shape == (n, k)
    assert g.u.dtype == g.v.dtype == g.s.dtype == torch.float64
    # Top-k values to ~1e-10 relative; the whole spectrum to 1e-10 of sigma_1.
    torch.testing.assert_close(g.s[:k], s.s[:k], rtol=1e-10, atol=0)
    torch.testing.assert_close(g.s, s.s, rtol=0, atol=1e-10 * float(s.s[0]))
    # Descending order.
    assert bool((g.s[:-1] >= g.s[1:]).all())
    _assert_same_subspaces(g.u, s.u)
    _assert_same_subspaces(g.v, s.v)
    # Orthonormal columns, and W v_i = s_i u_i.
    torch.testing.assert_close(g.u.T @ g.u, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(g.v.T @ g.v, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(w @ g.v, g.u * g.s[:k], rtol=0, atol=1e-10)


def test_spectrum_known_singular_values() -> None:
    m, n = 20, 30
    u = _orthogonal(m, 2)
    v = _orthogonal(n, 3)[:, :m]
    sv = torch.linspace(10.0, 1.0, m, dtype=torch.float64)
    w = (u * sv) @ v.T
    for method in ("gram", "svd"):
        sp = spectrum(w, 5, method)
        torch.testing.assert_close(sp.s, sv, rtol=1e-12, atol=0)
        _assert_same_subspaces(sp.u, u[:, :5], tol=1e-10)
        _assert_same_subspaces(sp.v, v[:, :5], tol=1e-10)


def test_spectrum_float32_input() -> None:
    w = torch.randn(30, 50, generator=_gen(4), dtype=torch.float32)
    g = spectrum(w, 5, "gram")
    s = spectrum(w, 5, "svd")
    ref = torch.linalg.svdvals(w.to(torch.float64))
    assert g.s.dtype == torch.float64
    torch.testing.assert_close(g.s, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(s.s, ref, rtol=1e-12, atol=0)
    _assert_same_subspaces(g.u, s.u)
    _assert_same_subspaces(g.v, s.v)
    # Tall float32 goes through the transposed route.
    gt = spectrum(w.T.contiguous(), 5, "gram")
    torch.testing.assert_close(gt.s, ref, rtol=1e-10, atol=0)
    _assert_same_subspaces(gt.u, s.v)
    _assert_same_subspaces(gt.v, s.u)


def test_spectrum_k_is_clamped_and_unknown_method_rejected() -> None:
    w = torch.randn(5, 8, generator=_gen(5), dtype=torch.float64)
    sp = spectrum(w, 100, "gram")
    assert sp.u.shape == (5, 5) and sp.v.shape == (8, 5)
    with pytest.raises(ValueError, match="unknown spectral method"):
        spectrum(w, 2, "qr")


# -- principal angles -----------------------------------------------------------------------


def test_principal_angles_identical_subspaces_are_zero() -> None:
    q = _orthogonal(30, 6)[:, :5]
    angles = principal_angles(q, q)
    assert angles.shape == (5,)
    assert float(angles.abs().max()) < 1e-12
    # A different orthonormal basis of the same subspace: still zero.
    r = _orthogonal(5, 7)
    assert float(principal_angles(q, q @ r).abs().max()) < 1e-12


def _planted(q: torch.Tensor, k: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """a = q[:, :k]; b = a with column 0 rotated by theta toward q[:, k]."""
    a = q[:, :k]
    b = a.clone()
    b[:, 0] = math.cos(theta) * q[:, 0] + math.sin(theta) * q[:, k]
    return a, b


@pytest.mark.parametrize("theta", [1e-9, 1e-6, 1e-3, 0.3, math.pi / 3, 1.5])
def test_principal_angles_planted_rotation(theta: float) -> None:
    k = 4
    # Standard basis: everything exact.
    a, b = _planted(torch.eye(12, dtype=torch.float64), k, theta)
    angles = principal_angles(a, b)
    torch.testing.assert_close(
        angles[-1], torch.tensor(theta, dtype=torch.float64), rtol=1e-14, atol=0
    )
    assert float(angles[:-1].abs().max()) < 1e-15
    # A random orthonormal basis: exact up to rounding of the basis itself.
    a, b = _planted(_orthogonal(40, 8), k, theta)
    angles = principal_angles(a, b)
    assert bool((angles[1:] >= angles[:-1]).all())  # ascending
    assert angles[-1].item() == pytest.approx(theta, rel=1e-6)
    assert float(angles[:-1].abs().max()) < 1e-13


def test_principal_angles_tiny_angle_not_lost_to_arccos() -> None:
    theta = 1e-9
    a, b = _planted(_orthogonal(20, 9), 3, theta)
    # arccos of the cosines gives exactly 0 here: cos(1e-9) == 1.0 in float64.
    cos = torch.linalg.svdvals(a.T @ b).clamp(0.0, 1.0)
    assert float(torch.arccos(cos).max()) == 0.0
    assert float(principal_angles(a, b).max()) == pytest.approx(theta, rel=1e-6)


def test_principal_angles_orthogonal_subspaces_are_90_degrees() -> None:
    q = _orthogonal(30, 10)
    angles = torch.rad2deg(principal_angles(q[:, :5], q[:, 5:10]))
    torch.testing.assert_close(
        angles, torch.full((5,), 90.0, dtype=torch.float64), rtol=0, atol=1e-10
    )


def test_principal_angles_several_planted_angles() -> None:
    q = _orthogonal(30, 11)
    thetas = [1e-8, 0.2, 0.7, 1.2]
    k = len(thetas)
    a = q[:, :k]
    b = torch.stack(
        [math.cos(t) * q[:, i] + math.sin(t) * q[:, k + i] for i, t in enumerate(thetas)], dim=1
    )
    angles = principal_angles(a, b)
    torch.testing.assert_close(angles, torch.tensor(thetas, dtype=torch.float64), rtol=1e-6, atol=0)


def test_principal_angles_empty() -> None:
    a = torch.zeros(5, 0, dtype=torch.float64)
    assert principal_angles(a, a).shape == (0,)


# -- top singular value ---------------------------------------------------------------------


def test_top_singular_value_rank_one() -> None:
    x = torch.randn(30, generator=_gen(12), dtype=torch.float64)
    y = torch.randn(50, generator=_gen(13), dtype=torch.float64)
    exact = float(torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))
    assert top_singular_value(torch.outer(x, y)) == pytest.approx(exact, rel=1e-12)
    assert top_singular_value(torch.outer(y, x)) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(40, 60), (60, 40), (3, 100), (1, 7)])
def test_top_singular_value_random(shape: tuple[int, int], dtype: torch.dtype) -> None:
    w = torch.randn(*shape, generator=_gen(14), dtype=torch.float64)
    exact = float(torch.linalg.svdvals(w)[0])
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert top_singular_value(w.to(dtype)) == pytest.approx(exact, rel=rel)


def test_top_singular_value_flat_spectrum() -> None:
    """No spectral gap at all: sigma_1 of a scaled partial isometry is exact."""
    q1 = torch.linalg.qr(torch.randn(40, 12, generator=_gen(22), dtype=torch.float64))[0]
    q2 = torch.linalg.qr(torch.randn(60, 12, generator=_gen(23), dtype=torch.float64))[0]
    assert top_singular_value(3.0 * q1 @ q2.T) == pytest.approx(3.0, rel=1e-12)


def test_top_singular_value_zero_and_empty() -> None:
    assert top_singular_value(torch.zeros(10, 20)) == 0.0
    assert top_singular_value(torch.zeros(0, 5)) == 0.0


# -- fraction mask --------------------------------------------------------------------------


@pytest.mark.parametrize("frac", [0.01, 0.1, 0.25, 0.3, 0.5, 0.77, 0.99])
@pytest.mark.parametrize("largest", [True, False])
def test_fraction_mask_exact_count_with_ties(frac: float, largest: bool) -> None:
    # bf16-like data: only a handful of distinct magnitudes, so the threshold is tied.
    x = torch.randint(0, 6, (37, 29), generator=_gen(15)).float() * 0.0078125
    n = x.numel()
    mask = fraction_mask(x, frac, largest)
    assert mask.shape == x.shape and mask.dtype == torch.bool
    assert int(mask.sum()) == round(frac * n)
    inside, outside = x[mask], x[~mask]
    if largest:
        assert float(inside.min()) >= float(outside.max())
    else:
        assert float(inside.max()) <= float(outside.min())
    # Ties at the threshold are filled in index order.
    flat, fm = x.reshape(-1), mask.reshape(-1)
    thr = float(inside.min()) if largest else float(inside.max())
    tied = (flat == thr).nonzero().squeeze(1)
    chosen = fm[tied]
    n_chosen = int(chosen.sum())
    assert bool(chosen[:n_chosen].all()) and not bool(chosen[n_chosen:].any())


def test_fraction_mask_bf16_repeated_values() -> None:
    x = torch.randn(64, 64, generator=_gen(16)).to(torch.bfloat16).float().abs()
    assert torch.unique(x).numel() < x.numel()  # genuinely tied
    for frac in (0.3, 0.7):
        top = fraction_mask(x, frac, largest=True)
        bottom = fraction_mask(x, frac, largest=False)
        assert int(top.sum()) == int(bottom.sum()) == round(frac * x.numel())
        assert float(x[top].min()) >= float(x[~top].max())
        assert float(x[bottom].max()) <= float(x[~bottom].min())


def test_fraction_mask_top_and_bottom_known() -> None:
    x = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0])
    assert fraction_mask(x, 0.5, largest=True).tolist() == [True, False, True, False, True, False]
    assert fraction_mask(x, 0.5, largest=False).tolist() == [False, True, False, True, False, True]
    assert fraction_mask(x, 1 / 6, largest=True).tolist() == [True] + [False] * 5
    assert fraction_mask(x, 1 / 6, largest=False).tolist() == [False] * 5 + [True]


def test_fraction_mask_edges() -> None:
    x = torch.randn(7, 9, generator=_gen(17))
    for largest in (True, False):
        assert not bool(fraction_mask(x, 0.0, largest).any())
        assert bool(fraction_mask(x, 1.0, largest).all())
        assert not bool(fraction_mask(x, 0.001, largest).any())  # rounds to 0 entries
        assert bool(fraction_mask(x, 0.999, largest).all())  # rounds to all entries
    const = torch.full((4, 5), 2.0)
    m = fraction_mask(const, 0.35, largest=True)
    assert m.reshape(-1).tolist() == [True] * 7 + [False] * 13


# -- chunked Gram and projections -----------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linalg, "_CHUNK_ELEMS", 64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gram_and_projections_match_matmul(small_chunks: None, dtype: torch.dtype) -> None:
    m, n, k = 10, 53, 3  # step = 64 // 10 = 6 columns -> 9 chunks, last one partial
    w = torch.randn(m, n, generator=_gen(18)).to(dtype)
    w64 = w.to(torch.float64)
    u = torch.randn(m, k, generator=_gen(19), dtype=torch.float64)
    v = torch.randn(n, k, generator=_gen(20), dtype=torch.float64)
    g = gram(w)
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, w64 @ w64.T, rtol=1e-13, atol=1e-13)
    pl = project_left(w, u)
    assert pl.shape == (k, n) and pl.dtype == torch.float64
    torch.testing.assert_close(pl, u.T @ w64, rtol=1e-13, atol=1e-13)
    pr = project_right(w, v)
    assert pr.shape == (m, k) and pr.dtype == torch.float64
    torch.testing.assert_close(pr, w64 @ v, rtol=1e-13, atol=1e-13)


def test_chunked_spectrum_matches_svd(small_chunks: None) -> None:
    for shape in ((12, 45), (45, 12)):
        w = torch.randn(*shape, generator=_gen(21), dtype=torch.float64)
        g = spectrum(w, 4, "gram")
        s = spectrum(w, 4, "svd")
        torch.testing.assert_close(g.s, s.s, rtol=1e-10, atol=0)
        _assert_same_subspaces(g.u, s.u)
        _assert_same_subspaces(g.v, s.v)


def test_gram_spectrum_of_rank_deficient_matrix_has_orthonormal_vectors() -> None:
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(12, 3, generator=gen, dtype=torch.float64) @ torch.randn(
        3, 20, generator=gen, dtype=torch.float64
    )
    sp = spectrum(w, 8, "gram")
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(sp.v.T @ sp.v, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(sp.u.T @ sp.u, eye, atol=1e-10, rtol=0)
    exact = spectrum(w, 3, "svd")
    overlap = torch.linalg.svdvals(sp.v[:, :3].T @ exact.v)
    assert float(overlap.min()) > 1 - 1e-10


# -- block Krylov sigma_1 (fast tier) -------------------------------------------------------


def _power_cases() -> dict[str, torch.Tensor]:
    g = _gen(40)
    x, y = torch.randn(50, generator=g), torch.randn(70, generator=g)
    spread = torch.linspace(1.0, 0.5, 30, dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(90, 30, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))[0]
    return {
        "rank1": torch.outer(x, y),
        "rank1_tall": torch.outer(y, x),
        "rank2": torch.randn(60, 2, generator=g) @ torch.randn(2, 40, generator=g),
        "gaussian_square": torch.randn(96, 96, generator=g),
        "gaussian_wide": torch.randn(40, 150, generator=g),
        "gaussian_tall": torch.randn(150, 40, generator=g),
        # small sides that are not a multiple of any block size
        "gaussian_small_side_30": torch.randn(91, 30, generator=g),
        "gaussian_small_side_21": torch.randn(21, 113, generator=g),
        "gaussian_small_side_7": torch.randn(50, 7, generator=g),
        "gaussian_small_side_5": torch.randn(5, 64, generator=g),
        "slow_decay": ((u * spread) @ v.T).float(),
        "one_column": torch.randn(40, 1, generator=g),
        "one_row": torch.randn(1, 40, generator=g),
        "two_by_two": torch.randn(2, 2, generator=g),
        "very_wide": torch.randn(8, 300, generator=g),
        "very_tall": torch.randn(300, 8, generator=g),
        "float64": torch.randn(50, 60, generator=g, dtype=torch.float64),
    }


@pytest.mark.parametrize("case", list(_power_cases()))
def test_power_sigma1_matches_exact(case: str) -> None:
    """A lower bound of sigma_1 that is exact for low rank and within 1e-3 on flat spectra."""
    w = _power_cases()[case]
    exact = float(torch.linalg.svdvals(w.double())[0])
    est, steps = linalg.top_singular_value_power(w)
    assert isinstance(est, float) and steps >= 1
    assert est <= exact * (1 + 1e-6)  # Rayleigh-Ritz: never above sigma_1 (f32 round-off)
    rel = 1e-6 if case.startswith(("rank", "one_", "two_")) else 1e-3
    assert est == pytest.approx(exact, rel=rel)


def test_power_sigma1_is_deterministic_and_does_not_touch_the_global_rng() -> None:
    w = torch.randn(64, 48, generator=_gen(41))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = linalg.top_singular_value_power(w)
    assert torch.equal(torch.get_rng_state(), before)
    assert linalg.top_singular_value_power(w) == first
    assert linalg.top_singular_value_power(w.clone()) == first


def test_power_sigma1_zero_and_empty() -> None:
    assert linalg.top_singular_value_power(torch.zeros(10, 20))[0] == 0.0
    assert linalg.top_singular_value_power(torch.zeros(0, 5))[0] == 0.0
    assert linalg.top_singular_value_power(torch.zeros(1, 1))[0] == 0.0


def test_power_sigma1_agrees_with_gram_route() -> None:
    w = torch.randn(70, 33, generator=_gen(42))
    est, _ = linalg.top_singular_value_power(w)
    assert est == pytest.approx(top_singular_value(w), rel=1e-3)


# -- fraction threshold: bf16 histogram route == kthvalue route -----------------------------


def _bf16_magnitudes(n: int, seed: int) -> torch.Tensor:
    """Non-negative values that are exactly bf16: heavy ties, zeros (+0 and -0), subnormals."""
    g = _gen(seed)
    x = (torch.randn(n, generator=g) * 0.02).abs().to(torch.bfloat16).float()
    x[torch.randint(0, n, (n // 10,), generator=g)] = 0.0
    x[torch.randint(0, n, (n // 20,), generator=g)] = -0.0
    x[torch.randint(0, n, (n // 10,), generator=g)] = 0.0078125  # one heavily tied value
    x[:3] = torch.tensor([1e-40, 2e-40, 9.2e-41]).to(torch.bfloat16).float()  # subnormal bf16
    return x


@pytest.mark.parametrize("frac", [1e-4, 0.0015, 0.1, 0.3, 0.5, 0.7, 0.9985, 1 - 1e-4])
@pytest.mark.parametrize("largest", [True, False])
def test_histogram_route_equals_kthvalue_route(frac: float, largest: bool) -> None:
    x = _bf16_magnitudes(71 * 281, seed=43).reshape(71, 281)
    assert linalg._bf16_magnitude_bits(x.reshape(-1)) is not None  # histogram route
    assert linalg._bf16_magnitude_bits(x.double().reshape(-1)) is None  # kthvalue route
    hist = linalg.fraction_threshold(x, frac, largest)
    kth = linalg.fraction_threshold(x.double(), frac, largest)
    as_bf16 = linalg.fraction_threshold(x.to(torch.bfloat16), frac, largest)
    assert hist == kth == as_bf16
    mask = linalg.threshold_mask(x, *hist, largest)
    assert torch.equal(mask, linalg.threshold_mask(x.double(), *kth, largest))
    assert int(mask.sum()) == round(frac * x.numel())
    inside, outside = x[mask], x[~mask]
    if largest:
        assert float(inside.min()) >= float(outside.max())
    else:
        assert float(inside.max()) <= float(outside.min())


@pytest.mark.parametrize("largest", [True, False])
def test_histogram_route_all_tied_and_all_zero(largest: bool) -> None:
    for value in (0.0, 0.5):
        x = torch.full((13, 17), value)
        for frac in (0.01, 0.3, 0.99):
            hist = linalg.fraction_threshold(x, frac, largest)
            assert hist == linalg.fraction_threshold(x.double(), frac, largest)
            mask = linalg.threshold_mask(x, *hist, largest).reshape(-1)
            count = round(frac * x.numel())
            assert mask.tolist() == [True] * count + [False] * (x.numel() - count)


def test_non_bf16_or_negative_values_take_the_kthvalue_route() -> None:
    x = torch.rand(40, 50, generator=_gen(44))  # float32 values that are not bf16
    assert linalg._bf16_magnitude_bits(x.reshape(-1)) is None
    signed = _bf16_magnitudes(2000, seed=45)
    signed[::3] *= -1
    for data in (x, signed):
        for largest in (True, False):
            thr, need = linalg.fraction_threshold(data, 0.3, largest)
            mask = linalg.threshold_mask(data, thr, need, largest)
            assert int(mask.sum()) == round(0.3 * data.numel())
