"""The terminal report at 80 columns (issue 16): numbers are never cut (columns wrap into a
further table instead), captions break between words, and the top-changed module types are
ranked per parameter."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from opdgeo import render
from opdgeo.api import compare
from opdgeo.render_fit import chunks
from opdgeo.report import RunResult
from tests.conftest import perturb, tiny_model, write_checkpoint

SETTINGS = "scope=all alpha=0.3 atol=1e-05 tier=fast method=gram device=cpu"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[RunResult]:
    root = tmp_path_factory.mktemp("ux-render")
    base = tiny_model(layers=2)
    a = write_checkpoint(root / "base", base)
    deep = (
        root / "a-rather-long-folder-name" / "of-training-runs" / "sft-lr1e-5" / "checkpoint-1000"
    )
    tuned = [write_checkpoint(deep, perturb(base, 0.05, 1)),
             write_checkpoint(root / "rlvr", perturb(base, 1e-4, 2))]  # fmt: skip
    return compare(str(a), [str(t) for t in tuned], tier="fast", cache=False)


def rendered(runs: list[RunResult], width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    render.render_table(console, runs, SETTINGS)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


@pytest.mark.parametrize("width", [80, 100, 200])
def test_numbers_are_never_cut(runs: list[RunResult], width: int) -> None:
    out = rendered(runs, width)
    assert max(len(line) for line in out.splitlines()) <= width
    assert "…" not in out
    for run in runs:  # every summary number appears whole
        for key in ("rel_norm", "stable_rank"):
            assert render._num(run.summary[key]) in out
        for module, _ in render.concentration(run.modules)[: render.TOP_MODULES]:
            assert render._num(module["rel_norm"]) in out


def test_caption_breaks_between_words(runs: list[RunResult]) -> None:
    out = rendered(runs, 40)
    words = set(re.split(r"\s+", out))
    assert set(SETTINGS.split()) <= words


def test_columns_wrap_into_groups_that_fit() -> None:
    assert chunks([10, 10, 10], 26) == [[0, 1], [2]]
    assert chunks([30, 5], 20) == [[0], [1]]  # a column wider than the room still gets a table
    assert chunks([], 20) == []


def test_top_changed_modules_are_ranked_per_parameter() -> None:
    modules = [
        {"group": "mlp", "n_params": 600, "energy_share": 0.6},
        {"group": "attn", "n_params": 300, "energy_share": 0.1},
        {"group": "norm", "n_params": 100, "energy_share": 0.3},
    ]
    ranked = render.concentration(modules)
    assert [g["group"] for g, _ in ranked] == ["norm", "mlp", "attn"]
    assert [round(x, 6) for _, x in ranked] == [3.0, 1.0, round(1 / 3, 6)]


def test_the_module_table_says_per_parameter(runs: list[RunResult]) -> None:
    out = rendered(runs, 120)
    assert "top-changed module types (per parameter" in out and "energy/param" in out


def test_fixture_paths_are_long(runs: list[RunResult]) -> None:
    assert len(str(runs[0].summary["run"])) > 80 // 2
    assert Path(str(runs[0].summary["run"])).name == "checkpoint-1000"
