"""--device cuda: the same numbers as the CPU, pinned reads, every tier, and the base cache.

Skipped where no CUDA device is available (the no-CUDA usage error is in test_cli.py).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import opdgeo.pair
from opdgeo import engine
from opdgeo.cache import BaseCache
from opdgeo.cli import app
from opdgeo.config import Settings
from opdgeo.io import Checkpoint, open_checkpoint
from opdgeo.pairing import plan_pairs
from tests.conftest import perturb, tiny_model, write_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

runner = CliRunner()
N_MATRICES = 7

EXACT_COLUMNS = ["numel", "unchanged_bf16", "sparsity_bf16", "unchanged_atol", "sparsity_atol",
                 "sparsity_atol_strict", "sparsity_exact", "max_abs_delta", "n_nonfinite",
                 "angle_k", "energy_k", "mask_rank", "overlap_baseline",
                 "principal_energy_baseline", "lowmag_overlap"]  # fmt: skip
"""Counts, and values computed from exact quantities only (|W0| masks, bf16 differences)."""
NORM_COLUMNS = ["delta_fro", "base_fro", "rel_norm"]
SPECTRAL_COLUMNS = ["angle_left_mean_deg", "angle_left_max_deg", "angle_right_mean_deg",
                    "angle_right_max_deg", "nss", "spectral_drift_ratio", "principal_energy",
                    "principal_energy_left", "principal_energy_right"]  # fmt: skip
SIGMA_COLUMNS = ["stable_rank", "delta_sigma1"]
MASK_COLUMNS = ["principal_overlap", "principal_notlow_overlap", "principal_notlow_baseline"]
"""From a float32 rank-r reconstruction of W0: an entry at the threshold may swap sides."""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu")
    model = tiny_model(layers=1)
    tuned = perturb(model, 0.01)
    name = "model.layers.0.self_attn.o_proj.weight"
    bad = {**tuned, name: tuned[name].clone()}
    bad[name][0, 0] = float("nan")
    return {
        "base": write_checkpoint(root / "base", model),
        "tuned": write_checkpoint(root / "tuned", tuned),
        "nan": write_checkpoint(root / "nan", bad),
    }


def run(base: Path, tuned: Path, tmp_path: Path, *extra: str) -> tuple[str, str]:
    per = tmp_path / "per.csv"
    args = ["compare", str(base), str(tuned), "-f", "csv", "-q", "--per-tensor", str(per)]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.stderr or result.exception
    return result.stdout, per.read_text()


def frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def assert_close_columns(got: pd.DataFrame, want: pd.DataFrame, cols: list[str], rel: float,
                         abs_: float = 0.0) -> None:  # fmt: skip
    for col in cols:
        for name, a, b in zip(want["tensor"], got[col], want[col], strict=True):
            if isinstance(b, float) and math.isnan(b):
                assert isinstance(a, float) and math.isnan(a), (col, name)
            elif rel == 0 and abs_ == 0:
                assert a == b, (col, name)
            else:
                assert a == pytest.approx(b, rel=rel, abs=abs_), (col, name)


@pytest.mark.parametrize("tier", ["fast", "standard", "exact"])
@pytest.mark.parametrize("tuned", ["tuned", "nan"])
def test_cuda_matches_cpu(ckpts: dict[str, Path], tmp_path: Path, tier: str, tuned: str) -> None:
    cpu_sum, cpu = (frame(t) for t in run(ckpts["base"], ckpts[tuned], tmp_path, "--tier", tier,
                                          "--no-cache"))  # fmt: skip
    gpu_sum, gpu = (frame(t) for t in run(ckpts["base"], ckpts[tuned], tmp_path, "--tier", tier,
                                          "--no-cache", "--device", "cuda"))  # fmt: skip
    for col in ("tensor", "skipped", "spectral_skipped", "method"):
        assert gpu[col].fillna("").tolist() == cpu[col].fillna("").tolist(), col
    assert_close_columns(gpu, cpu, EXACT_COLUMNS, rel=0)
    assert_close_columns(gpu, cpu, NORM_COLUMNS, rel=1e-12)
    assert_close_columns(gpu, cpu, SPECTRAL_COLUMNS, rel=1e-6, abs_=1e-9)
    assert_close_columns(gpu, cpu, SIGMA_COLUMNS, rel=1e-9 if tier == "exact" else 1e-4)
    assert_close_columns(gpu, cpu, MASK_COLUMNS, rel=0, abs_=0.02)
    for col in ("regime", "n_tensors", "n_params", "n_matrices", "sparsity_bf16", "method"):
        assert gpu_sum[col].tolist() == cpu_sum[col].tolist(), col
    if tuned == "nan":
        row = gpu.set_index("tensor").loc["model.layers.0.self_attn.o_proj.weight"]
        assert row["n_nonfinite"] == 1 and row["spectral_skipped"] == "non-finite values"


def test_cuda_index_spelling(ckpts: dict[str, Path], tmp_path: Path) -> None:
    a = run(ckpts["base"], ckpts["tuned"], tmp_path, "--no-cache", "--device", "cuda")
    b = run(ckpts["base"], ckpts["tuned"], tmp_path, "--no-cache", "--device", "cuda:0")
    assert a == b


def test_pinned_reads(ckpts: dict[str, Path]) -> None:
    ckpt = open_checkpoint(str(ckpts["base"]))
    for name in ("model.layers.0.mlp.up_proj.weight", "model.norm.weight"):
        pinned = ckpt.read(name, pin=True)
        plain = ckpt.read(name)
        assert pinned.is_pinned() and not plain.is_pinned()
        assert pinned.dtype == plain.dtype and torch.equal(pinned, plain)
    rows = ckpt.read("model.embed_tokens.weight", rows=10, pin=True)
    assert rows.is_pinned() and rows.shape == (10, 32)
    assert torch.equal(rows, ckpt.read("model.embed_tokens.weight")[:10])
    ckpt.close()


@pytest.mark.parametrize(("device", "pinned"), [("cuda", True), ("cpu", False)])
def test_engine_reads_pinned_only_for_cuda(
    ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch, device: str, pinned: bool
) -> None:
    seen: list[tuple[bool, bool]] = []
    real = Checkpoint.read

    def read(ckpt: Checkpoint, *args: Any, **kwargs: Any) -> torch.Tensor:
        tensor = real(ckpt, *args, **kwargs)
        seen.append((bool(kwargs.get("pin")), tensor.is_pinned()))
        return tensor

    monkeypatch.setattr(Checkpoint, "read", read)
    base, tuned = open_checkpoint(str(ckpts["base"])), open_checkpoint(str(ckpts["tuned"]))
    settings = Settings(device=device, cache=False)
    records = list(engine.compare(base, tuned, plan_pairs(base, tuned, settings), settings))
    assert len(records) == 11
    assert set(seen) == {(pinned, pinned)}
    base.close()
    tuned.close()


def test_everything_after_the_read_runs_on_the_gpu(ckpts: dict[str, Path]) -> None:
    checked: list[str] = []

    def observe(run: int, pair: Any, tp: Any) -> None:
        assert tp.base.device.type == tp.tuned.device.type == "cuda"
        if tp.shared.spectra and tp._s1 is not None:  # a matrix whose spectra ran
            sp0, sp1 = next(iter(tp.shared.spectra.values())), tp._s1[1]
            for t in (tp.w0, tp.w1, tp.delta, sp0.s, sp0.u, sp0.v, sp1.s, sp1.u, sp1.v):
                assert t.device.type == "cuda"
            checked.append(pair.name)

    base, tuned = open_checkpoint(str(ckpts["base"])), open_checkpoint(str(ckpts["tuned"]))
    settings = Settings(device="cuda", cache=False)
    plan = plan_pairs(base, tuned, settings)
    records = list(engine.compare_many(base, [tuned], [plan], settings, observe))
    assert len(records) == 11 and len(checked) == N_MATRICES
    base.close()
    tuned.close()


@pytest.fixture
def spectra(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    count = {"n": 0}
    real = opdgeo.pair.spectrum

    def counting(w, k, method="gram"):  # type: ignore[no-untyped-def]
        count["n"] += 1
        return real(w, k, method)

    monkeypatch.setattr(opdgeo.pair, "spectrum", counting)
    return count


@pytest.mark.parametrize("tier", ["standard", "exact"])
def test_cache_on_cuda(
    ckpts: dict[str, Path], tmp_path: Path, spectra: dict[str, int], tier: str
) -> None:
    store = tmp_path / "store"
    flags = ["--tier", tier, "--cache-dir", str(store)]
    cold_gpu = run(ckpts["base"], ckpts["tuned"], tmp_path, *flags, "--device", "cuda")
    entries = sorted(store.glob("*/*.safetensors"))
    assert len(entries) == N_MATRICES
    cold_cpu = run(ckpts["base"], ckpts["tuned"], tmp_path, *flags)
    assert len(list(store.glob("*/*.safetensors"))) == 2 * N_MATRICES  # the key has the device
    spectra["n"] = 0
    warm_gpu = run(ckpts["base"], ckpts["tuned"], tmp_path, *flags, "--device", "cuda")
    assert spectra["n"] == N_MATRICES  # W1 only
    assert warm_gpu == cold_gpu
    assert run(ckpts["base"], ckpts["tuned"], tmp_path, *flags) == cold_cpu
    cache = BaseCache(store)
    for path in entries:
        entry = cache.load(path.stem)
        assert entry is not None and entry.s.device.type == "cpu"
    nocache = run(ckpts["base"], ckpts["tuned"], tmp_path, "--tier", tier, "--no-cache",
                  "--device", "cuda")  # fmt: skip
    assert nocache == cold_gpu


def test_fast_tier_on_cuda_writes_no_cache(ckpts: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    run(ckpts["base"], ckpts["tuned"], tmp_path, "--tier", "fast", "--cache-dir", str(store),
        "--device", "cuda")  # fmt: skip
    assert not store.exists()
