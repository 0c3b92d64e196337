"""The scan tier (element-wise metrics only, no linear algebra) and per-size thread counts."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opdgeo import engine
from opdgeo.cli import app
from opdgeo.config import Settings
from opdgeo.io import open_checkpoint
from opdgeo.pairing import plan_pairs
from opdgeo.threads import pair_flops, threads_wanted
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()

ELEMENTWISE = ["sparsity_bf16", "unchanged_bf16", "sparsity_atol", "unchanged_atol",
               "sparsity_atol_strict", "sparsity_exact", "delta_fro", "base_fro", "rel_norm",
               "max_abs_delta", "n_nonfinite"]  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scan-tier")
    base = write_checkpoint(root / "base", tiny_model(layers=1))
    return base, write_checkpoint(root / "tuned", perturb(tiny_model(layers=1), 0.01))


def _run(pair: tuple[Path, Path], tmp_path: Path, *extra: str) -> tuple[pd.Series, pd.DataFrame]:
    per = tmp_path / "per.csv"
    args = ["compare", str(pair[0]), str(pair[1]), "-f", "csv", "-q", "--no-cache"]
    result = runner.invoke(app, [*args, "--per-tensor", str(per), *extra])
    assert result.exit_code == 0, result.stderr or result.exception
    return pd.read_csv(io.StringIO(result.stdout)).iloc[0], pd.read_csv(per)


def test_scan_tier_is_the_elementwise_part_of_standard(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    scan_sum, scan = _run(pair, tmp_path, "--tier", "scan")
    std_sum, std = _run(pair, tmp_path)
    pd.testing.assert_frame_equal(scan[ELEMENTWISE], std[ELEMENTWISE], check_exact=True)
    numeric = [c for c in scan.columns if c not in ELEMENTWISE and c != "layer"]
    numeric = [c for c in numeric if pd.api.types.is_float_dtype(std[c])]
    spectral = std["spectral_skipped"].isna()
    assert spectral.sum() == 7  # the matrices: every spectral column of standard is filled ...
    for col in ("stable_rank", "delta_sigma1", "nss", "angle_left_mean_deg", "lowmag_overlap"):
        assert col in numeric and std.loc[spectral, col].notna().all(), col
        assert scan[col].isna().all(), col  # ... and empty in the scan tier
    # no numerical method ran (the exact-only intruder metric may name why it is empty)
    methods = set(scan["method"].fillna("elementwise"))
    assert methods <= {"elementwise", "intruder_dims=no-full-W0-basis"}, methods
    for col in ("sparsity_bf16", "sparsity_atol", "rel_norm", "n_tensors", "n_params"):
        assert scan_sum[col] == std_sum[col], col
    assert pd.isna(scan_sum["stable_rank"]) and pd.notna(std_sum["stable_rank"])


def test_scan_tier_in_settings_and_config() -> None:
    assert Settings(tier="scan").tier == "scan"
    result = runner.invoke(app, ["compare", "a", "b", "--tier", "bogus"])
    assert result.exit_code == 2


def test_pair_flops_by_size_and_tier() -> None:
    # standard / exact: two float64 Grams of the smaller side, 4·min²·max
    assert pair_flops((1536, 8960), "exact", True) == pytest.approx(4 * 1536**2 * 8960)
    assert pair_flops((8960, 1536), "standard", True) == pytest.approx(4 * 1536**2 * 8960)
    # fast: one GEMM of the 16-column block Krylov; scan, vectors, embeddings: no linear algebra
    assert pair_flops((1536, 8960), "fast", True) == pytest.approx(32 * 1536 * 8960)
    assert pair_flops((1536, 8960), "scan", True) == 0.0
    assert pair_flops((151936, 896), "standard", False) == 0.0
    assert pair_flops((896,), "standard", True) == 0.0
    assert threads_wanted(pair_flops((896, 896), "standard", True), 2) == 1  # 2.9 GFlop
    assert threads_wanted(pair_flops((896, 4864), "standard", True), 2) == 2  # 15.6 GFlop
    assert threads_wanted(pair_flops((1536, 8960), "fast", True), 2) == 1  # 0.44 GFlop


def test_scan_workers_follow_the_configured_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import opdgeo.threads as threads_mod
    from opdgeo.scan import default_workers

    monkeypatch.setattr(threads_mod, "_configured", 3)
    with threads_mod.threads_for(0.0):  # a pair's linear algebra on one thread ...
        assert torch.get_num_threads() == 1
        assert default_workers() == 3  # ... its element-wise pass still on every worker


def test_small_pairs_run_on_one_thread(pair: tuple[Path, Path]) -> None:
    seen: list[int] = []

    def observe(run: int, p: Any, tp: Any) -> None:
        seen.append(torch.get_num_threads())

    base, tuned = open_checkpoint(str(pair[0])), open_checkpoint(str(pair[1]))
    settings = Settings(cache=False, threads=2)
    plan = plan_pairs(base, tuned, settings)
    try:
        records = list(engine.compare_many(base, [tuned], [plan], settings, observe))
    finally:
        base.close()
        tuned.close()
    assert len(records) == len(seen) > 0
    assert set(seen) == {1}  # every tensor of the tiny model is far below the cut
    assert torch.get_num_threads() == 2  # restored after each pair
