"""The scan kernel (TensorPair.elementwise) equals the general float32/float64 path on every
pair we can build."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from opdgeo import scan
from opdgeo.config import Settings
from opdgeo.pair import ElementStats, TensorPair
from opdgeo.scan import BLOCK, scan_pair

HAS_NUMBA = importlib.util.find_spec("numba") is not None


@pytest.fixture(autouse=True, params=["torch", "jit"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both bf16 kernels: torch's (OPDGEO_JIT=0) and numba's
    (opdgeo.scan_jit, here on pairs of every size)."""
    if request.param == "jit":
        if not HAS_NUMBA:
            pytest.skip("numba is not installed (the 'fast' extra)")
        monkeypatch.setattr(scan, "JIT_MIN_ENTRIES", 0)
        monkeypatch.delenv("OPDGEO_JIT", raising=False)
    else:
        monkeypatch.setenv("OPDGEO_JIT", "0")
    return str(request.param)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(b: torch.Tensor, t: torch.Tensor, atol: float) -> ElementStats:
    """The general path on float32 copies of bf16 pairs (exact: bf16 values are float32
    values), so the bf16 fast path is checked against independent code."""
    if b.dtype == t.dtype == torch.bfloat16:
        b, t = b.float(), t.float()
    return TensorPair(b, t, Settings(atol=atol)).elementwise


def _exact_sums(b: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """Σ Δ² and Σ W0² in float64 over the finite entries (the definition)."""
    b64, t64 = b.double().reshape(-1), t.double().reshape(-1)
    ok = torch.isfinite(b64) & torch.isfinite(t64)
    d = torch.where(ok, t64 - b64, 0.0)
    return float((d * d).sum()), float(torch.where(ok, b64 * b64, 0.0).sum())


def _assert_same(got: ElementStats, ref: ElementStats, b: torch.Tensor, t: torch.Tensor) -> None:
    for name in ("unchanged_bf16", "le_atol", "lt_atol", "exact_equal", "nonfinite"):
        assert getattr(got, name) == getattr(ref, name), name
    assert got.max_abs_delta == ref.max_abs_delta
    exact_d, exact_b = _exact_sums(b, t)
    for name, exact in (("delta_sq", exact_d), ("base_sq", exact_b)):
        value, reference = getattr(got, name), getattr(ref, name)
        if not math.isfinite(reference):
            assert not math.isfinite(value) or value == pytest.approx(exact, rel=1e-6), name
            continue
        assert value == pytest.approx(reference, rel=1e-6, abs=1e-300), name
        assert value == pytest.approx(exact, rel=1e-6, abs=1e-300), name


def _bf16_pair(n: int, seed: int, noise: float = 1.5e-5) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    b = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)
    t = (b.float() + torch.randn(n, generator=g) * noise).to(torch.bfloat16)
    return b, t


SIZES = [0, 1, 255, 256, 257, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 517]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("atol", [0.0, 1e-5, 1e-4, 3e-3])
def test_bf16_pairs_equal_elementwise(n: int, atol: float) -> None:
    b, t = _bf16_pair(n, seed=n)
    _assert_same(scan_pair(b, t, atol), _reference(b, t, atol), b, t)


