"""opdgeo lineage on generated checkpoints: every verdict, the robustness cases, errors, bytes.

Models are tiny Llama/Qwen-named state dicts from ``opdgeo.lineage.nullmodels`` (in memory or
written with safetensors into tmp_path); edits from ``opdgeo.lineage.transforms``. No network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from rich.console import Console
from scipy import stats

from opdgeo.errors import EXIT_NOT_COMPARABLE, NotComparableError
from opdgeo.lineage import (
    LineageSettings,
    lineage,
    lineage_frame,
    lineage_json,
    lineage_layers_frame,
    lineage_matrix,
    lineage_pair,
    lineage_tests_frame,
    plan_bytes,
    render_lineage,
)
from opdgeo.lineage import transforms as tf
from opdgeo.lineage.layout import build_layout
from opdgeo.lineage.nullmodels import (
    QWEN25_7B,
    LlamaShape,
    MemorySource,
    llama_header,
    llama_state,
    write_model,
)
from opdgeo.lineage.plan import plan_reads, read_bytes

GQA = LlamaShape(layers=3, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=256)
BIG_VOCAB = LlamaShape(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=2048)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: these matrices are tiny and the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mem(label: str, state: dict[str, torch.Tensor], shape: LlamaShape = GQA) -> MemorySource:
    return MemorySource(label, state, shape.config())


@pytest.fixture(scope="module")
def base() -> dict[str, torch.Tensor]:
    return llama_state(GQA, 0)


def statuses(result: object) -> dict[str, str]:
    return {e.part: e.status for e in result.layers}  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ verdicts


def test_same_weights(base: dict[str, torch.Tensor]) -> None:
    r = lineage_pair(mem("a", base), mem("b", {k: v.clone() for k, v in base.items()}))
    assert r.verdict == "same-weights"
    assert all(i.identical and i.bitwise for i in r.identity)
    assert len(r.identity) == len(base)


def test_fp32_cast_is_same_weights(base: dict[str, torch.Tensor]) -> None:
    r = lineage_pair(mem("a", base), mem("b", tf.cast(base, torch.float32)))
    assert r.verdict == "same-weights"
    assert not any(i.bitwise for i in r.identity)


def test_derived_after_heavy_noise(base: dict[str, torch.Tensor]) -> None:
    # Noise as large as the weights themselves on every matrix: still clearly derived.
    r = lineage_pair(mem("a", base), mem("b", tf.train_noise(base, 1.0)))
    assert r.verdict == "derived"
    assert r.log10_p < -6
    assert 0.5 < r.effect <= 1.0
    assert r.decided_by and "agree" in r.decided_by[0]


def test_independent_initialisations(base: dict[str, torch.Tensor]) -> None:
    r = lineage_pair(mem("a", base), mem("b", llama_state(GQA, 1)))
    assert r.verdict == "independent"
    assert r.log10_p > -2
    assert abs(r.effect) < 0.05


def test_independent_after_brief_training() -> None:
    """Two zoo decoders from their own seeds, each trained 25 steps: independent."""
    from zoo import task
    from zoo.model import ModelConfig, TinyLlama
    from zoo.train import solution_mask, token_logprobs

    cfg = ModelConfig(hidden=32, layers=2, heads=2, intermediate=64, init_std=0.05)
    states = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        model = TinyLlama(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(25):
            ids = task.sequences(task.sample_problems(16, 2, gen))
            logp, _ = token_logprobs(model, ids)
            mask = solution_mask(ids)
            loss = -(logp * mask).sum() / mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        states.append({k: v.detach().to(torch.bfloat16) for k, v in model.state_dict().items()})
    config = cfg.as_dict()
    r = lineage_pair(MemorySource("s11", states[0], config), MemorySource("s12", states[1], config))
    assert r.verdict == "independent"


def test_inconclusive_when_too_little_to_compare() -> None:
    # One 2 x 4 matrix: even full agreement could not reach p <= 1e-4.
    w = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    r = lineage_pair(MemorySource("a", {"w": w}), MemorySource("b", {"w": -w * 2}))
    assert r.verdict == "inconclusive"
    assert any("too little to compare" in x for x in r.reasons)


# ------------------------------------------------------------------------------ robustness


def test_permuted_units_and_gqa_heads_are_derived(base: dict[str, torch.Tensor]) -> None:
    edited = tf.permute_heads(tf.permute_mlp(base, 1), GQA.heads, GQA.kv_heads, 2)
    r = lineage_pair(mem("a", base), mem("b", edited))
    assert r.verdict == "derived"
    kinds = {t.kind: t for t in r.tests if t.layer_a == 0}
    assert kinds["mlp"].hits == GQA.intermediate
    assert kinds["attn_kv"].hits == GQA.kv_heads
    assert kinds["attn_q"].hits == GQA.heads
    assert all(s == "shared" for p, s in statuses(r).items() if p.startswith("layer"))


def test_residual_permutation_is_aligned_by_the_embedding() -> None:
    init = llama_state(BIG_VOCAB, 3)
    r = lineage_pair(mem("a", init, BIG_VOCAB), mem("b", tf.permute_residual(init), BIG_VOCAB))
    assert r.verdict == "derived"
    assert r.alignment.startswith("signed permutation")
    assert r.log10_p < -100


def test_reinitialised_block_is_named(base: dict[str, torch.Tensor]) -> None:
    r = lineage_pair(mem("a", base), mem("b", tf.reinit_layer(tf.train_noise(base, 0.3), 1)))
    assert r.verdict == "derived"
    assert statuses(r)["layer 1"] == "not shared"
    assert statuses(r)["layer 0"] == statuses(r)["layer 2"] == "shared"
    assert any(x.startswith("layer 1: not shared") for x in r.reasons)


def test_pruned_block_is_missing(base: dict[str, torch.Tensor]) -> None:
    r = lineage_pair(mem("a", base), mem("b", tf.renumber(base, [0, 2])))
    assert r.verdict == "derived"
    s = statuses(r)
    assert s["layer 1"] == "missing in B"
    layer2 = next(e for e in r.layers if e.part == "layer 2")
    assert layer2.layer_b == 1 and layer2.status == "identical"


def test_duplicated_block_is_found(base: dict[str, torch.Tensor]) -> None:
    r = lineage_pair(mem("a", base), mem("b", tf.renumber(base, [0, 1, 1, 2])))
    assert r.verdict == "derived"
    dup = [e for e in r.layers if e.status == "duplicate"]
    assert len(dup) == 1 and dup[0].layer_a == 1


def test_reordered_blocks_match_by_content(base: dict[str, torch.Tensor]) -> None:
    r = lineage_pair(mem("a", base), mem("b", tf.renumber(base, [2, 0, 1])))
    assert {e.layer_a: e.layer_b for e in r.layers if e.layer_a is not None} == {0: 1, 1: 2, 2: 0}
    assert r.verdict == "derived"


def test_resized_vocabulary() -> None:
    init = llama_state(BIG_VOCAB, 4)
    r = lineage_pair(mem("a", init, BIG_VOCAB), mem("b", tf.resize_vocab(init, 2300), BIG_VOCAB))
    assert r.verdict == "derived"
    embed = next(i for i in r.identity if "embed" in i.a)
    assert embed.shape_b[0] == 2300 and not embed.identical


def test_new_head_is_reported() -> None:
    init = llama_state(BIG_VOCAB, 6)
    edited = dict(init)
    edited["lm_head.weight"] = llama_state(BIG_VOCAB, 7)["lm_head.weight"]
    r = lineage_pair(mem("a", init, BIG_VOCAB), mem("b", edited, BIG_VOCAB))
    assert r.verdict == "derived"
    head = next(e for e in r.layers if e.part == "lm_head")
    assert head.status == "not shared" and "new head" in head.note
    assert next(e for e in r.layers if e.part == "embed").status == "identical"


def test_frozen_block_is_reported_bit_identical(base: dict[str, torch.Tensor]) -> None:
    edited = tf.train_noise(base, 0.3)
    edited.update({k: v.clone() for k, v in base.items() if "layers.1." in k})  # frozen block
    r = lineage_pair(mem("a", base), mem("b", edited))
    assert r.verdict == "derived"
    s = statuses(r)
    assert s["layer 1"] == "identical" and s["layer 0"] == s["layer 2"] == "shared"
    block1 = [i for i in r.identity if "layers.1." in i.a]
    assert block1 and all(i.identical and i.bitwise for i in block1)
    trained = [i for i in r.identity if "layers.0." in i.a and "proj" in i.a]
    assert trained and not any(i.identical for i in trained)


def test_bf16_cast_of_an_fp32_model_is_derived() -> None:
    """A float32 model released in bf16 (rounding on every weight): not the same bits, derived."""
    init = tf.cast(llama_state(GQA, 8), torch.float32)
    noisy = {k: v + 1e-3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
             for k, v in init.items()}  # fmt: skip
    r = lineage_pair(mem("a", noisy), mem("b", tf.cast(noisy, torch.bfloat16)))
    assert r.verdict in ("same-weights", "derived") and r.log10_p < -6
    r = lineage_pair(mem("a", init), mem("b", tf.permute_mlp(tf.cast(init, torch.bfloat16))))
    assert r.verdict == "derived" and r.log10_p < -6


def test_whole_matrix_rescaling_and_sign_flips_are_derived(base: dict[str, torch.Tensor]) -> None:
    """q * c with k / c, v * -c with o / -c (function-preserving), then further training."""
    edited = dict(base)
    for i in range(GQA.layers):
        p = f"model.layers.{i}.self_attn."
        for name, factor in (("q", 3.0), ("k", 1 / 3), ("v", -2.0), ("o", -0.5)):
            w = base[p + f"{name}_proj.weight"]
            edited[p + f"{name}_proj.weight"] = (w.float() * factor).to(w.dtype)
    r = lineage_pair(mem("a", base), mem("b", tf.train_noise(edited, 0.2)))
    assert r.verdict == "derived" and r.log10_p < -6
    assert {t.kind for t in r.tests if t.hits == t.units_a} >= {"mlp", "attn_kv", "attn_q"}


def test_tensors_without_a_partner_are_reported(base: dict[str, torch.Tensor]) -> None:
    added = dict(base)
    added["model.extra_adapter.weight"] = torch.randn(17, 33)
    r = lineage_pair(mem("a", base), mem("b", added))
    assert r.verdict == "derived"  # not same-weights: B has a tensor A lacks
    assert any("not paired by name" in n and "1 of B" in n and "extra_adapter" in n
               for n in r.notes)  # fmt: skip
    r = lineage_pair(mem("a", base), mem("b", tf.renumber(base, [0, 2])))
    assert not any("not paired" in n for n in r.notes)  # the missing block says it already
    a = {**_mlp_net(0), "enc.odd.weight": torch.randn(10, 7)}
    b = {k: v * 1.1 for k, v in _mlp_net(0).items()}
    r = lineage_pair(MemorySource("a", a), MemorySource("b", b))
    assert r.verdict == "derived"
    assert any("1 matrices of A, 0 of B (e.g. enc.odd.weight)" in n for n in r.notes)


# ------------------------------------------------------------------------------ generic family


def _mlp_net(seed: int, names: tuple[str, ...] = ("enc.fc1.weight", "enc.fc2.weight")) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        names[0]: torch.randn(96, 48, generator=gen),
        names[1]: torch.randn(40, 96, generator=gen),
        "enc.fc1.bias": torch.zeros(96),
    }


def test_generic_family_derived_and_independent() -> None:
    a = _mlp_net(0)
    b = {k: v + 0.5 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1))
         for k, v in a.items()}  # fmt: skip
    r = lineage_pair(MemorySource("a", a), MemorySource("b", b))
    assert r.family == "generic" and r.verdict == "derived"
    assert {t.kind for t in r.tests} == {"matrix"}
    r2 = lineage_pair(MemorySource("a", a), MemorySource("c", _mlp_net(2)))
    assert r2.verdict == "independent"


def test_generic_renamed_tensors_are_paired_by_structure() -> None:
    a = _mlp_net(0)
    renamed = _mlp_net(0, ("body.lin_in.weight", "body.lin_out.weight"))
    r = lineage_pair(MemorySource("a", a), MemorySource("b", renamed))
    assert r.verdict == "same-weights"  # paired by structure, equal
    renamed["body.lin_in.weight"] = renamed["body.lin_in.weight"] * 1.5
    r = lineage_pair(MemorySource("a", a), MemorySource("b", renamed))
    assert r.verdict == "derived"
    assert {(t.a, t.b) for t in r.tests} == {
        ("enc.fc1.weight", "body.lin_in.weight"),
        ("enc.fc2.weight", "body.lin_out.weight"),
    }


def _chain(seed: int, widths: tuple[int, ...] = (48, 96, 96, 40)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {f"net.{i}.weight": torch.randn(widths[i + 1], widths[i], generator=gen)
            for i in range(len(widths) - 1)}  # fmt: skip


def test_generic_permuted_hidden_units_keep_every_matrix_shared() -> None:
    """Linear chain, both hidden layers permuted (rows of one matrix, columns of the next)."""
    a = _chain(0)
    gen = torch.Generator().manual_seed(1)
    p1, p2 = torch.randperm(96, generator=gen), torch.randperm(96, generator=gen)
    b = {
        "net.0.weight": a["net.0.weight"][p1],
        "net.1.weight": a["net.1.weight"][p2][:, p1],
        "net.2.weight": a["net.2.weight"][:, p2],
    }
    b = {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in b.items()}
    r = lineage_pair(MemorySource("a", a), MemorySource("b", b))
    assert r.verdict == "derived"
    assert all(e.status == "shared" for e in r.layers), [(e.part, e.status) for e in r.layers]
    notes = {t.a: t.note for t in r.tests}
    assert notes["net.1.weight"] == "columns aligned by the row matching of net.0.weight"
    assert notes["net.2.weight"] == "columns aligned by the row matching of net.1.weight"
    assert notes["net.0.weight"] == ""


def test_generic_column_alignment_keeps_the_null_exact() -> None:
    """A shared, permuted first layer aligns the next one's columns; when that next layer is
    independent in A and B its p-values stay uniform (KS), and the pair names it."""
    gen = torch.Generator().manual_seed(2)
    ps = []
    for k in range(40):
        a, b = _chain(100 + 2 * k, (32, 48, 24)), _chain(101 + 2 * k, (32, 48, 24))
        b["net.0.weight"] = a["net.0.weight"][torch.randperm(48, generator=gen)] * 1.1
        r = lineage_pair(MemorySource("a", a), MemorySource("b", b))
        second = next(t for t in r.tests if t.a == "net.1.weight")
        assert second.note.startswith("columns aligned")
        ps.append(10**second.log10_p)
        assert r.verdict == "derived"
    assert stats.kstest(ps, "uniform").pvalue > 1e-3
    assert sum(p < 0.01 for p in ps) <= 3


# ------------------------------------------------------------------------------ errors


def test_different_hidden_sizes_are_not_comparable(base: dict[str, torch.Tensor]) -> None:
    other = LlamaShape(layers=2, hidden=32, intermediate=64, heads=2, kv_heads=1, vocab=256)
    with pytest.raises(NotComparableError) as info:
        lineage_pair(mem("a", base), mem("b", llama_state(other, 1), other))
    assert info.value.exit_code == EXIT_NOT_COMPARABLE
    assert "hidden sizes differ" in str(info.value) and "\n" not in str(info.value)


def test_nothing_comparable_in_generic_family() -> None:
    a = {"x.weight": torch.randn(8, 8)}
    b = {"y.weight": torch.randn(8, 5)}
    with pytest.raises(NotComparableError, match="nothing comparable"):
        lineage_pair(MemorySource("a", a), MemorySource("b", b))


def test_more_than_two_checkpoints_keep_the_comparable_pairs(base: dict) -> None:
    other = LlamaShape(layers=2, hidden=32, intermediate=64, heads=2, kv_heads=1, vocab=256)
    result = lineage(
        [
            mem("a", base),
            mem("b", tf.train_noise(base, 0.2)),
            mem("c", llama_state(other, 1), other),
        ]
    )
    assert [(p.a, p.b) for p in result.pairs] == [("a", "b")]
    assert set(result.errors) == {(0, 2), (1, 2)}


# ------------------------------------------------------------------------------ files and bytes


def test_on_disk_sharded_and_fused(tmp_path: Path, base: dict[str, torch.Tensor]) -> None:
    """Real safetensors files; B fuses gate/up and q/k/v (Phi-3 layout) and is sharded."""
    pa = write_model(tmp_path / "a", base, GQA.config())
    fused = {k: v for k, v in base.items() if not any(
        s in k for s in ("gate_proj", "up_proj", "q_proj", "k_proj", "v_proj"))}  # fmt: skip
    for i in range(GQA.layers):
        p = f"model.layers.{i}."
        fused[p + "mlp.gate_up_proj.weight"] = torch.cat(
            [base[p + "mlp.gate_proj.weight"], base[p + "mlp.up_proj.weight"]]
        )
        fused[p + "self_attn.qkv_proj.weight"] = torch.cat(
            [base[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]
        )
    from tests.conftest import write_checkpoint

    pb = write_checkpoint(tmp_path / "b", fused, shards=2, config=GQA.config())
    r = lineage_pair(str(pa), str(pb))
    assert r.verdict == "derived"
    mlp = [t for t in r.tests if t.kind == "mlp"]
    assert len(mlp) == GQA.layers and all(t.hits == GQA.intermediate for t in mlp)
    assert 0 < r.bytes_read <= r.pair_bytes


def test_bytes_read_follow_the_plan(tmp_path: Path, base: dict[str, torch.Tensor]) -> None:
    big = LlamaShape(layers=2, hidden=64, intermediate=512, heads=4, kv_heads=2, vocab=4096)
    settings = LineageSettings(max_units=128, max_tokens=256, identity_bytes=512)
    state = llama_state(big, 0)
    pa = write_model(tmp_path / "a", state, big.config())
    pb = write_model(tmp_path / "b", tf.train_noise(state, 0.1), big.config())
    r = lineage([str(pa), str(pb)], settings).pairs[0]
    layout = build_layout(MemorySource("x", state, big.config()).tensors, big.config())
    planned = 2 * read_bytes(layout, plan_reads(layout, layout, settings))
    assert r.bytes_read == planned
    assert r.read_fraction < 0.2
    assert r.verdict == "derived"


def test_qwen25_7b_plan_reads_under_15_percent() -> None:
    header = llama_header(QWEN25_7B)
    assert sum(t.nbytes for t in header.values()) == pytest.approx(15.23e9, rel=1e-3)
    layout = build_layout(header, QWEN25_7B.config())
    assert layout.heads is not None and layout.heads.n_kv == 4
    pb = plan_bytes(layout, layout)
    assert pb.fraction < 0.15
    assert pb.read_a == 1_467_583_488  # 9.6 % of the pair; quoted in docs/lineage.md


# ------------------------------------------------------------------------------ calibration


def test_p_values_uniform_under_the_null() -> None:
    """KS test: combined and per-test p-values of 40 independently initialised pairs."""
    shape = LlamaShape(layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=64)
    combined, single = [], []
    for k in range(40):
        r = lineage_pair(
            mem(f"a{k}", llama_state(shape, 2 * k), shape),
            mem(f"b{k}", llama_state(shape, 2 * k + 1), shape),
        )
        combined.append(10**r.log10_p)
        single += [10**t.log10_p for t in r.tests if t.in_combined]
    assert stats.kstest(combined, "uniform").pvalue > 1e-3
    assert stats.kstest(single, "uniform").pvalue > 1e-3
    assert sum(p < 0.01 for p in combined) <= 3


# ------------------------------------------------------------------------------ outputs


def test_outputs(tmp_path: Path, base: dict[str, torch.Tensor]) -> None:
    result = lineage(
        [mem("a", base), mem("b", tf.train_noise(base, 0.2)), mem("c", llama_state(GQA, 9))]
    )
    frame = lineage_frame(result)
    assert frame["verdict"][0] == "derived" and "derived" not in list(frame["verdict"][1:])
    assert {"a", "b", "verdict", "p_value", "effect", "bytes_read", "pair_bytes"} <= set(frame)
    assert len(lineage_tests_frame(result)) == sum(len(p.tests) for p in result.pairs)
    assert "status" in lineage_layers_frame(result)
    matrix = lineage_matrix(result)
    assert matrix.loc["a", "b"] == matrix.loc["b", "a"] > 6
    assert lineage_matrix(result, "verdict").loc["c", "a"] == frame["verdict"][1]
    doc = json.loads(json.dumps(lineage_json(result)))
    assert doc["pairs"][0]["verdict"] == "derived" and doc["checkpoints"] == ["a", "b", "c"]
    console = Console(width=140, file=__import__("io").StringIO(), color_system=None)
    render_lineage(console, result)
    text = console.file.getvalue()
    assert "derived" in text and frame["verdict"][1] in text
    pytest.importorskip("matplotlib")
    from opdgeo.lineage.plot import lineage_heatmap

    paths = lineage_heatmap(result, tmp_path / "fig")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size for p in paths)


def test_usage_errors(base: dict[str, torch.Tensor]) -> None:
    from opdgeo.errors import EXIT_USAGE, ConfigError

    with pytest.raises(ConfigError) as info:
        lineage([mem("a", base)])
    assert info.value.exit_code == EXIT_USAGE
    with pytest.raises(ConfigError, match="twice"):
        lineage([mem("a", base), mem("a", base)])


def test_heatmap_order_clusters_families(base: dict[str, torch.Tensor]) -> None:
    """The heatmap's leaf order puts derived checkpoints next to each other."""
    from opdgeo.lineage.plot import cluster_order

    other = llama_state(GQA, 21)
    result = lineage(
        [
            mem("a", base),
            mem("x", other),
            mem("b", tf.train_noise(base, 0.3)),
            mem("y", tf.train_noise(other, 0.3, seed=4)),
        ]
    )
    order = [result.labels[i] for i in cluster_order(result)]
    assert sorted(order) == ["a", "b", "x", "y"]
    position = {label: k for k, label in enumerate(order)}
    assert abs(position["a"] - position["b"]) == 1 and abs(position["x"] - position["y"]) == 1
