"""Tiers: what each computes, the ``method`` column, how a tier is chosen, and how close the
fast and standard tiers come to the exact one."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.config import Settings, load_config
from opdgeo.errors import ConfigError
from opdgeo.metrics import METRICS
from opdgeo.records import method_text
from opdgeo.synthetic import write_family
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()

ELEMENTWISE = ["sparsity_bf16", "unchanged_bf16", "sparsity_atol", "unchanged_atol",
               "sparsity_atol_strict", "sparsity_exact", "delta_fro", "base_fro", "rel_norm",
               "max_abs_delta", "n_nonfinite"]  # fmt: skip
FULL_ONLY = ["angle_left_mean_deg", "angle_left_max_deg", "angle_right_mean_deg",
             "angle_right_max_deg", "angle_k", "nss", "spectral_drift_ratio", "principal_energy",
             "principal_energy_left", "principal_energy_right", "principal_energy_baseline",
             "energy_k", "principal_overlap", "lowmag_overlap", "principal_notlow_overlap",
             "overlap_baseline", "principal_notlow_baseline", "mask_rank"]  # fmt: skip
SUMMARY_FULL_ONLY = ["principal_angle_deg", "nss", "principal_energy", "principal_overlap",
                     "lowmag_overlap", "lowmag_enrichment"]  # fmt: skip
NO_BASIS = "intruder_dims=no-full-W0-basis;"  # standard and fast tiers: no full basis of W0
STANDARD = (NO_BASIS + "mask_overlap=gram-eigh-f64;nss=gram-eigh-f64;"
            "principal_angles=gram-eigh-f64;principal_energy=gram-eigh-f64;"
            "stable_rank=krylov-f32")  # fmt: skip
EXACT = (
    "intruder_dims=svd-f64;mask_overlap=svd-f64;nss=svd-f64;principal_angles=svd-f64;"
    "principal_energy=svd-f64;"
    "stable_rank=svd-f64"
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiers")
    base = write_checkpoint(root / "base", tiny_model(layers=1))
    return base, write_checkpoint(root / "tuned", perturb(tiny_model(layers=1), 0.01))


def run(base: Path, tuned: Path, tmp_path: Path, *extra: str) -> tuple[pd.Series, pd.DataFrame]:
    """(summary row, per-tensor frame) of one --no-cache comparison."""
    per = tmp_path / "per.csv"
    args = ["compare", str(base), str(tuned), "-f", "csv", "-q", "--no-cache"]
    result = runner.invoke(app, [*args, "--per-tensor", str(per), *extra])
    assert result.exit_code == 0, result.stderr or result.exception
    return pd.read_csv(io.StringIO(result.stdout)).iloc[0], pd.read_csv(per)


def texts(base: Path, tuned: Path, tmp_path: Path, *extra: str) -> tuple[str, str]:
    per = tmp_path / "per.csv"
    args = ["compare", str(base), str(tuned), "-f", "csv", "-q", "--no-cache"]
    result = runner.invoke(app, [*args, "--per-tensor", str(per), *extra])
    assert result.exit_code == 0, result.stderr or result.exception
    return result.stdout, per.read_text()


def matrices(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["spectral_skipped"].isna()]


def test_fast_tier_columns(pair: tuple[Path, Path], tmp_path: Path) -> None:
    fast_sum, fast = run(*pair, tmp_path, "--tier", "fast")
    std_sum, std = run(*pair, tmp_path)
    assert len(matrices(fast)) == len(matrices(std)) == 7
    assert fast[FULL_ONLY].isna().all().all()
    assert std.loc[std["spectral_skipped"].isna(), FULL_ONLY].notna().all().all()
    pd.testing.assert_frame_equal(fast[ELEMENTWISE], std[ELEMENTWISE], check_exact=True)
    for col in ("stable_rank", "delta_sigma1"):
        assert matrices(fast)[col].notna().all()
        torch.testing.assert_close(
            torch.tensor(matrices(fast)[col].to_numpy()),
            torch.tensor(matrices(std)[col].to_numpy()),
            rtol=1e-3,
            atol=0,
        )
    assert fast_sum[SUMMARY_FULL_ONLY].isna().all()
    for col in ("sparsity_bf16", "sparsity_atol", "rel_norm", "n_tensors", "n_params"):
        assert fast_sum[col] == std_sum[col], col
    assert fast_sum["n_matrices"] == std_sum["n_matrices"]


def _updated(updates: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 base matrices of the given shapes plus the given updates (exact in float32)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*u.shape, generator=gen) * 0.02 for k, u in updates.items()}


SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": (24, 24),
    "model.layers.0.self_attn.k_proj.weight": (12, 24),
    "model.layers.0.mlp.gate_proj.weight": (48, 24),
    "model.layers.0.mlp.down_proj.weight": (40, 100),
    "model.layers.1.mlp.up_proj.weight": (70, 33),
}


def _write_update(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    gen = torch.Generator().manual_seed(7)
    updates = {}
    for name, (m, n) in SHAPES.items():
        if kind == "rank-one":
            updates[name] = 1e-3 * torch.outer(torch.randn(m, generator=gen),
                                               torch.randn(n, generator=gen))  # fmt: skip
        else:
            updates[name] = 1e-3 * torch.randn(m, n, generator=gen)
    base = _updated(updates)
    tuned = {k: base[k] + updates[k] for k in base}
    return (write_checkpoint(tmp_path / f"{kind}-base", base),
            write_checkpoint(tmp_path / f"{kind}-tuned", tuned))  # fmt: skip


@pytest.mark.parametrize(("kind", "rel"), [("rank-one", 1e-6), ("flat", 1e-3)])
def test_fast_stable_rank_close_to_standard_and_exact(
    tmp_path: Path, kind: str, rel: float
) -> None:
    paths = _write_update(tmp_path, kind)
    _, fast = run(*paths, tmp_path, "--tier", "fast")
    _, std = run(*paths, tmp_path)
    _, exact = run(*paths, tmp_path, "--exact")
    assert set(fast["method"]) == {NO_BASIS + "stable_rank=krylov-f32"}
    for col in ("stable_rank", "delta_sigma1"):
        for name, f, s, e in zip(fast["tensor"], fast[col], std[col], exact[col], strict=True):
            assert f == pytest.approx(e, rel=rel), (col, name)
            assert s == pytest.approx(e, rel=1e-5), (col, name)
            if col == "delta_sigma1":
                assert f <= e * (1 + 1e-6), name  # Krylov: a lower bound of sigma_1
    if kind == "rank-one":
        assert fast["stable_rank"].to_numpy() == pytest.approx(1.0, rel=1e-5)


def test_method_column_per_tier(pair: tuple[Path, Path], tmp_path: Path) -> None:
    want = {"fast": NO_BASIS + "stable_rank=krylov-f32", "standard": STANDARD, "exact": EXACT}
    for tier, text in want.items():
        summary, per = run(*pair, tmp_path, "--tier", tier)
        spectral = per["spectral_skipped"].isna()
        assert set(per.loc[spectral, "method"]) == {text}, tier
        assert set(per.loc[~spectral, "method"]) == {"elementwise"}, tier  # norms, embeddings
        assert summary["method"] == text


def test_float64_tensors_report_f64_methods(tmp_path: Path) -> None:
    base = {k: v.double() for k, v in tiny_model(layers=1).items()}
    tuned = {k: v.double() for k, v in perturb(tiny_model(layers=1), 0.01).items()}
    paths = write_checkpoint(tmp_path / "b64", base), write_checkpoint(tmp_path / "t64", tuned)
    _, fast = run(*paths, tmp_path, "--tier", "fast")
    assert set(matrices(fast)["method"]) == {NO_BASIS + "stable_rank=krylov-f64"}
    summary, std = run(*paths, tmp_path)
    assert set(matrices(std)["method"]) == {STANDARD.replace("krylov-f32", "krylov-f64")}


def test_summary_method_merges_the_tensors(tmp_path: Path) -> None:
    base = tiny_model(layers=1)
    tuned = perturb(base, 0.01)
    same = "model.layers.0.self_attn.v_proj.weight"
    tuned[same] = base[same]  # an untouched matrix: only the masks decompose W0
    paths = write_checkpoint(tmp_path / "b", base), write_checkpoint(tmp_path / "t", tuned)
    summary, per = run(*paths, tmp_path)
    row = per.set_index("tensor").loc[same]
    assert row["method"] == NO_BASIS + "mask_overlap=gram-eigh-f64"
    merged: dict[str, set[str]] = {}
    for text in per["method"]:
        for part in text.split(";"):
            metric, _, used = part.partition("=")
            if used:
                merged.setdefault(metric, set()).update(used.split("+"))
    assert summary["method"] == method_text(merged) == STANDARD


def test_method_text_format() -> None:
    assert method_text({}) == ""
    got = method_text({"nss": {"svd-f64", "gram-eigh-f64"}, "angles": {"svd-f64"}})
    assert got == "angles=svd-f64;nss=gram-eigh-f64+svd-f64"


def test_exact_flag_equals_tier_exact_and_config(pair: tuple[Path, Path], tmp_path: Path) -> None:
    flag = texts(*pair, tmp_path, "--exact")
    assert texts(*pair, tmp_path, "--tier", "exact") == flag
    for line in ('tier = "exact"', 'spectral_method = "svd"'):
        config = tmp_path / "c.toml"
        config.write_text(f"[settings]\n{line}\n")
        assert texts(*pair, tmp_path, "--config", str(config)) == flag, line
    assert texts(*pair, tmp_path) != flag


def test_json_settings_name_the_tier(pair: tuple[Path, Path]) -> None:
    for extra, tier, method in (([], "standard", "gram"), (["--exact"], "exact", "svd"),
                                (["--tier", "fast"], "fast", "gram")):  # fmt: skip
        result = runner.invoke(app, ["compare", *map(str, pair), "-f", "json", "--no-cache",
                                     *extra])  # fmt: skip
        assert result.exit_code == 0
        settings = json.loads(result.stdout)["settings"]
        assert (settings["tier"], settings["spectral_method"]) == (tier, method)


def test_table_names_the_tier(pair: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["compare", *map(str, pair), "-f", "table", "--tier", "fast",
                                 "--no-cache"])  # fmt: skip
    assert result.exit_code == 0
    assert "tier=fast" in result.stdout


def test_settings_tier_mapping() -> None:
    assert Settings().tier == "standard" and Settings().spectral_method == "gram"
    assert Settings(tier="exact").spectral_method == "svd"
    # the method follows the tier; the legacy key is mapped by load_config (config files)
    assert dataclasses.replace(Settings(tier="exact"), tier="standard").spectral_method == "gram"
    assert Settings(tier="fast").spectral_method == "gram"
    with pytest.raises(ConfigError, match="tier must be one of scan, fast, standard, exact"):
        Settings(tier="quick")
    with pytest.raises(ConfigError):
        Settings(threads=-1)
    with pytest.raises(ConfigError):
        Settings(read_ahead=-1)


def test_explicit_tier_beats_a_legacy_config_key(tmp_path: Path) -> None:
    """An explicit ``--tier standard`` must win over ``spectral_method = "svd"`` in a config
    file, as every other command-line option wins over the file."""
    config = tmp_path / "legacy.toml"
    config.write_text('[settings]\nspectral_method = "svd"\n')
    assert load_config(config).settings.tier == "exact"
    settings = load_config(config, tier="standard").settings
    assert (settings.tier, settings.spectral_method) == ("standard", "gram")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tier", "quick"], "Invalid value"),
        (["--config", "CONFIG"], "tier must be one of scan, fast, standard, exact, got 'quick'"),
    ],
)
def test_invalid_tier_is_a_usage_error(
    pair: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[settings]\ntier = "quick"\n')
    args = [str(config) if a == "CONFIG" else a for a in args]
    result = runner.invoke(app, ["compare", *map(str, pair), *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    if message != "Invalid value":
        assert len(result.stderr.strip().splitlines()) == 1


def test_standard_and_exact_agree_on_every_metric(pair: tuple[Path, Path], tmp_path: Path) -> None:
    std_sum, std = run(*pair, tmp_path)
    ex_sum, ex = run(*pair, tmp_path, "--exact")
    exact_only = {
        c for spec in METRICS.values() if "standard" not in spec.tiers for c in spec.columns
    }
    numeric = [c for c in std.columns
               if std[c].dtype.kind in "fi" and c != "layer" and c not in exact_only]  # fmt: skip
    for col in numeric:
        rel = 1e-5 if col in ("stable_rank", "delta_sigma1") else 1e-9  # float32 Krylov on ΔW
        for name, a, b in zip(std["tensor"], std[col], ex[col], strict=True):
            if isinstance(a, float) and math.isnan(a):
                assert math.isnan(b), (col, name)
            else:
                assert a == pytest.approx(b, rel=rel, abs=1e-12), (col, name)
    for col in ("sparsity_bf16", "rel_norm", "principal_angle_deg", "nss", "principal_energy",
                "principal_overlap", "lowmag_overlap", "stable_rank"):  # fmt: skip
        assert std_sum[col] == pytest.approx(ex_sum[col], rel=1e-5), col
    assert std_sum["regime"] == ex_sum["regime"]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_family(tmp_path_factory.mktemp("tier-family"), seed=0)


def test_fast_tier_classifies_the_demo_family_by_sparsity(family: dict[str, Path]) -> None:
    args = [str(family[k]) for k in ("base", "sft", "opd", "rlvr")]
    fast = runner.invoke(app, ["compare", *args, "-f", "csv", "-q", "--tier", "fast"])
    assert fast.exit_code == 0, fast.stderr
    frame = pd.read_csv(io.StringIO(fast.stdout))
    # only sparsity_bf16 is measured: the papers' vote follows it; the verdict does not claim
    # more than one feature can say (SFT's update is 40x the rounding boundary: it abstains;
    # one feature cannot tell OPD from RLVR)
    assert frame["regime_papers"].tolist() == ["sft-like", "opd-like", "rlvr-like"]
    rl = "rl-like (opd or rlvr)"
    assert frame["regime"].tolist() == ["indeterminate", rl, rl]
    assert frame["confidence_rule"].tolist() == ["indeterminate 0/0", f"{rl} 1/1", f"{rl} 1/1"]
    for reasons in frame["reasons"]:
        assert reasons.startswith("sparsity_bf16 ")
        assert reasons.count("not measured (abstains)") == 3
    assert frame[SUMMARY_FULL_ONLY].isna().all().all()
    assert frame["stable_rank"].notna().all()
    assert (frame["method"] == NO_BASIS + "stable_rank=krylov-f32").all()
