"""Where reports go (issue 16, "Outputs"): the format follows ``-o``'s suffix, ``-`` is stdout,
a missing folder is refused before any work, and every file written is named on stderr."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdgeo.cli import app
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ux-outputs")
    return {
        "base": write_checkpoint(root / "base", tiny_model(layers=1)),
        "tuned": write_checkpoint(root / "tuned", perturb(tiny_model(layers=1), 0.01)),
    }


def compare(ckpts: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    args = ["compare", str(ckpts["base"]), str(ckpts["tuned"]), "--no-cache", *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def test_json_suffix_writes_json(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep.json"
    code, stdout, err = compare(ckpts, "-q", "-o", str(out))
    assert code == 0, err
    assert stdout == ""
    doc = json.loads(out.read_text())
    assert doc["runs"][0]["summary"]["run"] == str(ckpts["tuned"])


def test_upper_case_csv_suffix_writes_csv(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep.CSV"
    code, _, err = compare(ckpts, "-q", "-o", str(out))
    assert code == 0, err
    assert list(pd.read_csv(out)["run"]) == [str(ckpts["tuned"])]


def test_format_clashing_with_suffix_is_a_usage_error(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "rep.json"
    code, stdout, err = compare(ckpts, "-q", "--format", "csv", "-o", str(out))
    assert code == 2
    assert stdout == "" and not out.exists()
    assert err.startswith("error: --format csv contradicts -o") and len(err.splitlines()) == 1


def test_dash_means_stdout(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, err = compare(ckpts, "-q", "-o", "-")
    assert code == 0, err
    assert list(pd.read_csv(io.StringIO(stdout))["run"]) == [str(ckpts["tuned"])]
    report = tmp_path / "r.json"
    code, stdout, err = compare(ckpts, "-q", "-o", str(report), "--per-tensor", "-")
    assert code == 0, err
    tensors = pd.read_csv(io.StringIO(stdout))
    assert {"tensor", "run"} <= set(tensors.columns) and len(tensors) > 5
    assert json.loads(report.read_text())["runs"]
    assert not (tmp_path / "-").exists()


def test_two_outputs_on_stdout_are_refused(ckpts: dict[str, Path]) -> None:
    code, stdout, err = compare(ckpts, "-q", "--per-tensor", "-")
    assert code == 2 and stdout == ""
    assert "the report and --per-tensor would all go to stdout" in err


def test_missing_folder_is_refused_before_the_comparison(
    ckpts: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "missing" / "dir" / "r.csv"
    code, _, err = compare(ckpts, "-o", str(out))
    assert code == 1 and err.startswith(f"error: cannot write {out}: folder")
    assert "plan:" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_each_file_written_is_named_on_stderr(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out, per_tensor = tmp_path / "r.csv", tmp_path / "t.csv"
    code, _, err = compare(ckpts, "-o", str(out), "--per-tensor", str(per_tensor))
    assert code == 0, err
    assert f"wrote {out}" in err.splitlines() and f"wrote {per_tensor}" in err.splitlines()
    code, _, err = compare(ckpts, "-q", "-o", str(out))
    assert code == 0 and "wrote" not in err
