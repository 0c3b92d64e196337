"""Pickle weights: refused by default; with --allow-pickle loaded weights-only; code never runs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.errors import FormatError
from opdgeo.io.pickle import load_state_dict
from tests.conftest import perturb, tiny_model, write_checkpoint

runner = CliRunner()


class Planted:
    """Unpickling this object would create a marker file (a stand-in for any payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (str(self.marker),))


def write_bin(folder: Path, tensors: dict[str, torch.Tensor], extra: object = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    payload: dict[str, object] = dict(tensors)
    if extra is not None:
        payload["__planted__"] = extra
    torch.save(payload, folder / "pytorch_model.bin")
    return folder


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PLANTED_CODE_RAN"


def test_malicious_pickle_never_runs(tmp_path: Path, marker: Path) -> None:
    evil = write_bin(tmp_path / "evil", tiny_model(), Planted(marker))
    with pytest.raises(FormatError, match="refused"):
        load_state_dict(evil / "pytorch_model.bin")
    assert not marker.exists()
    base = write_checkpoint(tmp_path / "base", tiny_model())
    for extra in ([], ["--allow-pickle"]):
        result = runner.invoke(app, ["compare", str(base), str(evil), *extra])
        assert result.exit_code == 1
        assert "Traceback" not in result.stderr
        assert not marker.exists()
    assert "--allow-pickle" in " ".join(
        runner.invoke(app, ["compare", str(base), str(evil)]).stderr.split()
    )


def test_pickle_refused_by_default_then_loaded_with_opt_in(tmp_path: Path) -> None:
    base_tensors = tiny_model()
    tuned_tensors = perturb(base_tensors, scale=0.05)
    base = write_checkpoint(tmp_path / "base", base_tensors)
    local = write_checkpoint(tmp_path / "tuned-st", tuned_tensors)
    pickled = write_bin(tmp_path / "tuned-bin", tuned_tensors)
    refused = runner.invoke(app, ["compare", str(base), str(pickled)])
    assert refused.exit_code == 1
    assert "pickle" in refused.stderr and "--allow-pickle" in " ".join(refused.stderr.split())
    allowed = runner.invoke(
        app, ["compare", str(base), str(pickled), "--allow-pickle", "-f", "csv"]
    )
    assert allowed.exit_code == 0, allowed.stderr
    reference = runner.invoke(app, ["compare", str(base), str(local), "-f", "csv"])
    got = pd.read_csv(io.StringIO(allowed.stdout)).drop(columns=["run"])
    want = pd.read_csv(io.StringIO(reference.stdout)).drop(columns=["run"])
    pd.testing.assert_frame_equal(got, want)


def test_legacy_and_garbage_pickles_are_clean_errors(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.bin"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="legacy"):
        load_state_dict(legacy)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FormatError):
        load_state_dict(garbage)
    not_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_dict)
    with pytest.raises(FormatError, match="expected a dict"):
        load_state_dict(not_dict)
