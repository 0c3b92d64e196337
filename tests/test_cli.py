"""The command line: data on stdout only, one-line errors with documented exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.report import CONTRACT_COLUMNS
from opdgeo.synthetic import write_family
from tests.conftest import tiny_model, write_checkpoint

runner = CliRunner()


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_family(tmp_path_factory.mktemp("family"), seed=0)


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_csv_on_stdout_parses_and_follows_the_contract(family: dict[str, Path]) -> None:
    code, out, err = run(
        "compare",
        str(family["base"]),
        str(family["sft"]),
        str(family["opd"]),
        str(family["rlvr"]),
        "--format",
        "csv",
    )
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns[: len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert list(frame["regime"]) == ["sft-like", "opd-like", "rlvr-like"]
    assert frame["sparsity_bf16"].is_monotonic_increasing
    assert (frame["schema_version"] == 1).all()
    assert "order_mean" in frame.columns
    assert "%" not in err  # no progress bar when stderr is not a terminal


def test_default_format_is_csv_when_piped(family: dict[str, Path]) -> None:
    code, out, _ = run("compare", str(family["base"]), str(family["rlvr"]), "-q")
    assert code == 0
    assert out.startswith("run,base,regime,confidence,")


def test_json_document(family: dict[str, Path]) -> None:
    code, out, err = run("compare", str(family["base"]), str(family["opd"]), "-f", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == 1
    (only,) = doc["runs"]
    assert only["verdict"]["regime"] == only["summary"]["regime"] == "opd-like"
    assert len(only["verdict"]["reasons"]) == 4
    assert {g["group"] for g in only["modules"]} >= {"q", "k", "v", "o", "gate", "up", "down"}
    assert [g["group"] for g in only["layers"]] == [0, 1, 2, 3]
    assert doc["settings"]["alpha"] == 0.3


def test_table_format(family: dict[str, Path]) -> None:
    code, out, _ = run(
        "compare", str(family["base"]), str(family["sft"]), str(family["rlvr"]), "-f", "table"
    )
    assert code == 0
    assert "sft-like" in out and "rlvr-like" in out
    assert "top-changed module types" in out
    assert "relative order" in out


def test_output_files(family: dict[str, Path], tmp_path: Path) -> None:
    out_csv, tensors, grp = tmp_path / "r.csv", tmp_path / "t.csv", tmp_path / "g.csv"
    code, out, err = run(
        "compare",
        str(family["base"]),
        str(family["sft"]),
        "-o",
        str(out_csv),
        "--per-tensor",
        str(tensors),
        "--per-group",
        str(grp),
    )
    assert code == 0, err
    assert out == ""
    assert pd.read_csv(out_csv)["regime"].tolist() == ["sft-like"]
    per = pd.read_csv(tensors)
    assert len(per) == 39 and {"tensor", "skipped", "method", "sparsity_bf16"} <= set(per.columns)
    assert set(pd.read_csv(grp)["group_by"]) == {"module", "layer"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_refuses_to_write_into_a_checkpoint(family: dict[str, Path]) -> None:
    target = family["sft"] / "report.csv"
    code, _, err = run("compare", str(family["base"]), str(family["sft"]), "-o", str(target))
    assert code == 1
    assert "refusing to write" in err
    assert not target.exists()


def test_identical_checkpoints_are_unchanged(family: dict[str, Path]) -> None:
    code, out, _ = run("compare", str(family["base"]), str(family["base"]), "-f", "csv")
    assert code == 0
    row = pd.read_csv(io.StringIO(out)).iloc[0]
    assert row["regime"] == "unchanged"
    assert (
        row["sparsity_bf16"] == 1.0 and row["rel_norm"] == 0.0 and row["principal_angle_deg"] == 0
    )


def test_independent_models_are_unrelated(tmp_path: Path) -> None:
    a = write_checkpoint(tmp_path / "a", tiny_model(seed=1))
    b = write_checkpoint(tmp_path / "b", tiny_model(seed=2))
    code, out, _ = run("compare", str(a), str(b), "-f", "csv")
    assert code == 0
    assert pd.read_csv(io.StringIO(out))["regime"].tolist() == ["unrelated"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["compare", "/nonexistent/base", "/nonexistent/tuned"], 1, "no such file or directory"),
        (["compare", "BASE", "OTHER"], 3, "share no tensor names"),
        (["compare", "BASE", "BASE", "--include", "("], 2, "invalid regular expression"),
        (["compare", "BASE", "BASE", "--include", "nomatch"], 2, "no comparable tensor left"),
        (["compare", "BASE", "BASE", "--alpha", "2"], 2, "alpha must be in (0, 1)"),
        (["compare", "BASE", "BASE", "--scope", "mlp"], 2, "Invalid value"),
        (["compare", "BASE"], 2, "Missing argument"),
        (["compare", "BASE", "BASE", "--config", "/nonexistent.toml"], 2, "config file not found"),
    ],
)
def test_errors_are_one_line_with_exit_code(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    base = write_checkpoint(tmp_path / "base", tiny_model())
    other = write_checkpoint(tmp_path / "other", {"foo.weight": torch.zeros(2, 2)})
    args = [str(base) if a == "BASE" else str(other) if a == "OTHER" else a for a in args]
    got, out, err = run(*args)
    assert got == code
    assert out == ""
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    if code != 2 or message not in ("Invalid value", "Missing argument"):
        assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_a_usage_error(family: dict[str, Path]) -> None:
    code, _, err = run("compare", str(family["base"]), str(family["rlvr"]), "--device", "cuda")
    assert code == 2
    assert "no CUDA device" in err


def test_skipped_tensors_are_listed(tmp_path: Path) -> None:
    base = tiny_model()
    tuned = dict(base)
    tuned["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 3, dtype=torch.bfloat16)
    tuned["extra.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    a, b = write_checkpoint(tmp_path / "a", base), write_checkpoint(tmp_path / "b", tuned)
    per = tmp_path / "t.csv"
    code, out, err = run("compare", str(a), str(b), "-f", "table", "--per-tensor", str(per))
    assert code == 0
    assert "2 tensor(s) not compared" in out
    assert "note:" in err
    skipped = pd.read_csv(per).dropna(subset=["skipped"]).set_index("tensor")["skipped"]
    assert skipped["model.layers.0.self_attn.q_proj.weight"].startswith("shape mismatch")
    assert skipped["extra.weight"] == "only in tuned"


def test_inspect_reads_headers(family: dict[str, Path]) -> None:
    code, out, _ = run("inspect", str(family["base"]), "-f", "csv")
    assert code == 0
    frame = pd.read_csv(io.StringIO(out))
    assert len(frame) == 39 and set(frame["dtype"]) == {"BF16"}
    code, out, _ = run("inspect", str(family["base"]), "-f", "json")
    assert json.loads(out)["n_params"] == int(frame["numel"].sum())


def test_module_entry_point_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "opdgeo", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("opdgeo ")


def test_main_maps_interrupt_to_130(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from opdgeo import cli, report

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "build_run", interrupted)
    monkeypatch.setattr(sys, "argv", ["opdgeo", "compare", str(family["base"]), str(family["sft"])])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_main_usage_error_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from opdgeo import cli

    monkeypatch.setattr(sys, "argv", ["opdgeo", "compare", "--bogus"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2


def test_demo_command(tmp_path: Path) -> None:
    code, out, err = run("demo", str(tmp_path / "d"), "-f", "csv")
    assert code == 0, err
    assert pd.read_csv(io.StringIO(out))["regime"].tolist() == ["sft-like", "opd-like", "rlvr-like"]


def test_progress_goes_to_stderr_only(family: dict[str, Path]) -> None:
    # rich treats stderr as an interactive terminal under these variables, so the bar renders.
    env = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    result = runner.invoke(app, ["compare", str(family["base"]), str(family["sft"]), "-f", "csv"],
                           env=env)  # fmt: skip
    assert result.exit_code == 0
    assert "eta" in result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert frame["regime"].tolist() == ["sft-like"]
    quiet = runner.invoke(app, ["compare", str(family["base"]), str(family["sft"]), "-q"], env=env)
    assert "eta" not in quiet.stderr
