"""Mixture-of-experts checkpoints: fused and per-expert layouts give the same per-expert
matrices and numbers; routers, shared experts, expert rows and the summary's expert columns."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import opdgeo
from opdgeo.cli import app
from opdgeo.errors import OpdgeoWarning
from opdgeo.io import open_checkpoint
from opdgeo.io.checkpoint import SliceInfo
from opdgeo.io.experts import describe, plan_split, split_experts
from opdgeo.report import RunResult
from tests.conftest import perturb
from tests.moe_fixtures import CONFIGS, fuse, per_expert

Make = Callable[..., Path]
METRICS = ["delta_fro", "base_fro", "rel_norm", "sparsity_bf16", "angle_left_mean_deg", "nss",
           "principal_energy", "stable_rank", "principal_overlap", "lowmag_overlap"]  # fmt: skip


def _config(layout: str, hidden: int) -> dict:
    cfg = json.loads(json.dumps(CONFIGS[layout]))
    (cfg.get("text_config") or cfg)["hidden_size"] = hidden
    return cfg


def _expert_rows(run: RunResult) -> pd.DataFrame:
    t = run.tensors
    rows = t[t["tensor"].str.contains(r"\.experts\.\d+\.") & (t["skipped"] == "")]
    return rows.set_index("tensor").sort_index()


@pytest.mark.parametrize(("layout", "hidden", "inter", "bias"), [
    ("transformers5", 32, 16, False),  # Qwen3-MoE / Mixtral / DeepSeek in transformers 5
    ("gpt_oss", 24, 24, True),  # hidden_size == intermediate_size: a square down_proj
    ("llama4", 32, 16, False),
])  # fmt: skip
def test_fused_per_expert_and_mixed_pairs_agree(
    make_checkpoint: Make, layout: str, hidden: int, inter: int, bias: bool
) -> None:
    base = per_expert(layers=1, hidden=hidden, inter=inter, experts=3, bias=bias)
    tuned = perturb(base, 1e-2)
    qwen = _config("qwen3_moe", hidden)
    fused_cfg = qwen if layout == "transformers5" else _config(layout, hidden)
    b = make_checkpoint("b", base, config=qwen)
    t = make_checkpoint("t", tuned, config=qwen)
    fb = make_checkpoint("fb", fuse(base, layout), config=fused_cfg)
    ft = make_checkpoint("ft", fuse(tuned, layout), config=fused_cfg)
    runs = opdgeo.compare(str(b), [str(t), str(ft)], cache=False)
    runs += opdgeo.compare(str(fb), [str(t), str(ft)], cache=False)
    ref = _expert_rows(runs[0])
    assert len(ref) == 3 * 3 * (2 if bias else 1)
    matrices = ref[ref.index.str.endswith(".weight")]
    assert matrices["angle_left_mean_deg"].notna().all()  # every expert is a matrix
    assert matrices["spectral_skipped"].isna().all()
    for run in runs[1:]:  # per-expert vs fused, fused vs per-expert, fused vs fused
        got = _expert_rows(run)
        assert list(got.index) == list(ref.index)
        pd.testing.assert_frame_equal(got[METRICS], ref[METRICS], check_exact=True)
        assert list(got["shape"]) == list(ref["shape"])


def test_slices_are_the_modelling_codes_matrices(tmp_path: Path, make_checkpoint: Make) -> None:
    """gpt-oss: gate = gate_up[e][:, ::2].T, up = gate_up[e][:, 1::2].T, down = down[e].T;
    transformers 5: gate = gate_up[e][:I], up = gate_up[e][I:], down = down[e]."""
    gen = torch.Generator().manual_seed(0)
    e, h, i = 3, 8, 6
    gate_up = torch.randn(e, h, 2 * i, generator=gen)
    down = torch.randn(e, i, h, generator=gen)
    path = make_checkpoint("oss", {"model.layers.0.mlp.experts.gate_up_proj": gate_up,
                                   "model.layers.0.mlp.experts.down_proj": down,
                                   "model.layers.0.mlp.experts.gate_up_proj_bias":
                                       torch.zeros(e, 2 * i)},
                           config={"model_type": "gpt_oss", "hidden_size": h})  # fmt: skip
    ckpt = open_checkpoint(str(path))
    split_experts(ckpt)
    p = "model.layers.0.mlp.experts.1."
    assert torch.equal(ckpt.read(p + "gate_proj.weight"), gate_up[1][:, ::2].T)
    assert torch.equal(ckpt.read(p + "up_proj.weight"), gate_up[1][:, 1::2].T)
    assert torch.equal(ckpt.read(p + "down_proj.weight"), down[1].T)
    fused = torch.cat([gate_up.transpose(1, 2)[:, ::2], gate_up.transpose(1, 2)[:, 1::2]], 1)
    path = make_checkpoint("t5", {"model.layers.0.mlp.experts.gate_up_proj": fused,
                                  "model.layers.0.mlp.experts.down_proj": down.transpose(1, 2)},
                           config={"model_type": "qwen3_moe"})  # fmt: skip
    ckpt = open_checkpoint(str(path))
    split_experts(ckpt)
    assert ckpt.tensors[p + "gate_proj.weight"].shape == (i, h)
    assert torch.equal(ckpt.read(p + "gate_proj.weight"), fused[1][:i])
    assert torch.equal(ckpt.read(p + "up_proj.weight"), fused[1][i:])
    assert torch.equal(ckpt.read(p + "down_proj.weight"), down[1].T)


def test_fused_tensor_is_read_once(make_checkpoint: Make) -> None:
    path = make_checkpoint("f", fuse(per_expert()), config=CONFIGS["qwen3_moe"])
    ckpt = open_checkpoint(str(path))
    split_experts(ckpt)
    reads: list[str] = []
    inner = ckpt.source.read

    def counting(info, rows=None, path=None, pin=False):  # type: ignore[no-untyped-def]
        reads.append(info.name)
        return inner(info, rows, path, pin)

    ckpt.source.read = counting  # type: ignore[method-assign]
    names = [n for n in ckpt.tensors if isinstance(ckpt.tensors[n], SliceInfo)]
    # per-expert order (gate, up, down of expert 0, then expert 1 ...) alternates parents
    names.sort(key=lambda n: (n.split(".experts.")[0], int(n.split(".experts.")[1].split(".")[0])))
    ckpt.prepare(names)
    for name in names:
        ckpt.read(name)
    assert sorted(reads) == sorted(n for n in ckpt_parents(ckpt))
    assert not ckpt._parents  # released after the last slice
    sizes = ckpt.read_bytes(names)
    parents = {ckpt.tensors[n].parent.name: ckpt.tensors[n].parent.nbytes for n in names}  # type: ignore[attr-defined]
    assert sum(sizes) == sum(parents.values())
    first: dict[str, int] = {}
    for k, name in enumerate(names):
        first.setdefault(ckpt.tensors[name].parent.name, k)  # type: ignore[attr-defined]
    # a parent's bytes count with its first slice; later slices bring nothing new
    assert [k for k, n in enumerate(sizes) if n] == sorted(first.values())


def ckpt_parents(ckpt: opdgeo.io.Checkpoint) -> set[str]:
    return {i.parent.name for i in ckpt.tensors.values() if isinstance(i, SliceInfo) and i.parent}


def test_mixtral_names_pair_with_transformers5_fused(make_checkpoint: Make) -> None:
    base = per_expert("mixtral")
    tuned = perturb(base, 1e-2)
    renamed = {}
    for k, v in tuned.items():
        for old, new in (("block_sparse_moe.", "mlp."), (".w1.", ".gate_proj."),
                         (".w3.", ".up_proj."), (".w2.", ".down_proj.")):  # fmt: skip
            k = k.replace(old, new)
        renamed[k] = v
    b = make_checkpoint("b", base, config=CONFIGS["mixtral"])
    t = make_checkpoint("t", tuned, config=CONFIGS["mixtral"])
    ft = make_checkpoint("ft", fuse(renamed), config=CONFIGS["mixtral"])
    ref = opdgeo.compare(str(b), str(t), cache=False)[0]
    got = opdgeo.compare(str(b), str(ft), cache=False)[0]
    assert not got.skipped
    assert ref.summary["n_tensors"] == got.summary["n_tensors"]
    for key in ("rel_norm", "stable_rank", "principal_angle_deg", "sparsity_bf16"):
        assert got.summary[key] == ref.summary[key]
    modules = dict(zip(got.tensors["tensor"], got.tensors["module"], strict=True))
    assert modules["model.layers.0.block_sparse_moe.gate.weight"] == "router"
    assert modules["model.layers.1.block_sparse_moe.experts.2.w3.weight"] == "up"


def test_router_and_shared_expert_module_types(make_checkpoint: Make) -> None:
    for family, shared in (("qwen2_moe", "shared_expert."), ("deepseek_v3", "shared_experts.")):
        base = per_expert(family)
        b = make_checkpoint(f"b{family}", base)
        t = make_checkpoint(f"t{family}", perturb(base, 1e-2))
        run = opdgeo.compare(str(b), str(t), cache=False)[0]
        modules = dict(zip(run.tensors["tensor"], run.tensors["module"], strict=True))
        assert modules[f"model.layers.0.mlp.{shared}gate_proj.weight"] == "shared_expert"
        assert modules["model.layers.0.mlp.gate.weight"] == "router"
        groups = {g["group"] for g in run.modules}
        assert {"router", "shared_expert", "gate", "up", "down"} <= groups
        assert run.summary["n_experts"] == 4  # shared experts are not counted as experts
        if family == "deepseek_v3":
            assert modules["model.layers.1.mlp.gate.e_score_correction_bias"] == "router"


def test_expert_rows_and_summary_known_answer(make_checkpoint: Make) -> None:
    """Only expert 2 of layer 1 changes: it holds all the expert update energy."""
    base = per_expert()
    tuned = dict(base)
    for part in ("gate_proj", "up_proj", "down_proj"):
        name = f"model.layers.1.mlp.experts.2.{part}.weight"
        tuned[name] = (base[name].float() * 1.5).bfloat16()
    b = make_checkpoint("b", base, config=CONFIGS["qwen3_moe"])
    ft = make_checkpoint("ft", fuse(tuned), config=CONFIGS["qwen3_moe"])
    run = opdgeo.compare(str(b), str(ft), cache=False)[0]
    s = run.summary
    assert (s["n_experts"], s["n_moe_layers"]) == (4, 2)
    assert s["expert_energy_top10_share"] == 1.0  # 8 units: the top one holds everything
    assert s["expert_most_changed"] == "L1.E2"
    assert len(run.experts) == 8
    row = next(g for g in run.experts if g["group"] == "L1.E2")
    assert (row["expert_layer"], row["expert"], row["n_tensors"]) == (1, 2, 3)
    assert row["rel_norm"] == pytest.approx(0.5, rel=1e-2)
    least = next(g for g in run.experts if g["group"] == s["expert_least_changed"])
    assert least["rel_norm"] == 0.0


def test_dense_model_has_empty_expert_columns(make_checkpoint: Make) -> None:
    from tests.conftest import tiny_model

    base = tiny_model()
    b, t = make_checkpoint("b", base), make_checkpoint("t", perturb(base))
    s = opdgeo.compare(str(b), str(t), cache=False)[0].summary
    assert s["n_experts"] == 0 and s["expert_most_changed"] == ""
    assert math.isnan(s["expert_energy_top10_share"])


def test_ambiguous_fused_layout_is_not_guessed(make_checkpoint: Make) -> None:
    """[E, H, 2I] without a family: gpt-oss interleaves, Llama 4 concatenates; not split."""
    gate_up = torch.randn(4, 8, 12)
    path = make_checkpoint("x", {"model.layers.0.mlp.experts.gate_up_proj": gate_up,
                                 "model.embed_tokens.weight": torch.randn(10, 8)})  # fmt: skip
    ckpt = open_checkpoint(str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slices, blocks = plan_split(ckpt.tensors, ckpt.config)
    assert not slices
    assert "ambiguous" in blocks[0].detail
    assert any(issubclass(w.category, OpdgeoWarning) for w in caught)


def test_cli_per_group_experts_and_inspect(make_checkpoint: Make, tmp_path: Path) -> None:
    base = per_expert()
    b = make_checkpoint("b", base, config=CONFIGS["qwen3_moe"])
    ft = make_checkpoint("ft", fuse(perturb(base, 1e-2)), config=CONFIGS["qwen3_moe"])
    groups = tmp_path / "groups.csv"
    result = CliRunner().invoke(app, ["compare", str(b), str(ft), "--format", "csv",
                                      "--per-group", str(groups), "--no-cache"])  # fmt: skip
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(groups)
    experts = frame[frame["group_by"] == "expert"]
    assert len(experts) == 8 and set(experts["group"]) >= {"L0.E0", "L1.E3"}
    result = CliRunner().invoke(app, ["inspect", str(ft), "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["experts"]
    assert (doc["n_moe_layers"], doc["n_experts"], doc["layouts"]) == (2, 4, ["fused"])
    assert describe(open_checkpoint(str(b)))["layouts"] == ["per-expert"]


def test_mxfp4_gpt_oss_experts_are_split_after_decoding(tmp_path: Path) -> None:
    """gpt-oss MXFP4 experts (``*_blocks`` / ``*_scales``) are decoded by opdgeo.io.quant to
    the fused ``[E, H, 2I]`` float tensor, then split: same numbers as the decoded values
    stored as float32."""
    from tests.quantfixtures import mxfp4, mxfp4_reference, save

    gen = torch.Generator().manual_seed(0)
    e, h, i = 2, 32, 32
    gub, gus = mxfp4(torch.randn(e, 2 * i, h, generator=gen))
    dnb, dns = mxfp4(torch.randn(e, h, i, generator=gen))
    p = "model.layers.0.mlp.experts."
    cfg = {"model_type": "gpt_oss", "hidden_size": h}
    gate_up, down = mxfp4_reference(gub, gus), mxfp4_reference(dnb, dns)
    packed = save(tmp_path / "mx", {p + "gate_up_proj_blocks": gub, p + "gate_up_proj_scales": gus,
                                    p + "down_proj_blocks": dnb, p + "down_proj_scales": dns},
                  {**cfg, "quantization_config": {"quant_method": "mxfp4"}})  # fmt: skip
    plain = save(tmp_path / "f32", {p + "gate_up_proj": gate_up, p + "down_proj": down}, cfg)
    base = save(tmp_path / "base", {p + "gate_up_proj": gate_up * 1.01,
                                    p + "down_proj": down * 1.01}, cfg)  # fmt: skip
    want = _expert_rows(opdgeo.compare(str(base), str(plain), cache=False)[0])
    got = _expert_rows(opdgeo.compare(str(base), str(packed), cache=False)[0])
    assert len(want) == e * 3 and list(got.index) == list(want.index)
    pd.testing.assert_frame_equal(got[METRICS], want[METRICS], check_exact=True)
    doc = describe(open_checkpoint(str(packed)))  # inspect: the experts the blocks decode to
    assert (doc["n_moe_layers"], doc["n_experts"], doc["layouts"]) == (1, e, ["fused"])
    assert doc["blocks"][0]["detail"] == "gate_up [E, H, 2I], gate/up interleaved"


@pytest.mark.parametrize("fmt", ["mxfp4", "fp8", "int8"])
def test_quantized_fused_release_of_its_source_is_quantized_per_expert(
    tmp_path: Path, fmt: str
) -> None:
    """gpt-oss MXFP4 / FP8 / int8 fused experts against the bf16 source they were quantized from:
    each expert slice keeps its decoder's method and quantization step, so the regime is
    ``quantized`` (the slices once lost them: sft-like, quant_step_share NaN; int8 ones were
    not split at all)."""
    from tests.quantfixtures import fp8_block, mxfp4, save

    gen = torch.Generator().manual_seed(1)
    e, h, i = 2, 32, 32
    gate_up = (torch.randn(e, h, 2 * i, generator=gen) * 0.02).bfloat16()  # [E, H, 2I]
    down = (torch.randn(e, i, h, generator=gen) * 0.02).bfloat16()  # [E, I, H]
    p = "model.layers.0.mlp.experts."
    cfg = {"model_type": "gpt_oss", "hidden_size": h}
    base = save(tmp_path / "base", {p + "gate_up_proj": gate_up, p + "down_proj": down}, cfg)
    stored: dict[str, torch.Tensor] = {}
    for name, w in (("gate_up_proj", gate_up), ("down_proj", down)):
        if fmt == "mxfp4":  # blocks [E, out, in/32, 16] of the [E, out, in] transpose
            stored[p + name + "_blocks"], stored[p + name + "_scales"] = mxfp4(
                w.float().transpose(1, 2)
            )
        elif fmt == "fp8":  # [E, m, n] FP8 with [E, ceil(m/128), ceil(n/128)] scales
            q, s = zip(*(fp8_block(w[k].float()) for k in range(e)), strict=True)
            stored[p + name], stored[p + name + "_scale_inv"] = torch.stack(q), torch.stack(s)
        else:  # compressed-tensors int8, one scale per row of each expert: [E, m, 1]
            scale = w.float().abs().amax(dim=2, keepdim=True) / 127
            stored[p + name] = torch.round(w.float() / scale).to(torch.int8)
            stored[p + name + "_scale"] = scale
    quant = {
        "fp8": {"quant_method": "fp8", "weight_block_size": [128, 128]},
        "mxfp4": {"quant_method": "mxfp4"},
        "int8": {"quant_method": "compressed-tensors", "format": "int-quantized"},
    }[fmt]
    tuned = save(tmp_path / fmt, stored, {**cfg, "quantization_config": quant})
    run = opdgeo.compare(str(base), str(tuned), cache=False)[0]
    rows = _expert_rows(run)
    assert len(rows) == e * 3  # split: gate, up, down per expert
    method = "int8-channel" if fmt == "int8" else fmt
    assert rows["method"].str.contains(f"decoding={method}").all()
    assert (rows["quant_within_step"] == rows["quant_params"]).all()
    assert rows["quant_params"].sum() == 3 * e * h * i
    assert run.summary["regime"] == "quantized"
    assert run.summary["quant_step_share"] == 1.0


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen2_moe"])
def test_shared_expert_families_fused_and_per_expert_agree(
    make_checkpoint: Make, family: str
) -> None:
    """DeepSeek-V3 (``mlp.shared_experts``, ``e_score_correction_bias``) and Qwen2-MoE
    (``mlp.shared_expert``, ``shared_expert_gate``) in transformers 5's fused layout give the
    per-expert numbers; shared experts stay whole and are not counted as experts."""
    base = per_expert(family)
    tuned = perturb(base, 1e-2)
    cfg = {"model_type": family, "hidden_size": 32}
    b = make_checkpoint("b", base, config=cfg)
    runs = opdgeo.compare(str(b), [str(make_checkpoint("t", tuned, config=cfg)),
                                   str(make_checkpoint("ft", fuse(tuned), config=cfg))],
                          cache=False)  # fmt: skip
    ref, got = (r.tensors.set_index("tensor").sort_index() for r in runs)
    assert list(got.index) == list(ref.index)
    pd.testing.assert_frame_equal(got[METRICS], ref[METRICS], check_exact=True)
    assert (ref["module"] == "shared_expert").sum() == 2 * 3
    assert runs[1].summary["n_experts"] == 4 and len(runs[1].experts) == 2 * 4
