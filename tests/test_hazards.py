"""Numerical hazards: NaN/Inf, all-zero, empty, scalar and mixed-precision tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from opdgeo.api import compare_checkpoints
from tests.conftest import perturb, tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures("alarm")  # every test here is bounded in time

Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"


def run(tmp_path: Path, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], tag: str):  # type: ignore[no-untyped-def]
    a = write_checkpoint(tmp_path / f"{tag}-base", base)
    b = write_checkpoint(tmp_path / f"{tag}-tuned", tuned)
    (result,) = compare_checkpoints(str(a), [str(b)])
    return result


def test_nan_is_reported_and_does_not_poison_other_tensors_or_totals(tmp_path: Path) -> None:
    base = tiny_model()
    tuned = perturb(base, scale=0.05)
    clean = run(tmp_path, base, tuned, "clean")
    poisoned = dict(tuned)
    q = poisoned[Q].clone()
    q[0, 0], q[1, 2] = float("nan"), float("inf")
    poisoned[Q] = q
    dirty = run(tmp_path, base, poisoned, "dirty")
    assert dirty.summary["n_nonfinite"] == 2
    assert math.isfinite(dirty.summary["rel_norm"])
    rows = dirty.tensors.set_index("tensor")
    assert rows.loc[Q, "spectral_skipped"] == "non-finite values"
    assert rows.loc[Q, "n_nonfinite"] == 2
    assert math.isfinite(rows.loc[Q, "rel_norm"])
    clean_rows = clean.tensors.set_index("tensor")
    for column in ("sparsity_bf16", "rel_norm", "nss", "angle_left_mean_deg", "stable_rank"):
        assert rows.loc[UP, column] == clean_rows.loc[UP, column], column
    # the NaN and the Inf count as changed entries
    unchanged_clean = clean_rows.loc[Q, "unchanged_bf16"]
    assert rows.loc[Q, "unchanged_bf16"] <= unchanged_clean


def test_all_zero_empty_and_scalar_tensors(tmp_path: Path) -> None:
    base = tiny_model()
    base["zero.weight"] = torch.zeros(8, 8, dtype=torch.bfloat16)
    base["empty.weight"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    base["scale"] = torch.tensor(2.0, dtype=torch.bfloat16)
    tuned = perturb(base, scale=0.05)
    tuned["zero.weight"] = torch.full((8, 8), 0.5, dtype=torch.bfloat16)
    tuned["scale"] = torch.tensor(3.0, dtype=torch.bfloat16)
    result = run(tmp_path, base, tuned, "edge")
    rows = result.tensors.set_index("tensor")
    assert rows.loc["zero.weight", "spectral_skipped"].startswith("all-zero base")
    assert rows.loc["zero.weight", "sparsity_bf16"] == 0.0
    assert math.isnan(rows.loc["zero.weight", "rel_norm"])
    assert rows.loc["empty.weight", "numel"] == 0
    assert math.isnan(rows.loc["empty.weight", "sparsity_bf16"])
    assert rows.loc["scale", "spectral_skipped"] == "0-D tensor"
    assert rows.loc["scale", "rel_norm"] == 0.5
    assert math.isfinite(result.summary["sparsity_bf16"])
    assert result.summary["n_tensors"] == len(base)


def test_fp32_tuned_against_bf16_base(tmp_path: Path) -> None:
    base = tiny_model()
    tuned = {k: v.float() for k, v in base.items()}
    # a change below half a bf16 ULP: invisible to sparsity_bf16, visible to sparsity_exact
    tuned[Q] = tuned[Q] * (1 + 2**-12)
    result = run(tmp_path, base, tuned, "mixed")
    s = result.summary
    assert s["dtype_base"] == "BF16" and s["dtype_tuned"] == "F32"
    rows = result.tensors.set_index("tensor")
    assert rows.loc[Q, "sparsity_bf16"] == 1.0
    assert rows.loc[Q, "sparsity_exact"] < 0.1
    assert any("float32" in c for c in result.verdict.caveats)
    assert isinstance(result.tensors, pd.DataFrame)
