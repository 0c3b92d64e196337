"""Known-answer tests for the selective eigensolver, radix select and thread helper."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opdgeo import linalg, linalg_eig
from opdgeo.linalg import spectrum
from opdgeo.linalg_eig import FALLBACK, METHOD, TopEigen, eigh_flops, eigh_top
from opdgeo.linalg_select import fraction_threshold_f32, kth_smallest_nonneg_f32
from opdgeo.threads import SMALL_OP_FLOPS, threads_for, threads_wanted


@pytest.fixture(autouse=True)
def selective_at_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small matrices normally take the full eigh (SMALL_N); test the MRRR route at all n."""
    monkeypatch.setattr(linalg_eig, "SMALL_N", 0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sym(n: int, seed: int, cols: int | None = None) -> torch.Tensor:
    w = torch.randn(n, cols or 2 * n + 1, generator=_gen(seed), dtype=torch.float64)
    return w @ w.T


def _planted(values: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q diag(values) Qᵀ with a random orthogonal Q; (matrix, Q)."""
    n = len(values)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return (q * torch.tensor(values, dtype=torch.float64)) @ q.T, q


def _check_pairs(g: torch.Tensor, top: TopEigen, k: int) -> None:
    """Eigenvalues as eigh's; vectors orthonormal, with small residuals."""
    n = g.shape[0]
    ref = torch.linalg.eigvalsh(g).flip(0)
    scale = max(float(ref.abs().max()), 1e-300) if n else 1.0
    assert top.values.shape == (n,) and top.values.dtype == torch.float64
    assert top.vectors.shape == (n, k) and top.vectors.dtype == torch.float64
    assert bool((top.values[:-1] >= top.values[1:]).all())
    torch.testing.assert_close(top.values, ref, rtol=0, atol=1e-13 * scale)
    if k:
        eye = torch.eye(k, dtype=torch.float64)
        torch.testing.assert_close(top.vectors.T @ top.vectors, eye, rtol=0, atol=1e-13)
        resid = g @ top.vectors - top.vectors * top.values[:k]
        assert float(resid.abs().max()) <= 1e-13 * scale * max(1, n) ** 0.5


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 203])
@pytest.mark.parametrize("kind", ["zero", "one", "eighth", "half", "all"])
def test_eigh_top_matches_eigh(n: int, kind: str) -> None:
    k = {"zero": 0, "one": 1, "eighth": max(1, n // 8), "half": n // 2, "all": n}[kind]
    g = _sym(n, seed=n)
    top = eigh_top(g, k)
    assert top.method == METHOD
    _check_pairs(g, top, k)
    # the same subspace as eigh's top-k vectors where the gap after k is clear
    if 0 < k < n:
        ref_vals, ref_vecs = torch.linalg.eigh(g)
        ref_vecs = ref_vecs.flip(1)[:, :k]
        overlap = torch.linalg.svdvals(top.vectors.T @ ref_vecs)
        assert float(overlap.min()) > 1 - 1e-10


def test_eigh_top_planted_spectrum_with_ties_and_zeros() -> None:
    # spikes, a 5-fold degenerate eigenvalue straddling k, a rank-deficient tail of zeros
    values = [9.0, 7.0, 5.0] + [2.0] * 5 + [1.0, 0.5] + [0.0] * 10
    g, _ = _planted(values, seed=3)
    for k in (1, 3, 5, 8, 10, 20):
        top = eigh_top(g, k)
        _check_pairs(g, top, k)
        torch.testing.assert_close(
            top.values, torch.tensor(values, dtype=torch.float64), rtol=0, atol=1e-13 * 9
        )
    # k = 3 ends before the degenerate block: the span is exactly the planted one
    top = eigh_top(g, 3)
    _, q = _planted(values, seed=3)
    overlap = torch.linalg.svdvals(top.vectors.T @ q[:, :3])
    assert float(overlap.min()) > 1 - 1e-12


def test_eigh_top_zero_matrix_and_empty() -> None:
    top = eigh_top(torch.zeros(6, 6, dtype=torch.float64), 2)
    assert torch.equal(top.values, torch.zeros(6, dtype=torch.float64))
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(top.vectors.T @ top.vectors, eye, rtol=0, atol=1e-14)
    empty = eigh_top(torch.zeros(0, 0, dtype=torch.float64), 3)
    assert empty.values.shape == (0,) and empty.vectors.shape == (0, 0)
    one = eigh_top(torch.tensor([[4.0]], dtype=torch.float64), 1)
    assert one.values.tolist() == [4.0] and one.vectors.tolist() == [[1.0]]
    with pytest.raises(ValueError, match="square"):
        eigh_top(torch.zeros(3, 4, dtype=torch.float64), 1)


def test_eigh_top_overwrite_and_layouts() -> None:
    g = _sym(40, seed=7)
    keep = g.clone()
    plain = eigh_top(g, 5)
    assert torch.equal(g, keep)  # not overwritten by default
    # a non-contiguous view of the same matrix and float32 input give the same answer
    wide = torch.zeros(40, 80, dtype=torch.float64)
    wide[:, ::2] = g
    strided = eigh_top(wide[:, ::2], 5)
    assert torch.equal(strided.values, plain.values)
    assert torch.equal(strided.vectors, plain.vectors)
    f32 = eigh_top(g.float(), 5)
    _check_pairs(g.float().double(), f32, 5)
    inplace = eigh_top(g, 5, overwrite=True)
    assert torch.equal(inplace.values, plain.values)
    assert torch.equal(inplace.vectors, plain.vectors)


def test_eigh_flops() -> None:
    assert eigh_flops(3, 1) == pytest.approx(4 / 3 * 27 + 18)


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (32, 32), (7, 300)])
def test_spectrum_gram_dc_matches_svd_and_gram(shape: tuple[int, int]) -> None:
    w = torch.randn(*shape, generator=_gen(11), dtype=torch.float64)
    k = min(shape) // 4 + 1
    fast = spectrum(w, k, "gram-dc")
    full = spectrum(w, k, "gram")
    exact = spectrum(w, k, "svd")
    assert fast.method == f"gram-{METHOD}-f64"
    m, n = shape
    assert fast.s.shape == (min(m, n),)
    assert fast.u.shape == (m, k) and fast.v.shape == (n, k)
    torch.testing.assert_close(fast.s, exact.s, rtol=0, atol=1e-12 * float(exact.s[0]))
    torch.testing.assert_close(fast.s[:k], full.s[:k], rtol=1e-12, atol=0)
    eye = torch.eye(k, dtype=torch.float64)
    for vecs in (fast.u, fast.v):
        torch.testing.assert_close(vecs.T @ vecs, eye, rtol=0, atol=1e-11)
    for a, b in ((fast.u, exact.u), (fast.v, exact.v)):
        assert float(torch.diagonal(a.T @ b).abs().min()) > 1 - 1e-9
    torch.testing.assert_close(w @ fast.v, fast.u * fast.s[:k], rtol=0, atol=1e-11)


