"""The metric registry is the single source of truth (issue: adding a metric touched 3-5
files): a metric registered in one place - here, a toy one in this test - reaches the
per-tensor table, the summary with its pooling, the per-group tables, the JSON document and
the configuration (its Param), with no other file changed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import opdgeo
from opdgeo.cli import app
from opdgeo.config import load_config
from opdgeo.errors import ConfigError
from opdgeo.metrics import METRICS, Over, Param, Pool, Summary, metric
from opdgeo.pair import TensorPair
from tests.conftest import write_checkpoint


@pytest.fixture
def toy() -> Iterator[None]:
    """Register ``toy_norm`` for one test, then restore the registry as it was."""
    saved = dict(METRICS)

    @metric(
        "toy_norm",
        columns=("toy_norm",),
        matrix_only=True,
        summaries=(Summary("toy_norm_max", "toy_norm", Pool.MAX, Over.MATRICES, group=True),),
        params=(Param("toy_scale", 1.0, "multiplies toy_norm", minimum=0.0),),
    )
    def toy_norm(pair: TensorPair) -> dict[str, float]:
        """The largest |dW| entry times ``toy_scale``."""
        scale = float(pair.settings.param("toy_scale"))
        return {"toy_norm": scale * float(pair.delta.abs().max())}

    try:
        yield
    finally:
        METRICS.clear()
        METRICS.update(saved)


def test_a_registered_metric_reaches_every_output(toy: None, tmp_path: Path) -> None:
    names = ("model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight")
    start = torch.arange(48.0).reshape(8, 6) / 4  # + 0.5 and - 2 are exact in float32
    w0 = {n: start.clone() for n in names}
    w1 = {names[0]: start + 0.5, names[1]: start - 2.0}  # |dW| is 0.5 and 2 everywhere
    base, tuned = write_checkpoint(tmp_path / "b", w0), write_checkpoint(tmp_path / "t", w1)
    (run,) = opdgeo.compare(str(base), str(tuned), cache=False)
    assert run.tensors.set_index("tensor")["toy_norm"].to_dict() == {names[0]: 0.5, names[1]: 2.0}
    assert run.summary["toy_norm_max"] == 2.0  # pooled as declared: max over matrices
    assert {g["group"]: g["toy_norm_max"] for g in run.layers} == {0: 0.5, 1: 2.0}
    (scaled,) = opdgeo.compare(str(base), str(tuned), cache=False, toy_scale=3.0)  # a keyword
    assert scaled.summary["toy_norm_max"] == 6.0
    config = tmp_path / "c.toml"
    config.write_text("[settings]\ntoy_scale = 2.0\n")
    assert load_config(config).settings.param("toy_scale") == 2.0
    out = CliRunner().invoke(app, ["compare", str(base), str(tuned), "-f", "json", "-q",
                                   "--no-cache", "--config", str(config)])  # fmt: skip
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["runs"][0]["summary"]["toy_norm_max"] == 4.0
    shown = CliRunner().invoke(app, ["config", "show"])
    assert "# toy_scale = 1.0   (default) multiplies toy_norm" in shown.stdout  # documented
    shown = CliRunner().invoke(app, ["config", "show", "--config", str(config)])
    assert "\ntoy_scale = 2.0   # multiplies toy_norm" in shown.stdout  # as set
    for bad in ({"toy_scale": -1.0}, {"toy_scale": "2"}, {"toy_scael": 2.0}):
        with pytest.raises(ConfigError, match="toy_sca"):
            opdgeo.compare(str(base), str(tuned), cache=False, **bad)
