"""Command-line conventions (issue 16): -V, --debug after the command, exit codes and flags in
--help at 80 columns, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.console import MODE

runner = CliRunner()
COMMANDS = ("compare", "batch", "trajectory", "inspect", "lineage", "demo", "cache")


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


@pytest.mark.parametrize("command", [(), *((c,) for c in COMMANDS)])
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
