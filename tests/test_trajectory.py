"""Trajectories: planted locked / expanding / contracting series, Jaccard, Hill, CLI."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from opdgeo.cli import app
from opdgeo.locking import hill_alpha, jaccard
from opdgeo.regimes import locking_verdict
from tests.conftest import tiny_model, write_checkpoint

runner = CliRunner()
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


def _orth(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen))[0]


def series(tmp_path: Path, kind: str, steps: int = 4) -> tuple[Path, list[Path]]:
    """Base plus `steps` checkpoints whose attention updates follow a planted pattern (fp32)."""
    gen = torch.Generator().manual_seed(7)
    base = {k: v.float() for k, v in tiny_model(hidden=64).items()}
    frames = {}
    for name, w in base.items():
        if w.dim() == 2 and any(a in name for a in ATTN):
            m, n = w.shape
            frames[name] = [(_orth(m, 4, gen), _orth(n, 4, gen)) for _ in range(steps)]
    paths = []
    for t in range(steps):
        ckpt = {}
        for name, w in base.items():
            if name not in frames:
                ckpt[name] = w.clone()
                continue
            if kind == "locked":  # one fixed rank-4 channel, growing
                u, v = frames[name][0]
                delta = (t + 1) * 0.01 * u @ v.T
            elif kind == "expanding":  # a new rank-4 channel every step
                delta = sum(0.01 * u @ v.T for u, v in frames[name][: t + 1])
            else:  # contracting: fading full-rank noise, growing rank-1 signal
                noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
                u, v = frames[name][0]
                delta = 0.002 * noise / (t + 1) ** 2 + (t + 1) * 0.02 * u[:, :1] @ v[:, :1].T
            ckpt[name] = w + delta
        paths.append(write_checkpoint(tmp_path / kind / f"checkpoint-{(t + 1) * 100}", ckpt))
    return write_checkpoint(tmp_path / f"{kind}-base", base), paths


@pytest.mark.parametrize("kind", ["locked", "expanding", "contracting"])
def test_planted_series_get_their_verdict(tmp_path: Path, kind: str) -> None:
    base, ckpts = series(tmp_path, kind)
    result = runner.invoke(app, ["trajectory", str(base), str(ckpts[0].parent), "-f", "csv", "-q"])
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert list(frame["step"]) == [100, 200, 300, 400]
    assert frame["locking"].fillna("").tolist() == ["", "", "", kind]
    assert frame["n_trajectory_matrices"].tolist() == [8] * 4
    assert frame["sim_final"].iloc[-1] == pytest.approx(1.0)
    if kind == "locked":
        assert frame["stable_rank"].tolist() == pytest.approx([4.0] * 4, rel=1e-4)
        assert frame["sim_final"].min() == pytest.approx(1.0, abs=1e-5)
    if kind == "expanding":  # new random channels overlap a little in 32-64 dims
        assert frame["stable_rank"].is_monotonic_increasing
        assert frame["stable_rank"].iloc[-1] > 1.5 * frame["stable_rank"].iloc[0]
    if kind == "contracting":
        assert frame["stable_rank"].is_monotonic_decreasing
    else:
        assert frame["update_norm"].is_monotonic_increasing


def test_explicit_checkpoint_list_and_table(tmp_path: Path) -> None:
    base, ckpts = series(tmp_path, "locked", steps=3)
    result = runner.invoke(app, ["trajectory", str(base), *map(str, ckpts), "-f", "table"])
    assert result.exit_code == 0, result.stderr
    assert "locking: locked" in result.stdout
    assert "locking: locked" in result.stderr


def test_hill_alpha_known_answer() -> None:
    s = torch.tensor([8.0, 4.0, 2.0, 1.0])  # log2 ratios 3, 2, 1 -> mean 2 ln 2
    assert hill_alpha(s, 4) == pytest.approx(1 / (2 * math.log(2)))
    assert math.isnan(hill_alpha(torch.tensor([1.0, 0.0]), 2))
    assert math.isnan(hill_alpha(torch.tensor([1.0]), 2))


def test_jaccard_and_bernoulli_baseline() -> None:
    a = np.packbits(np.array([1, 1, 0, 0, 1, 0, 0, 0], dtype=bool))
    b = np.packbits(np.array([1, 0, 1, 0, 1, 0, 0, 0], dtype=bool))
    j, base = jaccard(a, b, 8)
    assert j == pytest.approx(2 / 4)
    p = q = 3 / 8
    assert base == pytest.approx(p * q / (p + q - p * q))


def test_verdict_needs_two_checkpoints() -> None:
    verdict, facts = locking_verdict([{"stable_rank": 3.0, "sim_final": 1.0}])
    assert verdict == "drifting" and "fewer than two" in facts[0]
