"""Batch: discovery, study files, base reuse (decompositions counted), resume."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import opdgeo.pair
from opdgeo.cli import app
from opdgeo.study import discover, parse_step
from opdgeo.synthetic import write_family
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()
NUMERIC = ["sparsity_bf16", "sparsity_atol", "rel_norm", "principal_angle_deg", "nss",
           "principal_energy", "principal_overlap", "lowmag_overlap", "stable_rank"]  # fmt: skip


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fam")
    paths = write_family(root / "all", seed=2)
    return paths


def test_parse_step() -> None:
    assert parse_step("checkpoint-500") == 500
    assert parse_step("global_step1200") == 1200
    assert parse_step("iter_0005375") == 5375
    assert parse_step("final") is None


def test_discover_files_dirs_and_step_subdirs(tmp_path: Path) -> None:
    model = tiny_model()
    write_checkpoint(tmp_path / "runs" / "zeta", model)
    write_checkpoint(tmp_path / "runs" / "alpha", model, shards=2)
    for step in (1000, 200, 30):
        write_checkpoint(tmp_path / "runs" / "rl" / f"checkpoint-{step}", model)
    (tmp_path / "runs" / "single.safetensors").write_bytes(
        (tmp_path / "runs" / "zeta" / "model.safetensors").read_bytes()
    )
    (tmp_path / "runs" / "notes").mkdir()
    labels = [r.label for r in discover(tmp_path / "runs")]
    # top-level checkpoints first, then each run folder's checkpoints together, by step
    assert labels == ["alpha", "single", "zeta", "rl/checkpoint-30", "rl/checkpoint-200",
                      "rl/checkpoint-1000"]  # fmt: skip


def test_batch_equals_individual_compares_and_decomposes_base_once(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    real = opdgeo.pair.spectrum

    def counting(w, k, method="gram"):  # type: ignore[no-untyped-def]
        calls.append(tuple(w.shape))
        return real(w, k, method)

    runs_dir = family["base"].parent
    single = runner.invoke(
        app, ["compare", str(family["base"]), str(family["sft"]), "-f", "csv", "--no-cache"]
    )
    monkeypatch.setattr(opdgeo.pair, "spectrum", counting)
    result = runner.invoke(
        app, ["batch", str(family["base"]), str(runs_dir), "-f", "csv", "-q", "--no-cache"]
    )
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout)).set_index("label")
    assert list(frame.index) == ["opd", "rlvr", "sft"]  # the base, found among them, is skipped
    one = pd.read_csv(io.StringIO(single.stdout)).iloc[0]
    for column in NUMERIC:
        assert frame.loc["sft", column] == pytest.approx(one[column], rel=1e-12), column
    # 28 spectral matrices: W0 decomposed once each, W1 once per run that changed it
    n_matrices = int(frame.loc["sft", "n_matrices"])
    base_calls = n_matrices
    tuned_calls = 3 * n_matrices  # sft, opd, rlvr
    assert len(calls) == base_calls + tuned_calls
    assert {"order_mean", "order_concordance"} <= set(frame.columns)


def test_study_file_with_origins(tmp_path: Path) -> None:
    base = write_checkpoint(tmp_path / "base", tiny_model())
    sft_tensors = perturb(tiny_model(), scale=0.2, seed=3)
    sft = write_checkpoint(tmp_path / "sft", sft_tensors)
    rl = write_checkpoint(tmp_path / "rl", perturb(sft_tensors, scale=0.002, seed=4))
    study = tmp_path / "study.toml"
    study.write_text(
        f'[study]\nbase = "{base}"\n'
        f'[[study.runs]]\nlabel = "sft"\npath = "{sft}"\n'
        f'[[study.runs]]\nlabel = "rl"\npath = "{rl}"\norigin = "{sft}"\n'
    )
    result = runner.invoke(app, ["batch", "--study", str(study), "-f", "csv", "-q"])
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout)).set_index("label")
    assert frame.loc["sft", "base"] == str(base)
    assert frame.loc["rl", "base"] == str(sft)
    assert frame.loc["rl", "rel_norm"] < frame.loc["sft", "rel_norm"]


def test_resume_skips_finished_work(
    family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opdgeo import engine, study

    runs_dir = family["base"].parent
    out = tmp_path / "batch.csv"
    full = runner.invoke(app, ["batch", str(family["base"]), str(runs_dir), "-f", "csv", "-q"])
    real_append = study.StateFile.append
    count = {"n": 0}

    def interrupting(self, *args):  # type: ignore[no-untyped-def]
        count["n"] += 1
        if count["n"] == 50:
            raise KeyboardInterrupt
        real_append(self, *args)

    monkeypatch.setattr(study.StateFile, "append", interrupting)
    cut = runner.invoke(app, ["batch", str(family["base"]), str(runs_dir), "-o", str(out), "-q"])
    assert cut.exit_code == 130
    assert not out.exists()
    state = out.with_name("batch.csv.state.jsonl")
    assert len(state.read_text().splitlines()) == 1 + 49  # the header, then the records
    monkeypatch.setattr(study.StateFile, "append", real_append)
    analysed = {"n": 0}
    real_analyze = engine.analyze_pair

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        analysed["n"] += 1
        return real_analyze(*args, **kwargs)

    monkeypatch.setattr(engine, "analyze_pair", counting)
    resumed = runner.invoke(
        app, ["batch", str(family["base"]), str(runs_dir), "-o", str(out), "--resume", "-q"]
    )
    assert resumed.exit_code == 0, resumed.stderr
    assert analysed["n"] == 3 * 39 - 49  # sft, opd, rlvr (the base among them is skipped)
    assert not state.exists()
    got = pd.read_csv(out).set_index("label")
    want = pd.read_csv(io.StringIO(full.stdout)).set_index("label")
    for column in NUMERIC + ["regime", "n_tensors"]:
        pd.testing.assert_series_equal(got[column], want[column], check_exact=False, rtol=1e-12)


def test_batch_usage_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["batch"])
    assert result.exit_code == 2 and "give BASE and DIRECTORY" in result.stderr
    result = runner.invoke(app, ["batch", "--study", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "study file not found" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    base = write_checkpoint(tmp_path / "base", tiny_model())
    result = runner.invoke(app, ["batch", str(base), str(empty)])
    assert result.exit_code == 1 and "no checkpoints found" in result.stderr
    result = runner.invoke(app, ["batch", str(base), str(empty), "--resume"])
    assert result.exit_code in (1, 2)


def test_compare_of_several_local_runs_decomposes_base_once(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []
    real = opdgeo.pair.spectrum

    def counting(w, k, method="gram"):  # type: ignore[no-untyped-def]
        calls.append(tuple(w.shape))
        return real(w, k, method)

    monkeypatch.setattr(opdgeo.pair, "spectrum", counting)
    args = [str(family[k]) for k in ("base", "sft", "opd", "rlvr")]
    result = runner.invoke(app, ["compare", *args, "-f", "csv", "-q", "--no-cache"])
    assert result.exit_code == 0, result.stderr
    n_matrices = int(pd.read_csv(io.StringIO(result.stdout))["n_matrices"].iloc[0])
    assert len(calls) == n_matrices + 3 * n_matrices
