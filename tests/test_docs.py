"""The README documents every metric column, summary column, command and exit code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from opdgeo.aggregate import group_columns
from opdgeo.cli import app
from opdgeo.metrics import METRICS
from opdgeo.records import IDENTITY_COLUMNS
from opdgeo.report import CONTRACT_COLUMNS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
DOCUMENTED = set(re.findall(r"`([a-z0-9_]+)`", README))


@pytest.mark.parametrize("name", list(METRICS))
def test_every_metric_column_is_documented(name: str) -> None:
    spec = METRICS[name]
    assert spec.doc, f"metric {name} has no docstring"
    missing = [c for c in spec.columns if c not in DOCUMENTED]
    assert not missing, f"README lacks metric column(s) {missing}"


def test_identity_contract_and_group_columns_are_documented() -> None:
    for column in (*IDENTITY_COLUMNS, *CONTRACT_COLUMNS, *group_columns()):
        assert column in DOCUMENTED, column


def test_every_summary_column_is_documented(tmp_path: Path) -> None:
    from opdgeo.api import compare_checkpoints
    from opdgeo.report import summary_frame
    from opdgeo.synthetic import write_family

    paths = write_family(tmp_path, seed=3)
    runs = compare_checkpoints(str(paths["base"]), [str(paths["sft"]), str(paths["rlvr"])])
    missing = [c for c in summary_frame(runs).columns if c not in DOCUMENTED]
    assert not missing, f"README lacks summary column(s) {missing}"


def test_every_command_has_help_and_a_readme_mention() -> None:
    runner = CliRunner()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__  # type: ignore[union-attr]
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0
        assert len(result.stdout) > 100
        assert f"opdgeo {name}" in README, name


def test_exit_codes_are_documented() -> None:
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 130 |"):
        assert code in README


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = README[README.index("### From Python") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n", 10)]
    monkeypatch.chdir(tmp_path)
    names: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - our own documentation
    # what the example's comments promise: typed results, one per tuned checkpoint
    from opdgeo.api import Inspection
    from opdgeo.regimes import Regime
    from opdgeo.report import RunResult, TrajectoryResult

    results, many, fast = names["results"], names["many"], names["fast"]
    assert all(isinstance(r, RunResult) for r in [*results, *many, *fast])
    assert [r.verdict.regime for r in results] == [Regime.SFT, Regime.OPD, Regime.RLVR]
    assert len(fast) == 1 and [r.summary["label"] for r in many] == names["runs"]
    assert isinstance(names["traj"], TrajectoryResult) and len(names["traj"].runs) == 3
    assert isinstance(names["info"], Inspection) and names["info"].document["n_params"] > 0


def test_a_single_tuned_string_is_one_checkpoint(tmp_path: Path) -> None:
    import opdgeo
    from opdgeo.synthetic import write_family

    paths = write_family(tmp_path, seed=2)
    runs = opdgeo.compare_checkpoints(str(paths["base"]), str(paths["rlvr"]))
    assert [r.summary["run"] for r in runs] == [str(paths["rlvr"])]
    with pytest.raises(opdgeo.errors.ConfigError, match="strings"):
        opdgeo.compare(str(paths["base"]), [paths["rlvr"]])  # type: ignore[list-item]


def test_every_api_function_takes_strings_as_whole_checkpoints(tmp_path: Path) -> None:
    """A string is one checkpoint wherever a list is accepted (never its letters); batch also
    takes a list of strings; anything else is refused with a ConfigError."""
    import opdgeo
    from opdgeo.errors import ConfigError
    from opdgeo.synthetic import write_family

    paths = {k: str(v) for k, v in write_family(tmp_path, seed=2).items()}
    base, sft, rlvr = paths["base"], paths["sft"], paths["rlvr"]
    runs = opdgeo.batch(base, [sft, rlvr], cache=False)
    assert [(r.summary["run"], r.summary["label"]) for r in runs] == [(sft, sft), (rlvr, rlvr)]
    assert [r.verdict.regime for r in runs] == ["sft-like", "rlvr-like"]
    traj = opdgeo.trajectory(base, rlvr, cache=False, tier="fast")
    assert [r.summary["run"] for r in traj.runs] == [rlvr]
    assert opdgeo.inspect(base).label == base
    for bad in ([Path(sft)], (1,)):
        with pytest.raises(ConfigError):
            opdgeo.batch(base, bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            opdgeo.trajectory(base, bad)  # type: ignore[arg-type]