def _special_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 values at every edge: ±0, subnormals, NaN, ±Inf, huge, ties at atol."""
    n = 2 * BLOCK + 300
    b, t = _bf16_pair(n, seed=5)
    b, t = b.clone(), t.clone()
    sub = torch.tensor([1e-40, -2e-40, 9.2e-41, 0.0], dtype=torch.float32).to(torch.bfloat16)
    b[:4], t[:4] = sub, sub.flip(0)
    b[4], t[4] = 0.0, -0.0  # ±0: unchanged
    b[5], t[5] = -0.0, -0.0
    atol16 = torch.tensor(1e-5).to(torch.bfloat16)
    b[6], t[6] = 0.0, atol16  # |Δ| exactly bf16(atol): in le, not in lt
    b[7], t[7] = 0.0, -atol16
    b[8], t[8] = 1.0, 1.0078125  # one ulp at 1
    # block 1: NaN and Inf; block 2: values whose squares overflow float32
    b[BLOCK + 1], t[BLOCK + 1] = float("nan"), 1.0
    b[BLOCK + 2], t[BLOCK + 2] = float("inf"), float("inf")
    b[BLOCK + 3], t[BLOCK + 3] = 1.0, float("-inf")
    b[BLOCK + 4], t[BLOCK + 4] = float("nan"), float("nan")
    b[2 * BLOCK + 1], t[2 * BLOCK + 1] = 3.0e38, -3.0e38
    b[2 * BLOCK + 2], t[2 * BLOCK + 2] = 1e30, 1e30
    return b, t


@pytest.mark.parametrize("atol", [0.0, 1e-5, 1e-3])
def test_special_values_equal_elementwise(atol: float) -> None:
    b, t = _special_pair()
    got, ref = scan_pair(b, t, atol), _reference(b, t, atol)
    for name in ("unchanged_bf16", "le_atol", "lt_atol", "exact_equal", "nonfinite"):
        assert getattr(got, name) == getattr(ref, name), name
    assert got.max_abs_delta == ref.max_abs_delta
    assert got.nonfinite == 4
    for name in ("delta_sq", "base_sq"):  # both huge: same value to rounding
        assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-12)


def test_finite_blocks_beside_a_nan_block_stay_on_the_fast_path() -> None:
    b, t = _bf16_pair(3 * BLOCK, seed=9)
    t = t.clone()
    t[BLOCK + 7] = float("nan")
    _assert_same(scan_pair(b, t, 1e-5), _reference(b, t, 1e-5), b, t)


@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.float32, torch.float32),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float64),
    ],
    ids=["fp32", "fp16", "bf16-fp32", "fp32-fp64"],
)
def test_other_dtypes_take_the_general_path(dtypes: tuple[torch.dtype, torch.dtype]) -> None:
    g = _gen(11)
    base = torch.randn(BLOCK + 77, generator=g) * 0.02
    tuned = base + torch.randn(BLOCK + 77, generator=g) * 1e-4
    tuned[::5] = base[::5]
    b, t = base.to(dtypes[0]), tuned.to(dtypes[1])
    b[3], t[3] = float("nan"), 0.5
    got, ref = scan_pair(b, t, 1e-4), _reference(b, t, 1e-4)
    assert got == ref  # the same code on the same chunks: bit for bit


def test_identical_tensors_early_exit() -> None:
    b, _ = _bf16_pair(BLOCK + 5, seed=13)
    assert scan_pair(b, b.clone(), 1e-5) == _reference(b, b.clone(), 1e-5)
    nan = b.clone()
    nan[0] = float("nan")  # bit-identical with NaN: no early exit, as elementwise
    _assert_same(scan_pair(nan, nan.clone(), 1e-5), _reference(nan, nan.clone(), 1e-5), nan, nan)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_give_the_same_result(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "_MIN_PER_WORKER", BLOCK)  # split even a small pair
    b, t = _bf16_pair(7 * BLOCK + 100, seed=17)
    one = scan_pair(b, t, 1e-5, workers=1)
    many = scan_pair(b, t, 1e-5, workers=workers)
    assert many == one  # each block's numbers do not depend on who computed them
    _assert_same(many, _reference(b, t, 1e-5), b, t)


def test_matrices_and_shape_mismatch() -> None:
    b, t = _bf16_pair(96 * 1000, seed=19)
    b2, t2 = b.reshape(96, 1000), t.reshape(96, 1000)
    _assert_same(scan_pair(b2, t2, 1e-5), _reference(b2, t2, 1e-5), b2, t2)
    with pytest.raises(ValueError, match="shape mismatch"):
        scan_pair(b2, t2.T, 1e-5)


def test_sums_of_squares_accuracy_large_update() -> None:
    """A dense SFT-like update: sums within 1e-6 of float64 (measured: ~1e-8)."""
    b, t = _bf16_pair(5 * BLOCK, seed=23, noise=0.01)
    got = scan_pair(b, t, 1e-5)
    exact_d, exact_b = _exact_sums(b, t)
    assert got.delta_sq == pytest.approx(exact_d, rel=1e-6)
    assert got.base_sq == pytest.approx(exact_b, rel=1e-6)


def test_gbytes() -> None:
    b, t = _bf16_pair(1000, seed=1)
    assert scan.gbytes(b, t.float()) == pytest.approx((2000 + 4000) / 1e9)


@pytest.mark.parametrize("finite", [True, False])
def test_random_bit_patterns(finite: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of bf16 pattern: random signs, exponents and mantissas (subnormals, ±0,
    and with ``finite=False`` NaN payloads and ±Inf), b and t related or not."""
    g = _gen(29)
    n = 2 * BLOCK + 999
    bits = torch.randint(-(1 << 15), 1 << 15, (2, n), generator=g, dtype=torch.int32)
    if finite:  # exponents below 0x9F: |x| < 2^33, so squares never overflow float32
        exp = torch.randint(0, 0x9F, (2, n), generator=g, dtype=torch.int32)
        bits = (bits & ~0x7F80) | (exp << 7)
    bits[1, ::3] = bits[0, ::3]  # a third unchanged
    bits[1, 1::7] = bits[0, 1::7] ^ 1  # one-ulp changes
    pats = bits.to(torch.int16)
    b, t = pats[0].view(torch.bfloat16), pats[1].view(torch.bfloat16)
    general = scan._general
    calls: list[int] = []

    def counted(*args: object) -> None:
        calls.append(1)
        general(*args)  # type: ignore[arg-type]

    refs = {atol: _reference(b, t, atol) for atol in (0.0, 1e-5, 0.5)}  # general path
    monkeypatch.setattr(scan, "_general", counted)
    for atol, ref in refs.items():
        got = scan_pair(b, t, atol)
        for name in ("unchanged_bf16", "le_atol", "lt_atol", "exact_equal", "nonfinite"):
            assert getattr(got, name) == getattr(ref, name), name
        assert got.max_abs_delta == ref.max_abs_delta
        for name in ("delta_sq", "base_sq"):
            assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-6)
    # finite patterns never leave the fast path; NaN/Inf put every block on the general one
    assert len(calls) == (0 if finite else 3 * 3)


