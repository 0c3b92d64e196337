"""Which runs are compared, in which order (issue 16): batch skips a base found among the runs
and keeps each run's checkpoints together; trajectory follows parsed steps; comparing a
checkpoint with itself warns; one string is one tuned checkpoint in the Python API."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdgeo.api import compare_checkpoints
from opdgeo.cli import app
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()
FAST = ("--tier", "fast", "--no-cache", "-f", "csv")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ux-runs")
    base = tiny_model(layers=1)
    write_checkpoint(root / "runs" / "base", base)
    for run, step, seed in (("sft", 100, 1), ("sft", 20, 2), ("opd", 50, 3)):
        write_checkpoint(root / "runs" / run / f"checkpoint-{step}", perturb(base, 0.01, seed))
    for step, seed in ((50, 4), (100, 5), (200, 6)):
        write_checkpoint(root / f"ckpt-{step}", perturb(base, 0.002 * step / 50, seed))
    return root


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_batch_skips_the_base_and_keeps_runs_together(root: Path) -> None:
    base = root / "runs" / "base"
    code, out, err = invoke("batch", str(base), str(root / "runs"), *FAST)
    assert code == 0, err
    labels = list(pd.read_csv(io.StringIO(out))["label"])
    assert labels == ["opd/checkpoint-50", "sft/checkpoint-20", "sft/checkpoint-100"]
    assert f"warning: batch: skipping base: it is the base {base} itself" in err.splitlines()
    assert f"batch: 3 run(s) against {base}" in err.splitlines()  # counted after the skip
    assert err.count("skipping base") == 1
    code, quiet_out, err = invoke("batch", str(base), str(root / "runs"), *FAST, "-q")
    assert (code, quiet_out, err) == (0, out, "")  # -q hides the skip too


def test_trajectory_follows_parsed_steps(root: Path) -> None:
    ckpts = [str(root / f"ckpt-{s}") for s in (200, 50, 100)]
    code, out, err = invoke("trajectory", str(root / "runs" / "base"), *ckpts, *FAST)
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame["step"]) == [50, 100, 200]
    assert list(frame["run"]) == [str(root / f"ckpt-{s}") for s in (50, 100, 200)]
    assert "ordered by their parsed step, not the order given" in err


def test_comparing_a_checkpoint_with_itself_warns(root: Path, tmp_path: Path) -> None:
    base = root / "runs" / "base"
    code, _, err = invoke("compare", str(base), str(base / "model.safetensors"), *FAST)
    assert code == 0
    assert "is the base checkpoint itself (same path)" in err
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    code, _, err = invoke("compare", str(base), str(copy), *FAST)
    assert code == 0
    assert "has the same weights as the base" in err
    code, _, err = invoke("compare", str(base), str(root / "ckpt-50"), *FAST)
    assert code == 0 and "warning" not in err


def test_one_string_is_one_tuned_checkpoint(root: Path) -> None:
    runs = compare_checkpoints(str(root / "runs" / "base"), str(root / "ckpt-50"))
    assert [r.summary["run"] for r in runs] == [str(root / "ckpt-50")]
