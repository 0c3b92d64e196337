"""`opdgeo lineage` on the command line: formats, matrix, heatmap, folder mode, errors."""

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
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lineage-cli")
    base = tiny_model(seed=0, layers=2, hidden=64)
    write_checkpoint(root / "runs" / "a", base)
    write_checkpoint(root / "runs" / "b", perturb(base, 0.05))
    write_checkpoint(root / "runs" / "c", tiny_model(seed=9, layers=2, hidden=64))
    return root


def test_csv_json_matrix_and_plot(family: Path, tmp_path: Path) -> None:
    runs = [str(family / "runs" / x) for x in "abc"]
    result = runner.invoke(app, ["lineage", *runs, "-f", "csv", "-q",
                                 "--matrix", str(tmp_path / "m.csv")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    verdicts = {(r.a[-1], r.b[-1]): r.verdict for r in frame.itertuples()}
    assert verdicts[("a", "b")] == "derived"
    assert verdicts[("a", "c")] == verdicts[("b", "c")] == "independent"
    matrix = pd.read_csv(tmp_path / "m.csv", index_col=0)
    assert matrix.shape == (3, 3)
    doc = json.loads(runner.invoke(app, ["lineage", *runs[:2], "-f", "json", "-q"]).stdout)
    assert doc["pairs"][0]["verdict"] == "derived" and doc["command"].startswith("opdgeo")
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, ["lineage", str(family / "runs"), "-q", "-f", "csv",
                                 "--plot", str(tmp_path / "figs")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 3  # the folder's three runs, all pairs
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["lineage.png", "lineage.svg"]


def test_errors_are_one_line(family: Path, tmp_path: Path) -> None:
    a = str(family / "runs" / "a")
    result = runner.invoke(app, ["lineage", a])
    assert result.exit_code == 2 and result.stderr.startswith("error:")
    other = write_checkpoint(tmp_path / "wide", tiny_model(hidden=32))
    result = runner.invoke(app, ["lineage", a, str(other), "-q"])
    assert result.exit_code == 3 and len(result.stderr.strip().splitlines()) == 1
    result = runner.invoke(app, ["lineage", a, str(family / "runs" / "b"), "-o",
                                 str(family / "runs" / "a" / "x.csv")])  # fmt: skip
    assert result.exit_code == 1 and "refusing to write" in result.stderr


def test_table_format_shows_verdicts_and_evidence(family: Path) -> None:
    runs = [str(family / "runs" / x) for x in "abc"]
    result = runner.invoke(app, ["lineage", *runs, "-f", "table", "-q"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "opdgeo lineage" in out and "blocks" in out and "read" in out
    assert out.count(": derived") == 1 and out.count(": independent") == 2
    assert "combined p=" in out and "decided by:" in out


def test_matrix_is_symmetric_with_an_infinite_diagonal(family: Path, tmp_path: Path) -> None:
    runs = [str(family / "runs" / x) for x in "abc"]
    result = runner.invoke(app, ["lineage", *runs, "-q", "-f", "csv",
                                 "--matrix", str(tmp_path / "m.csv")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    m = pd.read_csv(tmp_path / "m.csv", index_col=0)
    assert list(m.index) == list(m.columns) == runs
    values = m.to_numpy()
    assert (values == values.T).all() and (values.diagonal() == float("inf")).all()
    for row in frame.itertuples():
        assert m.loc[row.a, row.b] == pytest.approx(min(300.0, -row.log10_p))


def test_nothing_comparable_is_one_line_for_any_architecture(tmp_path: Path) -> None:
    import torch

    x = write_checkpoint(tmp_path / "x", {"x.weight": torch.randn(8, 8)})
    y = write_checkpoint(tmp_path / "y", {"y.weight": torch.randn(8, 5)})
    result = runner.invoke(app, ["lineage", str(x), str(y), "-q"])
    assert result.exit_code == 3
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "nothing comparable" in result.stderr
    result = runner.invoke(app, ["lineage", str(x), str(tmp_path / "missing"), "-q"])
    assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1
