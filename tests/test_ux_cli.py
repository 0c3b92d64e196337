"""Command-line conventions (issue 16): -V, --debug after the command, exit codes and flags in
--help at 80 columns, shell completion, ``config show``, ``--label NAME=PATH``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.config import Config, load_config
from opdgeo.console import MODE
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()
COMMANDS = ("compare", "batch", "trajectory", "inspect", "lineage", "demo", "cache", "config show")


def help_text(*args: str) -> str:
    """``opdgeo ARGS --help`` in a real process at 80 columns."""
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-m", "opdgeo", *args, "--help"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_short_version_flag() -> None:
    for flag in ("-V", "--version"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0 and result.stdout.startswith("opdgeo ")


def test_help_lists_exit_codes_and_completion() -> None:
    text = " ".join(help_text().split())
    assert "Exit codes: 0 success" in text and "130 interrupted" in text
    assert "--install-completion" in text


@pytest.mark.parametrize("command", [(), *(tuple(c.split()) for c in COMMANDS)])
def test_help_fits_80_columns_and_shows_flags_as_flags(command: tuple[str, ...]) -> None:
    text = help_text(*command)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "<bool>" not in text
    if command:
        assert "--debug" in text


def test_debug_is_accepted_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MODE, "debug", False)
    result = runner.invoke(app, ["cache", "--cache-dir", "/nonexistent/opdgeo", "--debug"])
    assert "No such option" not in result.stderr
    assert MODE.debug


def test_config_show_prints_the_defaults_as_toml(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.stderr
    path = tmp_path / "c.toml"
    path.write_text(result.stdout)
    loaded, default = load_config(path), Config()
    assert (loaded.settings, loaded.thresholds) == (default.settings, default.thresholds)
    assert dict(loaded.calibration.rules) == dict(default.calibration.rules)
    assert "[thresholds]" in result.stdout and "sparsity_rlvr_above = 0.65" in result.stdout
    custom = tmp_path / "custom.toml"
    custom.write_text("[settings]\nalpha = 0.2\n")
    result = runner.invoke(app, ["config", "show", "-c", str(custom)])
    assert "alpha = 0.2\n" in result.stdout


def test_label_names_a_run(tmp_path: Path) -> None:
    base = write_checkpoint(tmp_path / "base", tiny_model(layers=1))
    tuned = write_checkpoint(tmp_path / "t", perturb(tiny_model(layers=1), 0.01))
    args = ["compare", str(base), str(tuned), "--tier", "fast", "--no-cache", "-f", "csv"]
    result = runner.invoke(app, [*args, "--label", f"my-sft={tuned}"])
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame["label"]) == ["my-sft"] and list(frame["run"]) == [str(tuned)]
    result = runner.invoke(app, [*args, "--label", f"x={tmp_path / 'other'}"])
    assert result.exit_code == 2 and "is not one of the TUNED checkpoints" in result.stderr
