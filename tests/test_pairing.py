"""Pairing tensors of two checkpoints by name: aliases, ties, resizes, skips, scopes, order."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from opdgeo.config import Settings
from opdgeo.engine import compare
from opdgeo.errors import ConfigError, NotComparableError
from opdgeo.io import Checkpoint, open_checkpoint
from opdgeo.naming import canonical, layer_index, module_type
from opdgeo.pairing import Plan, plan_pairs
from tests.conftest import Tensors, perturb, tiny_model

MakeCkpt = Callable[..., Path]


@pytest.fixture
def open_pair(make_checkpoint: MakeCkpt) -> Callable[..., tuple[Checkpoint, Checkpoint]]:
    """``open_pair(base_tensors, tuned_tensors, base_shards=1, tuned_shards=1)``."""

    def make(
        base: Tensors, tuned: Tensors, base_shards: int = 1, tuned_shards: int = 1
    ) -> tuple[Checkpoint, Checkpoint]:
        b = open_checkpoint(str(make_checkpoint("base", base, base_shards)))
        t = open_checkpoint(str(make_checkpoint("tuned", tuned, tuned_shards)))
        return b, t

    return make


OpenPair = Callable[..., tuple[Checkpoint, Checkpoint]]


def _plan(base: Checkpoint, tuned: Checkpoint, **settings: Any) -> Plan:
    return plan_pairs(base, tuned, Settings(**settings))


def _skips(plan: Plan) -> dict[str, str]:
    return {s.name: s.reason for s in plan.skipped}


# -- name matching -------------------------------------------------------------------------


def test_exact_names_pair(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    base, tuned = open_pair(base_t, perturb(base_t))
    plan = _plan(base, tuned)
    assert plan.skipped == []
    assert {p.name for p in plan.pairs} == set(base_t)
    for p in plan.pairs:
        assert p.name == p.base_name == p.tuned_name
        assert p.shape == base.tensors[p.name].shape
        assert (p.rows, p.added_rows, p.tied) == (None, 0, False)
        assert p.module == module_type(p.name)
        assert p.layer == layer_index(p.name)
    assert plan.n_params == base.n_params


def _vlm(name: str) -> str:
    return (
        "model.language_model." + name.removeprefix("model.") if name.startswith("model.") else name
    )


ALIASES: dict[str, Callable[[str], str]] = {
    "ddp-module": lambda n: "module." + n,
    "torch-compile": lambda n: "_orig_mod." + n,
    "peft-merged": lambda n: "base_model.model." + n,
    "vlm-model-language-model": _vlm,
    "llava-language-model": lambda n: "language_model." + n,
    "no-model-prefix": lambda n: n.removeprefix("model."),
    "compile-of-ddp": lambda n: "_orig_mod.module." + n,
}


@pytest.mark.parametrize("rename", list(ALIASES.values()), ids=list(ALIASES))
def test_alias_prefixes_pair(open_pair: OpenPair, rename: Callable[[str], str]) -> None:
    base_t = tiny_model()
    tuned_t = {rename(k): v for k, v in perturb(base_t).items()}
    assert set(tuned_t) != set(base_t)
    base, tuned = open_pair(base_t, tuned_t)
    plan = _plan(base, tuned)
    assert plan.skipped == []
    assert {p.name: p.tuned_name for p in plan.pairs} == {k: rename(k) for k in base_t}
    for p in plan.pairs:
        assert p.base_name == p.name
        assert not p.tied
        assert p.module == module_type(p.name)


def test_alias_in_base_direction(open_pair: OpenPair) -> None:
    tuned_t = tiny_model()
    base_t = {"module." + k: v for k, v in tuned_t.items()}
    base, tuned = open_pair(base_t, perturb(tuned_t))
    plan = _plan(base, tuned)
    assert {p.name: p.tuned_name for p in plan.pairs} == {"module." + k: k for k in tuned_t}


def test_ambiguous_aliases_do_not_pair(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    tuned_t = dict(base_t)
    w = tuned_t.pop("model.norm.weight")
    tuned_t["module.model.norm.weight"] = w
    tuned_t["_orig_mod.model.norm.weight"] = w.clone()
    base, tuned = open_pair(base_t, tuned_t)
    plan = _plan(base, tuned)
    assert "model.norm.weight" not in {p.name for p in plan.pairs}
    skips = _skips(plan)
    assert skips["model.norm.weight"] == "only in base"
    assert skips["module.model.norm.weight"] == "only in tuned"
    assert skips["_orig_mod.model.norm.weight"] == "only in tuned"


# -- tied embeddings -----------------------------------------------------------------------


def test_tied_lm_head_missing_in_tuned(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    tuned_t = {k: v for k, v in perturb(base_t).items() if k != "lm_head.weight"}
    base, tuned = open_pair(base_t, tuned_t)
    plan = _plan(base, tuned)
    assert plan.skipped == []
    by_name = {p.name: p for p in plan.pairs}
    lm = by_name["lm_head.weight"]
    assert (lm.base_name, lm.tuned_name, lm.tied) == (
        "lm_head.weight",
        "model.embed_tokens.weight",
        True,
    )
    assert lm.module == "lm_head"
    emb = by_name["model.embed_tokens.weight"]
    assert (emb.tuned_name, emb.tied) == ("model.embed_tokens.weight", False)
    assert sum(p.tied for p in plan.pairs) == 1
    lm_numel = math.prod(base.tensors["lm_head.weight"].shape)
    assert plan.n_params == base.n_params - lm_numel == tuned.n_params


def test_tied_lm_head_missing_in_base(open_pair: OpenPair) -> None:
    tuned_t = tiny_model()
    base_t = {k: v for k, v in tuned_t.items() if k != "lm_head.weight"}
    base, tuned = open_pair(base_t, perturb(tuned_t))
    plan = _plan(base, tuned)
    assert plan.skipped == []
    lm = next(p for p in plan.pairs if p.tied)
    assert (lm.name, lm.base_name, lm.tuned_name) == (
        "lm_head.weight",
        "model.embed_tokens.weight",
        "lm_head.weight",
    )
    assert lm.module == "lm_head"
    assert plan.n_params == base.n_params


def test_tied_pair_runs_through_engine(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    tuned_t = {k: v for k, v in base_t.items() if k != "lm_head.weight"}
    base, tuned = open_pair(base_t, tuned_t)
    plan = _plan(base, tuned, scope="all", include="embed|lm_head")
    records = {r.tensor: r.row() for r in compare(base, tuned, plan, Settings())}
    assert records["lm_head.weight"]["tied"] is True
    assert records["lm_head.weight"]["tuned_name"] == "model.embed_tokens.weight"
    assert records["model.embed_tokens.weight"]["sparsity_bf16"] == 1.0
    # base lm_head vs tuned embed_tokens: independent random matrices, nearly all entries differ
    assert records["lm_head.weight"]["sparsity_bf16"] < 0.1


# -- vocabulary resize ---------------------------------------------------------------------


def _resized(base_t: Tensors, extra: int, seed: int = 5) -> Tensors:
    gen = torch.Generator().manual_seed(seed)
    out = dict(base_t)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w = base_t[name]
        if extra >= 0:
            new = (torch.randn(extra, w.shape[1], generator=gen) * 0.02).to(w.dtype)
            out[name] = torch.cat([w, new])
        else:
            out[name] = w[:extra].clone()
    return out


def test_vocab_resize_pairs_shared_rows(open_pair: OpenPair) -> None:
    base_t = tiny_model(vocab=64, hidden=32)
    base, tuned = open_pair(base_t, _resized(base_t, 8))
    plan = _plan(base, tuned)
    assert plan.skipped == []
    by_name = {p.name: p for p in plan.pairs}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        p = by_name[name]
        assert (p.rows, p.added_rows, p.shape) == (64, 8, (64, 32))
        assert p.numel == 64 * 32
        assert tuned.tensors[name].shape == (72, 32)
    others = [
        p for n, p in by_name.items() if n not in ("model.embed_tokens.weight", "lm_head.weight")
    ]
    assert all(p.rows is None and p.added_rows == 0 for p in others)
    assert plan.n_params == base.n_params


def test_vocab_resize_compares_only_shared_rows(open_pair: OpenPair) -> None:
    base_t = tiny_model(vocab=64, hidden=32)
    base, tuned = open_pair(base_t, _resized(base_t, 8))
    plan = _plan(base, tuned)
    records = {r.tensor: r.row() for r in compare(base, tuned, plan, Settings())}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        r = records[name]
        assert r["skipped"] == ""
        assert r["added_rows"] == 8
        assert r["shape"] == "64x32"
        assert r["numel"] == 64 * 32
        assert r["sparsity_bf16"] == 1.0


def test_vocab_shrink(open_pair: OpenPair) -> None:
    base_t = tiny_model(vocab=64, hidden=32)
    base, tuned = open_pair(base_t, _resized(base_t, -4))
    plan = _plan(base, tuned)
    p = next(p for p in plan.pairs if p.name == "model.embed_tokens.weight")
    assert (p.rows, p.added_rows, p.shape) == (60, -4, (60, 32))
    records = {r.tensor: r.row() for r in compare(base, tuned, plan, Settings())}
    assert records["model.embed_tokens.weight"]["sparsity_bf16"] == 1.0


def test_vocab_resize_with_tied_head(open_pair: OpenPair) -> None:
    base_t = tiny_model(vocab=64, hidden=32)
    tuned_t = {k: v for k, v in _resized(base_t, 8).items() if k != "lm_head.weight"}
    base, tuned = open_pair(base_t, tuned_t)
    plan = _plan(base, tuned)
    lm = next(p for p in plan.pairs if p.name == "lm_head.weight")
    assert (lm.tied, lm.rows, lm.added_rows, lm.shape) == (True, 64, 8, (64, 32))


def test_embedding_with_other_hidden_size_is_a_shape_mismatch(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    tuned_t = dict(base_t)
    tuned_t["model.embed_tokens.weight"] = torch.zeros(64, 16, dtype=torch.bfloat16)
    base, tuned = open_pair(base_t, tuned_t)
    plan = _plan(base, tuned)
    skip = next(s for s in plan.skipped if s.name == "model.embed_tokens.weight")
    assert skip.reason == "shape mismatch [64, 32] vs [64, 16]"
    assert (skip.base_shape, skip.tuned_shape) == ((64, 32), (64, 16))


# -- skipped tensors -----------------------------------------------------------------------

Q0 = "model.layers.0.self_attn.q_proj.weight"
DOWN0 = "model.layers.0.mlp.down_proj.weight"


def test_skip_reasons(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    tuned_t = perturb(base_t)
    tuned_t[Q0] = torch.zeros(16, 32, dtype=torch.bfloat16)
    base_t["model.layers.0.self_attn.extra.weight"] = torch.zeros(4, 4)
    tuned_t["model.layers.1.mlp.new.weight"] = torch.zeros(4, 4)
    for ckpt in (base_t, tuned_t):
        ckpt["model.position_ids"] = torch.arange(8, dtype=torch.int64)
        ckpt["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 32).to(torch.float8_e4m3fn)
    tuned_t[DOWN0 + "_scale"] = torch.ones(1)
    base, tuned = open_pair(base_t, tuned_t)
    plan = _plan(base, tuned)
    skips = _skips(plan)
    assert skips[Q0].startswith("shape mismatch")
    assert skips[Q0] == "shape mismatch [32, 32] vs [16, 32]"
    assert skips["model.layers.0.self_attn.extra.weight"] == "only in base"
    assert skips["model.layers.1.mlp.new.weight"] == "only in tuned"
    assert skips["model.position_ids"] == "non-float dtype I64"
    fp8 = "quantized dtype F8_E4M3 without a decodable scale"
    assert skips["model.layers.1.self_attn.k_proj.weight"] == fp8
    assert DOWN0 not in skips  # a float weight is compared whatever siblings it has (issue 14)
    assert skips[DOWN0 + "_scale"] == "only in tuned"
    paired = {p.name for p in plan.pairs}
    assert paired.isdisjoint(skips)
    assert paired | set(skips) == set(base_t) | set(tuned_t)


def test_quantized_on_one_side_only(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    tuned_t = dict(base_t)
    tuned_t[Q0] = base_t[Q0].float().to(torch.float8_e5m2)
    base, tuned = open_pair(base_t, tuned_t)
    assert _skips(_plan(base, tuned)) == {Q0: "quantized dtype F8_E5M2 without a decodable scale"}


@pytest.mark.parametrize("suffix", [".weight_scale", ".weight_scale_inv", ".scales", ".absmax"])
def test_scale_sibling_in_base(open_pair: OpenPair, suffix: str) -> None:
    """A bf16 weight beside an unrelated scale-like sibling is still compared (issue 14)."""
    base_t = tiny_model()
    tuned_t = dict(base_t)
    base_t[DOWN0.removesuffix(".weight") + suffix] = torch.ones(1)
    base, tuned = open_pair(base_t, tuned_t)
    assert DOWN0 not in _skips(_plan(base, tuned))
    assert DOWN0 in {p.name for p in _plan(base, tuned).pairs}


def test_no_shared_names(open_pair: OpenPair) -> None:
    base, tuned = open_pair({"a.weight": torch.zeros(2, 2)}, {"b.weight": torch.zeros(2, 2)})
    with pytest.raises(NotComparableError, match="share no tensor names") as err:
        _plan(base, tuned)
    assert err.value.exit_code == 3


def test_every_shared_tensor_shape_mismatched(open_pair: OpenPair) -> None:
    base_t = tiny_model(hidden=32)
    tuned_t = tiny_model(hidden=16)
    base, tuned = open_pair(base_t, tuned_t)
    with pytest.raises(NotComparableError, match="differs in shape") as err:
        _plan(base, tuned)
    assert err.value.exit_code == 3


def test_nothing_comparable_for_dtype_reasons(open_pair: OpenPair) -> None:
    ids = {"ids": torch.arange(4), "mask": torch.ones(3, dtype=torch.int32)}
    base, tuned = open_pair(ids, dict(ids))
    with pytest.raises(NotComparableError, match="ids: non-float dtype I64") as err:
        _plan(base, tuned)
    assert err.value.exit_code == 3


@pytest.mark.parametrize(
    "settings",
    [
        {"include": "no_such_tensor"},
        {"exclude": "."},
        {"scope": "attention", "include": "mlp"},
        {"scope": "linear", "include": "embed"},
    ],
    ids=["include", "exclude", "attention-mlp", "linear-embed"],
)
def test_selection_leaving_nothing_is_a_config_error(
    open_pair: OpenPair, settings: dict[str, Any]
) -> None:
    base_t = tiny_model()
    base, tuned = open_pair(base_t, perturb(base_t))
    with pytest.raises(ConfigError, match="no comparable tensor left after the selection") as err:
        _plan(base, tuned, **settings)
    assert err.value.exit_code == 2


# -- scopes and filters --------------------------------------------------------------------

PROJS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLPS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _scoped(open_pair: OpenPair, **settings: Any) -> set[str]:
    base_t = tiny_model(layers=3)
    base_t["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(32)
    base, tuned = open_pair(base_t, perturb(base_t))
    plan = _plan(base, tuned, **settings)
    return {p.name for p in plan.pairs}


def test_scope_linear(open_pair: OpenPair) -> None:
    expected = {f"model.layers.{i}.{m}.weight" for i in range(3) for m in PROJS + MLPS}
    assert _scoped(open_pair, scope="linear") == expected


def test_scope_attention(open_pair: OpenPair) -> None:
    expected = {f"model.layers.{i}.{m}.weight" for i in range(3) for m in PROJS}
    assert _scoped(open_pair, scope="attention") == expected


def test_scope_all_keeps_everything(open_pair: OpenPair) -> None:
    names = _scoped(open_pair)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= names
    assert "model.layers.0.self_attn.q_proj.bias" in names
    assert len(names) == 2 + 3 * 8 + 1 + 1


def test_include_and_exclude(open_pair: OpenPair) -> None:
    assert _scoped(open_pair, include=r"layers\.1\.mlp") == {
        f"model.layers.1.{m}.weight" for m in MLPS
    }
    excluded = _scoped(open_pair, exclude=r"mlp|norm")
    assert not any("mlp" in n or "norm" in n for n in excluded)
    assert "model.layers.2.self_attn.o_proj.weight" in excluded
    both = _scoped(open_pair, scope="attention", include=r"layers\.[12]\.", exclude="k_proj")
    assert both == {
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (1, 2) for p in ("q", "v", "o")
    }


def test_filters_apply_to_skipped_tensors(open_pair: OpenPair) -> None:
    base_t = tiny_model()
    tuned_t = perturb(base_t)
    base_t["model.layers.0.mlp.extra.weight"] = torch.zeros(4, 4)
    base, tuned = open_pair(base_t, tuned_t)
    assert _skips(_plan(base, tuned, scope="attention")) == {}
    assert _skips(_plan(base, tuned)) == {"model.layers.0.mlp.extra.weight": "only in base"}


# -- order and shard independence ------------------------------------------------------------


def test_pairs_follow_tuned_file_order(open_pair: OpenPair) -> None:
    base_t = tiny_model(layers=3)
    tuned_t = dict(reversed(perturb(base_t).items()))
    base, tuned = open_pair(base_t, tuned_t, base_shards=2, tuned_shards=3)
    plan = _plan(base, tuned)
    order = [p.tuned_name for p in plan.pairs]
    positions = [tuned.file_position(n) for n in order]
    assert positions == sorted(positions)
    assert len(order) == len(base_t)
    assert [p[0] for p in positions] == sorted(p[0] for p in positions)
    # The tuned shards really do cut the model elsewhere than the base's.
    assert order != sorted(order, key=base.file_position)
    first_tuned_shard = {n for n in tuned.tensors if tuned.file_position(n)[0] == 0}
    first_base_shard = {n for n in base.tensors if base.file_position(n)[0] == 0}
    assert first_tuned_shard != first_base_shard
    assert set(order[: len(first_tuned_shard)]) == first_tuned_shard


def _records(base: Checkpoint, tuned: Checkpoint) -> dict[str, dict[str, Any]]:
    plan = _plan(base, tuned)
    return {r.tensor: r.row() for r in compare(base, tuned, plan, Settings())}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def test_sharded_and_single_file_give_identical_metrics(make_checkpoint: MakeCkpt) -> None:
    base_t = tiny_model(layers=2)
    tuned_t = perturb(base_t, scale=1e-2)
    single = _records(
        open_checkpoint(str(make_checkpoint("b1", base_t))),
        open_checkpoint(str(make_checkpoint("t1", tuned_t))),
    )
    sharded = _records(
        open_checkpoint(str(make_checkpoint("b2", base_t, shards=2))),
        open_checkpoint(str(make_checkpoint("t3", tuned_t, shards=3))),
    )
    assert set(single) == set(sharded) == set(base_t)
    for name, rec in single.items():
        other = sharded[name]
        assert set(rec) == set(other)
        for key, value in rec.items():
            if key in ("run", "base"):
                continue
            assert _same(value, other[key]), (name, key, value, other[key])
        assert rec["skipped"] == ""
        assert 0.0 <= rec["sparsity_bf16"] < 1.0


# -- naming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.weight"),
        ("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.weight"),
        ("module.model.layers.0.mlp.up_proj.weight", "layers.0.mlp.up_proj.weight"),
        ("_orig_mod.model.norm.weight", "norm.weight"),
        ("_orig_mod.module.model.norm.weight", "norm.weight"),
        ("module._orig_mod.model.norm.weight", "norm.weight"),
        ("base_model.model.model.layers.3.mlp.down_proj.weight", "layers.3.mlp.down_proj.weight"),
        ("base_model.model.lm_head.weight", "lm_head.weight"),
        (
            "model.language_model.layers.1.self_attn.o_proj.weight",
            "layers.1.self_attn.o_proj.weight",
        ),
        ("model.language_model.embed_tokens.weight", "embed_tokens.weight"),
        ("language_model.model.layers.1.mlp.gate_proj.weight", "layers.1.mlp.gate_proj.weight"),
        ("language_model.lm_head.weight", "lm_head.weight"),
        ("lm_head.weight", "lm_head.weight"),
        ("model.embed_tokens.weight", "embed_tokens.weight"),
        ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.weight"),
    ],
)
def test_canonical(name: str, expected: str) -> None:
    assert canonical(name) == expected
    assert canonical(canonical(name)) == canonical(name)  # idempotent


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.0.self_attn.q_proj.weight", "q"),
        ("model.layers.0.self_attn.q_proj.bias", "q"),
        ("model.layers.0.self_attn.k_proj.weight", "k"),
        ("model.layers.0.self_attn.v_proj.weight", "v"),
        ("model.layers.0.self_attn.o_proj.weight", "o"),
        ("model.layers.0.mlp.gate_proj.weight", "gate"),
        ("model.layers.0.mlp.up_proj.weight", "up"),
        ("model.layers.0.mlp.down_proj.weight", "down"),
        ("model.layers.0.mlp.gate_up_proj.weight", "gate_up"),
        ("model.layers.0.self_attn.qkv_proj.weight", "qkv"),
        ("model.embed_tokens.weight", "embed"),
        ("lm_head.weight", "lm_head"),
        ("model.norm.weight", "norm"),
        ("model.layers.0.input_layernorm.weight", "norm"),
        ("model.layers.0.post_attention_layernorm.weight", "norm"),
        ("model.layers.0.self_attn.q_norm.weight", "norm"),
        ("model.layers.0.self_attn.rotary_emb.inv_freq", "other"),
        ("model.layers.0.mlp.experts.3.w1.weight", "gate"),
        ("model.layers.0.mlp.experts.3.w2.weight", "down"),
        ("model.layers.0.mlp.experts.3.w3.weight", "up"),
        ("layers.0.attention.wq.weight", "q"),
        ("layers.0.attention.wo.weight", "o"),
        ("layers.0.attention_norm.weight", "norm"),
        ("tok_embeddings.weight", "embed"),
        ("output.weight", "lm_head"),
        ("gpt_neox.layers.0.attention.query_key_value.weight", "qkv"),
        ("gpt_neox.layers.0.attention.dense.weight", "o"),
        ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "up"),
        ("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", "down"),
        ("gpt_neox.embed_out.weight", "lm_head"),
        ("transformer.h.0.attn.c_attn.weight", "qkv"),
        ("transformer.h.0.attn.c_proj.weight", "o"),
        ("transformer.h.0.mlp.c_proj.weight", "down"),
        ("transformer.h.0.mlp.c_fc.weight", "up"),
        ("transformer.wte.weight", "embed"),
        ("transformer.h.0.ln_1.weight", "norm"),
        ("transformer.h.0.ln_2.bias", "norm"),
        ("transformer.ln_f.weight", "norm"),
        ("some.random.tensor", "other"),
    ],
)
def test_module_type(name: str, expected: str) -> None:
    assert module_type(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.0.self_attn.q_proj.weight", 0),
        ("model.layers.17.mlp.up_proj.weight", 17),
        ("layers.5.attention.wq.weight", 5),
        ("transformer.h.3.attn.c_attn.weight", 3),
        ("blocks.7.attn.qkv.weight", 7),
        ("encoder.layer.2.attention.self.query.weight", 2),
        ("model.layers.1.mlp.experts.4.w1.weight", 1),
        ("model.embed_tokens.weight", None),
        ("lm_head.weight", None),
        ("model.norm.weight", None),
        ("transformer.h.weight", None),
        ("model.sublayers.3.weight", None),
    ],
)
def test_layer_index(name: str, expected: int | None) -> None:
    assert layer_index(name) == expected
