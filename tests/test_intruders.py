"""intruder_dims: known answers, its settings, and the tiers that lack W0's full basis."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.config import Settings, load_config
from opdgeo.errors import ConfigError
from opdgeo.metrics import METRICS
from opdgeo.pair import TensorPair
from tests.conftest import write_checkpoint

F64 = torch.float64
M = N = 16


def _orthogonal(m: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def planted(strength: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """W0 = U diag(s) Vᵀ and W1 = W0 + strength · y zᵀ, where y has coordinates 0.25 on every
    left singular vector of W0 (|cos| 0.25 with each): one intruder when strength dominates."""
    u, v = _orthogonal(M, 1), _orthogonal(N, 2)
    s = torch.linspace(2.0, 1.0, M, dtype=F64)
    w0 = (u * s) @ v.T
    y = u @ torch.full((M,), 0.25, dtype=F64)
    z = v[:, 0]
    return w0, w0 + strength * torch.outer(y, z)


def run(w0: torch.Tensor, w1: torch.Tensor, **params: float) -> float:
    settings = Settings(tier="exact", metric_params=tuple(sorted(params.items())))
    return METRICS["intruder_dims"].fn(TensorPair(w0, w1, settings))["intruder_dims"]


def test_a_planted_direction_is_one_intruder() -> None:
    w0, w1 = planted()
    assert run(w0, w1) == 1.0
    assert run(w0, w0) == 0.0
    assert run(w0, 3.0 * w0) == 0.0  # rescaling keeps every singular vector
    assert run(w0, w0 + 1e-3 * torch.randn(M, N, dtype=F64)) == 0.0


def test_epsilon_and_k_are_settings() -> None:
    w0, w1 = planted()
    assert run(w0, w1, intruder_eps=0.2) == 0.0  # 0.25 is not below 0.2
    assert run(w0, w1, intruder_k=1) == 1.0


def test_settings_are_validated_with_their_names(tmp_path: Path) -> None:
    for text, word in (("intruder_eps = 2.0", "intruder_eps"), ("intruder_k = 0", "intruder_k"),
                       ('intruder_k = "10"', "intruder_k")):  # fmt: skip
        config = tmp_path / "c.toml"
        config.write_text(f"[settings]\n{text}\n")
        with pytest.raises(ConfigError, match=word):
            load_config(config)
    config.write_text("[settings]\nintruder_k = 3\n")
    assert load_config(config).settings.param("intruder_k") == 3


def test_exact_tier_reports_it_and_others_say_why_not(tmp_path: Path) -> None:
    w0, w1 = planted()
    base = write_checkpoint(tmp_path / "b", {"model.layers.0.mlp.up_proj.weight": w0.float()})
    tuned = write_checkpoint(tmp_path / "t", {"model.layers.0.mlp.up_proj.weight": w1.float()})
    runner = CliRunner()
    per = tmp_path / "per.csv"
    args = ["compare", str(base), str(tuned), "-f", "csv", "-q", "--no-cache",
            "--per-tensor", str(per)]  # fmt: skip
    exact = runner.invoke(app, [*args, "--tier", "exact"])
    assert exact.exit_code == 0, exact.stderr
    assert pd.read_csv(io.StringIO(exact.stdout))["intruder_dims"].tolist() == [1.0]
    assert "intruder_dims=svd-f64" in pd.read_csv(per)["method"][0]
    standard = runner.invoke(app, args)
    assert standard.exit_code == 0, standard.stderr
    assert pd.read_csv(io.StringIO(standard.stdout))["intruder_dims"].isna().all()
    assert "intruder_dims=no-full-W0-basis" in pd.read_csv(per)["method"][0]


def test_summary_is_the_mean_over_matrices(tmp_path: Path) -> None:
    """Pooled as the registry says: the mean over compared matrices (vectors have no value)."""
    import opdgeo

    w0, w1 = planted()
    bias = torch.linspace(0.0, 1.0, M)
    up, down, vec = (f"model.layers.0.mlp.{n}" for n in ("up_proj.weight", "down_proj.weight",
                                                         "up_proj.bias"))  # fmt: skip
    base = write_checkpoint(tmp_path / "b", {up: w0.float(), down: w0.float().T, vec: bias})
    tuned = write_checkpoint(
        tmp_path / "t", {up: w1.float(), down: 2 * w0.float().T, vec: bias + 1}
    )
    (run,) = opdgeo.compare(str(base), str(tuned), tier="exact", cache=False)
    per = run.tensors.set_index("tensor")["intruder_dims"]
    assert per[up] == 1.0 and per[down] == 0.0 and math.isnan(per[vec])
    assert run.summary["intruder_dims"] == 0.5