def test_spectrum_gram_dc_rank_deficient() -> None:
    g = _gen(12)
    w = torch.randn(12, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 20, generator=g, dtype=torch.float64
    )
    sp = spectrum(w, 8, "gram-dc")
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(sp.v.T @ sp.v, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(sp.u.T @ sp.u, eye, atol=1e-10, rtol=0)
    exact = spectrum(w, 3, "svd")
    assert float(torch.linalg.svdvals(sp.v[:, :3].T @ exact.v).min()) > 1 - 1e-10


def test_small_matrices_take_the_full_eigh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linalg_eig, "SMALL_N", 224)
    g = _sym(100, seed=31)
    small = eigh_top(g, 12)
    assert small.method == FALLBACK == "eigh"  # spectrum then says gram-eigh-f64
    _check_pairs(g, small, 12)
    vals, vecs = torch.linalg.eigh(g)  # the same routine (possibly on more threads)
    torch.testing.assert_close(small.values, vals.flip(0), rtol=1e-13, atol=0)
    dots = torch.diagonal(small.vectors.T @ vecs.flip(1)[:, :12]).abs()
    torch.testing.assert_close(dots, torch.ones(12, dtype=torch.float64), rtol=0, atol=1e-12)
    assert spectrum(torch.randn(30, 50, dtype=torch.float64), 3, "gram-mrrr").method == (
        "gram-eigh-f64"
    )
    big = _sym(230, seed=32)
    assert eigh_top(big, 20).method == METHOD


# -- radix select ---------------------------------------------------------------------------


def _kth(x: torch.Tensor, k: int) -> float:
    return float(torch.kthvalue(x.reshape(-1), k).values)


def _f32(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int32).view(torch.float32)


