"""Hostile and broken inputs through the CLI: one line, documented exit code, no traceback."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from opdgeo.cli import app
from tests.conftest import tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("alarm")  # every test here is bounded in time
runner = CliRunner()


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    body = json.dumps(header).encode() if not isinstance(header, bytes) else header
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
CASES = {
    "truncated-data": ({"x": ENTRY}, b"\0" * 4, None, "outside the 4-byte data"),
    "header-longer-than-file": ({"x": ENTRY}, b"\0" * 8, 10_000, "larger than the file"),
    "absurd-header": ({"x": ENTRY}, b"", 1 << 62, "exceeds the"),
    "not-json": (b"{not json", b"", None, "header is not JSON"),
    "not-object": ([1, 2], b"", None, "not a JSON object"),
    "unknown-dtype": ({"x": {**ENTRY, "dtype": "F13"}}, b"\0" * 8, None, "unknown dtype"),
    "span-mismatch": ({"x": {**ENTRY, "shape": [3]}}, b"\0" * 8, None, "needs 12"),
    "overlap": (
        {"x": ENTRY, "y": {**ENTRY, "data_offsets": [4, 12]}},
        b"\0" * 12,
        None,
        "overlap",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_tuned_file_is_one_line_exit_1(tmp_path: Path, case: str) -> None:
    header, data, length, message = CASES[case]
    bad = raw_file(tmp_path / "bad.safetensors", header, data, length)
    base = write_checkpoint(tmp_path / "base", tiny_model())
    result = runner.invoke(app, ["compare", str(base), str(bad)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(bad) in lines[0] and message in lines[0]
    assert result.stdout == ""


def test_refuses_to_overwrite_an_input_file(tmp_path: Path) -> None:
    a = write_checkpoint(tmp_path / "a", tiny_model()) / "model.safetensors"
    b = write_checkpoint(tmp_path / "b", tiny_model(seed=1)) / "model.safetensors"
    before = a.read_bytes()
    result = runner.invoke(app, ["compare", str(a), str(b), "-o", str(a)])
    assert result.exit_code == 1
    assert "refusing to write" in result.stderr
    assert a.read_bytes() == before


def test_interrupt_leaves_no_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opdgeo import report

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "build_run", interrupted)
    a = write_checkpoint(tmp_path / "a", tiny_model())
    out = tmp_path / "report.csv"
    result = runner.invoke(app, ["compare", str(a), str(a), "-o", str(out)])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".report.csv.*"))


def test_markup_in_paths_is_printed_verbatim(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compare", "./x[red]y", "./x[/]y"])
    assert result.exit_code == 1
    assert "./x[red]y" in result.stderr and "Traceback" not in result.stderr


def test_same_names_other_architecture_is_not_comparable(tmp_path: Path) -> None:
    a = write_checkpoint(tmp_path / "a", tiny_model(hidden=32))
    b = write_checkpoint(tmp_path / "b", tiny_model(hidden=48))
    result = runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 3
    assert "differs in shape" in result.stderr


def test_huge_vocabulary_resize_compares_shared_rows(tmp_path: Path) -> None:
    base = tiny_model(vocab=64)
    tuned = dict(base)
    extra = torch.zeros(4096, 32, dtype=torch.bfloat16)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tuned[name] = torch.cat([base[name], extra])
    a, b = write_checkpoint(tmp_path / "a", base), write_checkpoint(tmp_path / "b", tuned)
    per = tmp_path / "t.csv"
    result = runner.invoke(app, ["compare", str(a), str(b), "-f", "csv", "--per-tensor", str(per)])
    assert result.exit_code == 0
    assert ",unchanged," in result.stdout
    import pandas as pd

    rows = pd.read_csv(per).set_index("tensor")
    assert rows.loc["lm_head.weight", "added_rows"] == 4096
    assert rows.loc["lm_head.weight", "shape"] == "64x32"
