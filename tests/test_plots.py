"""Figures: written as PNG and SVG, non-empty, labelled, deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.synthetic import write_family

pytest.importorskip("matplotlib")
runner = CliRunner()


def test_batch_plots_are_labelled_and_deterministic(tmp_path: Path) -> None:
    paths = write_family(tmp_path / "fam", seed=1)
    args = ["batch", str(paths["base"]), str(paths["base"].parent), "-q", "-f", "csv"]
    first = runner.invoke(app, [*args, "--plot", str(tmp_path / "p1")])
    second = runner.invoke(app, [*args, "--plot", str(tmp_path / "p2")])
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr
    names = sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert "regime_map.png" in names and "regime_map.svg" in names
    assert "layers_00.png" in names and len(names) == 2 + 2 * 4
    for name in names:
        one, two = (tmp_path / "p1" / name).read_bytes(), (tmp_path / "p2" / name).read_bytes()
        assert len(one) > 1000
        assert one == two, f"{name} is not deterministic"
    png = (tmp_path / "p1" / "regime_map.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    svg = (tmp_path / "p1" / "regime_map.svg").read_text()
    assert "update sparsity" in svg and "low-magnitude overlap" in svg and "OPDG" in svg
    heat = (tmp_path / "p1" / "layers_01.svg").read_text()
    assert "module type" in heat and "layer" in heat


def test_trajectory_plot(tmp_path: Path) -> None:
    paths = write_family(tmp_path / "fam", seed=1)
    result = runner.invoke(app, ["trajectory", str(paths["base"]), str(paths["rlvr"]),
                                 str(paths["opd"]), str(paths["sft"]), "-q", "-f", "csv",
                                 "--plot", str(tmp_path / "t")])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    svg = (tmp_path / "t" / "trajectory.svg").read_text()
    assert "stable rank of cumulative update" in svg and "Sim_K" in svg and "step" in svg
    assert (tmp_path / "t" / "trajectory.png").stat().st_size > 1000


def test_plot_refuses_checkpoint_dir(tmp_path: Path) -> None:
    paths = write_family(tmp_path / "fam", seed=1)
    result = runner.invoke(app, ["compare", str(paths["base"]), str(paths["sft"]), "-q",
                                 "--plot", str(paths["sft"] / "figs")])  # fmt: skip
    assert result.exit_code == 1 and "refusing to write" in result.stderr
