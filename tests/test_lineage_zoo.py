"""opdgeo lineage on the regime zoo's committed checkpoints (zoo/checkpoints/seed0).

base -> SFT -> RLVR / OPD are real training runs of one model (zoo/run.py), so every pair is
``derived``; a copy of the base with permuted MLP units and attention heads is ``derived``
while ``compare`` calls it ``unrelated``; a copy with one re-initialised block is ``derived``
with that block named. (Independence of two separately pretrained zoo models: see
bench/LINEAGE_NULL.md and tests/test_lineage.py, which train tiny zoo decoders.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opdgeo.lineage import lineage, lineage_pair
from opdgeo.lineage import transforms as tf
from opdgeo.lineage.nullmodels import write_model

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "checkpoints" / "seed0"
pytestmark = pytest.mark.skipif(
    not (ZOO / "rlvr" / "model.safetensors").is_file(), reason="zoo checkpoints not present"
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_state() -> dict[str, torch.Tensor]:
    return load_file(str(ZOO / "base" / "model.safetensors"))


def _write(tmp: Path, name: str, state: dict[str, torch.Tensor]) -> str:
    config = json.loads((ZOO / "base" / "config.json").read_text())
    return str(write_model(tmp / name, state, config))


def test_zoo_family_is_derived() -> None:
    specs = [str(ZOO / n) for n in ("base", "sft", "rlvr", "opd")]
    result = lineage(specs)
    assert len(result.pairs) == 6
    for pair in result.pairs:
        assert pair.verdict == "derived", (pair.a, pair.b, pair.reasons)
        assert pair.log10_p < -6
        assert all(e.status == "shared" for e in pair.layers if e.part.startswith("layer"))
        assert pair.read_fraction == pytest.approx(1.0, abs=0.01)  # tiny: everything is read


def test_zoo_permuted_copy_derived_while_compare_says_unrelated(
    tmp_path: Path, base_state: dict[str, torch.Tensor]
) -> None:
    from opdgeo import compare_checkpoints
    from opdgeo.config import Config, Settings

    edited = tf.permute_heads(tf.permute_mlp(base_state, 1), 4, 4, 2)
    path = _write(tmp_path, "permuted", edited)
    pair = lineage_pair(str(ZOO / "base"), path)
    assert pair.verdict == "derived" and pair.log10_p < -6
    # the fast tier: the unrelated rule needs only rel_norm and bf16 sparsity
    run = compare_checkpoints(str(ZOO / "base"), [path], Config(Settings(tier="fast")))[0]
    assert run.summary["regime"] == "unrelated", run.verdict.reasons


def test_zoo_reinitialised_block_is_named(
    tmp_path: Path, base_state: dict[str, torch.Tensor]
) -> None:
    path = _write(tmp_path, "reinit2", tf.reinit_layer(base_state, 2))
    pair = lineage_pair(str(ZOO / "sft"), path)
    assert pair.verdict == "derived"
    status = {e.part: e.status for e in pair.layers}
    assert status["layer 2"] == "not shared"
    assert {status[f"layer {i}"] for i in (0, 1, 3)} == {"shared"}
    assert any(r.startswith("layer 2: not shared") for r in pair.reasons)