def _cases() -> dict[str, torch.Tensor]:
    g = _gen(21)
    heavy = torch.randint(0, 5, (997,), generator=g).float() * 0.25
    bf16ish = (torch.randn(5000, generator=g) * 0.02).abs().to(torch.bfloat16).float()
    denormal = _f32([1, 2, 3, 0x007FFFFF, 0x00000100, 0x00800000, 0, 5, 1, 1])
    special = torch.tensor([0.0, -0.0, math.inf, 3.4e38, 1e-45, 1.0, -0.0, math.inf, 0.0])
    same_high = _f32([(0x3F80 << 16) | low for low in (7, 3, 0xFFFF, 0, 3, 0x8000, 1, 1)])
    return {
        "random": torch.rand(4099, generator=g),
        "gaussian_abs": torch.randn(300, 17, generator=g).abs(),
        "heavy_ties": heavy,
        "bf16_exact": bf16ish,
        "all_equal": torch.full((333,), 0.7),
        "all_zero": torch.zeros(50),
        "signed_zeros": torch.tensor([0.0, -0.0] * 20),
        "denormals": denormal,
        "special": special,
        "same_high_half": same_high,
        "single": torch.tensor([2.5]),
        "huge": torch.tensor([3.0e38, 1.0e38, 3.4028235e38, 2.0e38]),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_radix_select_equals_kthvalue(case: str) -> None:
    x = _cases()[case]
    n = x.numel()
    ks = sorted({1, 2, n // 3, n // 2, n - 1, n} & set(range(1, n + 1)))
    for k in ks:
        sel = kth_smallest_nonneg_f32(x, k)
        assert sel.value == _kth(x, k)
        flat = x.reshape(-1)
        assert sel.below == int((flat < sel.value).sum())
        assert sel.equal == int((flat == sel.value).sum())


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("largest", [True, False])
def test_float32_threshold_equals_kthvalue_route(case: str, largest: bool) -> None:
    x = _cases()[case]
    for frac in (1e-3, 0.1, 0.3, 0.5, 0.77, 0.999):
        radix = linalg.fraction_threshold(x, frac, largest)
        kth = linalg.fraction_threshold(x.double(), frac, largest)  # float64: kthvalue route
        assert radix == kth
        mask = linalg.threshold_mask(x, *radix, largest)
        assert torch.equal(mask, linalg.threshold_mask(x.double(), *kth, largest))
        size = round(frac * x.numel())
        if 0 < size < x.numel():
            assert int(mask.sum()) == size


def test_radix_select_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        kth_smallest_nonneg_f32(torch.ones(3, dtype=torch.float64), 1)
    for k in (0, 4):
        with pytest.raises(ValueError):
            kth_smallest_nonneg_f32(torch.ones(3), k)


def test_nan_and_negative_float32_take_the_kthvalue_route() -> None:
    x = torch.tensor([0.5, float("nan"), 0.25, 1.0, 0.75])
    signed = torch.tensor([-1.0, 2.0, -3.0, 0.5])
    for data in (x, signed):
        for largest in (True, False):  # as the float64 (kthvalue) route: unchanged behaviour
            got = linalg.fraction_threshold(data, 0.4, largest)
            assert got == linalg.fraction_threshold(data.double(), 0.4, largest)
    assert linalg.fraction_threshold(signed, 0.5, False) == (-1.0, 1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(0, 0x7F800000),  # every non-negative float32 pattern up to +Inf
            st.sampled_from([0, 0x80000000, 1, 0x3F800000, 0x3F800001]),  # -0.0 and ties
        ),
        min_size=1,
        max_size=300,
    ),
    st.floats(0.0, 1.0),
    st.booleans(),
)
def test_radix_threshold_property(patterns: list[int], frac: float, largest: bool) -> None:
    x = torch.tensor(patterns, dtype=torch.int64).to(torch.int32).view(torch.float32)
    n = x.numel()
    size = round(frac * n)
    if 0 < size < n:
        assert fraction_threshold_f32(x, size, largest) == linalg.fraction_threshold(
            x.double(), frac, largest
        )
    k = max(1, min(n, size))
    assert kth_smallest_nonneg_f32(x, k).value == _kth(x, k)


# -- threads ----------------------------------------------------------------------------------


def test_threads_for_small_and_large_operations() -> None:
    import scipy.linalg.lapack  # noqa: F401 - threads_for limits BLAS once scipy's LAPACK is in
    from threadpoolctl import threadpool_info, threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads_wanted(SMALL_OP_FLOPS / 2) == 1
        assert threads_wanted(SMALL_OP_FLOPS * 2) == 2
        with threads_for(1e6) as used:
            assert used == 1 and torch.get_num_threads() == 1
            blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
            assert blas and all(p["num_threads"] == 1 for p in blas)
        assert torch.get_num_threads() == 2
        with threads_for(SMALL_OP_FLOPS * 10) as used:
            assert used == 2 and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads_for(1e6):  # restored on errors too
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        assert threads_wanted(10.0, 2, cut=5.0) == 2
        # torch already on one thread: OpenBLAS (which starts with one per CPU) follows it
        torch.set_num_threads(1)
        with threadpool_limits(limits=2, user_api="blas"), threads_for(1e6) as used:
            assert used == 1 and torch.get_num_threads() == 1
            blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
            assert all(p["num_threads"] == 1 for p in blas)
    finally:
        torch.set_num_threads(before)