def test_small_comparisons_keep_the_torch_kernel(
    kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled kernel runs only inside comparisons that read at least
    JIT_MIN_RUN_BYTES (loading numba costs more than it saves on a small model)."""
    if kernel != "jit":
        pytest.skip("about the compiled kernel")
    from opdgeo import scan_jit

    calls: list[int] = []
    real = scan_jit.scan_span

    def counted(*args: object) -> object:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(scan_jit, "scan_span", counted)
    b, t = _bf16_pair(2 * BLOCK, seed=31)
    with scan.jit_for(scan.JIT_MIN_RUN_BYTES - 1):
        small = scan_pair(b, t, 1e-5)
    assert calls == []
    with scan.jit_for(scan.JIT_MIN_RUN_BYTES):
        large = scan_pair(b, t, 1e-5)
    assert calls == [1]
    _assert_same(small, large, b, t)


def test_a_failing_compiled_kernel_falls_back_to_torch(
    kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numba that imports but cannot compile or load its kernel: one warning, then the torch
    kernel gives the numbers (never a raw exception)."""
    if kernel != "jit":
        pytest.skip("about the compiled kernel")
    from opdgeo import scan_jit
    from opdgeo.errors import OpdgeoWarning

    def broken(*args: object) -> object:
        raise RuntimeError("LLVM ERROR: cannot select")

    monkeypatch.setattr(scan_jit, "scan_span", broken)
    monkeypatch.setattr(scan, "_JIT", [scan_jit])
    b, t = _bf16_pair(2 * BLOCK + 5, seed=37)
    with pytest.warns(OpdgeoWarning, match="numba kernel failed"):
        got = scan_pair(b, t, 1e-5)
    _assert_same(got, _reference(b, t, 1e-5), b, t)
    assert scan._JIT == [None]  # not tried again in this process
