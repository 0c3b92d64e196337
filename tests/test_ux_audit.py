"""Issue 16, checked class by class: every output flag (not only ``-o``) for suffixes, ``-``,
missing folders, ``wrote PATH`` and the umask; the demo's checkpoints under the umask; every
kind of input change refused by ``--resume``; a trajectory that repeats a step."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.errors import EXIT_USAGE
from tests.conftest import perturb, tiny_model, write_checkpoint
from tests.test_hostile import batch, family, interrupted, one_line_error  # noqa: F401

runner = CliRunner()
FAST = ("--tier", "fast", "--no-cache")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ux-audit")
    return {
        "base": write_checkpoint(root / "base", tiny_model(layers=1)),
        "tuned": write_checkpoint(root / "tuned", perturb(tiny_model(layers=1), 0.01)),
    }


def compare(ckpts: dict[str, Path], *extra: str) -> tuple[int, str, str]:
    args = ["compare", str(ckpts["base"]), str(ckpts["tuned"]), *FAST, *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the report's format follows every suffix ------------------------------------------------


def test_txt_suffix_writes_the_table(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep.txt"
    code, stdout, err = compare(ckpts, "-q", "-o", str(out))
    assert code == 0, err
    text = out.read_text()
    assert stdout == "" and "regime" in text and "│" in text  # a drawn table, not CSV
    assert not text.startswith("run,base,")


@pytest.mark.parametrize(("suffix", "hint"), [(".md", "Markdown"), (".html", "--html PATH")])
def test_suffix_of_a_format_opdgeo_does_not_write_is_refused(
    ckpts: dict[str, Path], tmp_path: Path, suffix: str, hint: str
) -> None:
    out = tmp_path / f"rep{suffix}"
    code, stdout, err = compare(ckpts, "-o", str(out))
    assert code == EXIT_USAGE and stdout == "" and not out.exists()
    assert err.startswith(f"error: -o {out}: opdgeo writes no") and hint in err
    assert len(err.splitlines()) == 1 and "plan:" not in err
    code, _, err = compare(ckpts, "-q", "-o", str(out), "--format", "csv")  # chosen: written
    assert code == 0, err
    assert out.read_text().startswith("run,base,")


@pytest.mark.parametrize("flag", ["--per-tensor", "--per-group"])
@pytest.mark.parametrize("suffix", [".json", ".txt", ".md"])
def test_csv_outputs_named_as_another_format_are_refused(
    ckpts: dict[str, Path], tmp_path: Path, flag: str, suffix: str
) -> None:
    path = tmp_path / f"rows{suffix}"
    code, _, err = compare(ckpts, flag, str(path))
    assert code == EXIT_USAGE and not path.exists()
    assert err == f"error: {flag} {path} writes CSV, not {suffix}: name it .csv\n"


def test_lineage_report_follows_the_suffix(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "lineage.json"
    args = ["lineage", str(ckpts["base"]), str(ckpts["tuned"]), "-q", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert isinstance(json.loads(out.read_text()), dict | list)
    clash = runner.invoke(app, [*args, "--format", "csv"])
    assert clash.exit_code == EXIT_USAGE and "contradicts" in clash.stderr


# -- "-" is stdout for every file output; figures never go there -----------------------------


def test_per_group_and_html_dash_mean_stdout(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "r.json"
    code, stdout, err = compare(ckpts, "-q", "-o", str(report), "--per-group", "-")
    assert code == 0, err
    groups = pd.read_csv(io.StringIO(stdout))
    assert {"group_by", "group"} <= set(groups.columns) and set(groups["group_by"]) >= {"module"}
    code, stdout, err = compare(ckpts, "-q", "-o", str(report), "--html", "-")
    assert code == 0, err
    assert stdout.startswith("<!DOCTYPE html>") and stdout.rstrip().endswith("</html>")
    assert not (tmp_path / "-").exists()
    code, stdout, err = compare(ckpts, "-q", "--html", "-")  # the report is on stdout already
    assert code == EXIT_USAGE and "would all go to stdout" in err


def test_plot_dash_is_refused(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, err = compare(ckpts, "-o", str(tmp_path / "r.csv"), "--plot", "-")
    assert code == EXIT_USAGE and stdout == ""
    assert err == "error: --plot takes a folder for the figure files, not - (stdout)\n"
    assert not (tmp_path / "-").exists() and not (tmp_path / "r.csv").exists()


# -- missing folders, wrote PATH, the umask: every output ------------------------------------


@pytest.mark.parametrize("flag", ["-o", "--per-tensor", "--per-group", "--html", "--plot"])
def test_every_output_in_a_missing_folder_is_refused_before_work(
    ckpts: dict[str, Path], tmp_path: Path, flag: str
) -> None:
    path = tmp_path / "missing" / "dir" / ("figs" if flag == "--plot" else "out.csv")
    if flag == "--html":
        path = path.with_suffix(".html")
    code, _, err = compare(ckpts, flag, str(path))
    assert code == 1, err
    assert err.startswith("error: cannot ") and "does not exist" in err, err
    assert "plan:" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_state_file_in_a_missing_folder_is_refused(family: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    state = tmp_path / "missing" / "s.jsonl"
    result = batch(family, "--state", str(state))
    assert result.exit_code == 1 and "does not exist" in result.stderr, result.stderr
    assert not (tmp_path / "missing").exists() and not family["out"].exists()


def test_every_file_written_is_named_and_follows_the_umask(
    ckpts: dict[str, Path], tmp_path: Path, umask_027: None
) -> None:
    files = {
        "-o": tmp_path / "r.csv",
        "--per-tensor": tmp_path / "t.csv",
        "--per-group": tmp_path / "g.csv",
        "--html": tmp_path / "r.html",
    }
    figs = tmp_path / "figs"
    args = [a for flag, path in files.items() for a in (flag, str(path))]
    code, _, err = compare(ckpts, *args, "--plot", str(figs))
    assert code == 0, err
    lines = err.splitlines()
    for path in files.values():
        assert f"wrote {path}" in lines, err
        assert mode(path) == 0o640, (path, oct(mode(path)))
    assert any(line.startswith("wrote ") and "figure files to" in line for line in lines), err
    written = sorted(figs.iterdir())
    assert {p.suffix for p in written} == {".png", ".svg"}
    assert mode(figs) == 0o750 and all(mode(p) == 0o640 for p in written)


def test_the_demo_and_trajectory_checkpoints_follow_the_umask(
    tmp_path: Path, umask_027: None
) -> None:
    """safetensors' save_file leaves 0600 whatever the umask; opdgeo's own checkpoints do not."""
    from opdgeo.synthetic import write_family, write_trajectory

    folders = [
        *write_family(tmp_path / "demo").values(),
        *write_trajectory(tmp_path / "t", steps=1),
    ]
    files = [f for folder in folders for f in folder.iterdir()]
    assert {f.name for f in files} == {"model.safetensors", "config.json"}
    assert all(mode(f) == 0o640 for f in files), [(f, oct(mode(f))) for f in files]
    assert all(mode(folder) == 0o750 for folder in folders)


# -- --resume refuses every kind of changed input --------------------------------------------


def test_resume_refuses_a_changed_base_an_added_run_and_a_removed_run(
    family: dict[str, Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cut = interrupted(family, monkeypatch, after=3)
    assert cut.exit_code == 130, cut.stderr
    kept = family["state"].read_bytes()
    # the base rewritten since (same bytes, new modification time)
    weights = family["base"] / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    one_line_error(batch(family, "--resume"), EXIT_USAGE, f"input {family['base']}", "changed")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    # a run added to the folder
    extra = family["runs"] / "c"
    shutil.copytree(family["a"], extra)
    one_line_error(batch(family, "--resume"), EXIT_USAGE, f"input {extra}", "was not part")
    shutil.rmtree(extra)
    # a run gone from the folder
    moved = tmp_path / "b-elsewhere"
    shutil.move(family["b"], moved)
    one_line_error(batch(family, "--resume"), EXIT_USAGE, f"input {family['b']}", "is not now")
    shutil.move(moved, family["b"])
    assert family["state"].read_bytes() == kept  # every refusal left the state as it was
    resumed = batch(family, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "3 (run, tensor) record(s) already done" in resumed.stderr


# -- trajectory ------------------------------------------------------------------------------


def test_trajectory_refuses_a_repeated_step(ckpts: dict[str, Path], tmp_path: Path) -> None:
    model = tiny_model(layers=1)
    paths = [
        write_checkpoint(tmp_path / "a" / "ckpt-200", perturb(model, 0.02, 1)),
        write_checkpoint(tmp_path / "b" / "ckpt-100", perturb(model, 0.01, 2)),
        write_checkpoint(tmp_path / "c" / "ckpt-100", perturb(model, 0.01, 3)),
    ]
    args = ["trajectory", str(ckpts["base"]), *map(str, paths), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE, result.stderr
    assert "repeat a step number" in result.stderr and len(result.stderr.splitlines()) == 1


# -- --label ---------------------------------------------------------------------------------


def test_label_errors_and_another_spelling_of_the_path(
    ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ckpts["tuned"].parent)
    args = ["compare", str(ckpts["base"]), "tuned", *FAST, "-f", "csv"]
    result = runner.invoke(app, [*args, "--label", "mine=./tuned/"])  # the same folder
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame["label"]) == ["mine"] and list(frame["run"]) == ["tuned"]
    for value, why in [
        ("tuned", "expected NAME=PATH"),
        ("=tuned", "expected NAME=PATH"),
        ("mine=", "expected NAME=PATH"),
        ("mine=base", "base is not one of the TUNED checkpoints"),
    ]:
        result = runner.invoke(app, [*args, "--label", value])
        assert result.exit_code == EXIT_USAGE and why in result.stderr, (value, result.stderr)
        assert len(result.stderr.splitlines()) == 1
    result = runner.invoke(app, [*args, "--label", "a=tuned", "--label", "b=./tuned"])
    assert result.exit_code == EXIT_USAGE and "labelled twice" in result.stderr
