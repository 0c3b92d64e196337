"""FP8 / compressed-tensors / MXFP4 weights are compared on their dequantized values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import opdgeo
from opdgeo.errors import EXIT_ERROR
from opdgeo.io import open_checkpoint
from opdgeo.io.quant import QuantizationError, dequantized
from tests.quantfixtures import (
    fp8_block,
    fp8_channel,
    fp8_dequant_reference,
    mxfp4,
    mxfp4_reference,
    save,
)

FP8_CONFIG = {"quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                      "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}}  # fmt: skip
CT_CONFIG = {"quantization_config": {"quant_method": "compressed-tensors",
                                     "format": "float-quantized"}}  # fmt: skip
MX_CONFIG = {"quantization_config": {"quant_method": "mxfp4"}}
COLUMNS = ("delta_fro", "base_fro", "max_abs_delta", "nss", "stable_rank", "delta_sigma1",
           "angle_left_mean_deg", "unchanged_bf16")  # fmt: skip


def _base(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": (torch.randn(40, 136, generator=gen) * 0.02),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(200, 136, generator=gen) * 0.02,
        "model.layers.0.mlp.up_proj.weight": torch.randn(264, 136, generator=gen) * 0.02,
        "model.layers.0.input_layernorm.weight": torch.ones(136),
    }


def _bf16(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16) for k, v in tensors.items()}


def _fp8_release(tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(FP8 release with weight_scale_inv, the same values stored as float32)."""
    fp8, plain = {}, {}
    for name, w in tensors.items():
        if name.endswith("proj.weight"):
            q, s = fp8_block(w)
            fp8[name], fp8[name + "_scale_inv"] = q, s
            plain[name] = fp8_dequant_reference(q, s)
        else:
            fp8[name] = plain[name] = w
    return fp8, plain


def _frame(base: Path, tuned: Path, **kw: object) -> tuple[dict, object]:
    run = opdgeo.compare(str(base), str(tuned), **kw)[0]
    return run.summary, run.tensors.set_index("tensor")


def _same(a: object, b: object, names: list[str]) -> None:
    for name in names:
        for col in COLUMNS:
            if col not in a.columns:  # type: ignore[attr-defined]
                continue
            x, y = float(a.loc[name, col]), float(b.loc[name, col])  # type: ignore[attr-defined]
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(
                y, rel=1e-6, abs=1e-12
            ), (name, col, x, y)


def test_fp8_block_dequantizes_with_partial_edge_blocks(tmp_path: Path) -> None:
    w = _base()["model.layers.0.self_attn.q_proj.weight"]  # 200 x 136: edge blocks 72 x 8
    q, s = fp8_block(w)
    assert s.shape == (2, 2)
    path = save(tmp_path / "fp8", {"model.layers.0.self_attn.q_proj.weight": q,
                                   "model.layers.0.self_attn.q_proj.weight_scale_inv": s},
                FP8_CONFIG)  # fmt: skip
    ckpt = dequantized(open_checkpoint(str(path)))
    got = ckpt.read("model.layers.0.self_attn.q_proj.weight")
    assert got.dtype == torch.float32 and got.shape == (200, 136)
    assert torch.equal(got, fp8_dequant_reference(q, s))
    assert got[199, 135] == q[199, 135].float() * s[1, 1]  # last partial block's own scale
    assert "model.layers.0.self_attn.q_proj.weight_scale_inv" in ckpt.consumed


def test_fp8_release_equals_the_same_values_stored_dequantized(tmp_path: Path) -> None:
    source = _base()
    tuned = {k: v * 1.01 + 0.001 if k.endswith("proj.weight") else v for k, v in source.items()}
    fp8, plain = _fp8_release(tuned)
    base = save(tmp_path / "base", _bf16(source))
    a_sum, a = _frame(base, save(tmp_path / "fp8", fp8, FP8_CONFIG))
    b_sum, b = _frame(base, save(tmp_path / "plain", plain))
    names = [n for n in a.index if not a.loc[n, "skipped"]]
    assert "model.layers.0.self_attn.q_proj.weight" in names
    _same(a, b, names)
    assert a.loc["model.layers.0.self_attn.q_proj.weight", "dtype_tuned"] == "F8_E4M3"
    assert "fp8-e4m3-block128x128" in a.loc["model.layers.0.self_attn.q_proj.weight", "method"]
    scale = "model.layers.0.self_attn.q_proj.weight_scale_inv"
    assert "quantization scale" in a.loc[scale, "skipped"]
    assert a_sum["regime"] != "quantized"  # a fine-tune, then quantized


def test_fp8_release_of_the_base_is_reported_as_quantized(tmp_path: Path) -> None:
    source = _bf16(_base())
    fp8, _ = _fp8_release({k: v.float() for k, v in source.items()})
    summary, frame = _frame(
        save(tmp_path / "base", source), save(tmp_path / "fp8", fp8, FP8_CONFIG)
    )
    assert summary["regime"] == "quantized"
    assert summary["quant_step_share"] == 1.0
    assert summary["n_quantized_params"] == 200 * 136 + 264 * 136
    assert "fp8-e4m3-block128x128" in summary["reasons"]
    # one entry pushed a full step off the grid is no longer explained by rounding
    q = fp8["model.layers.0.self_attn.q_proj.weight"].float()
    q[0, 0] = q[0, 0] * 1.5 + 8
    fp8["model.layers.0.self_attn.q_proj.weight"] = q.to(torch.float8_e4m3fn)
    summary, frame = _frame(tmp_path / "base", save(tmp_path / "off", fp8, FP8_CONFIG))
    row = frame.loc["model.layers.0.self_attn.q_proj.weight"]
    assert row["quant_within_step"] == 200 * 136 - 1


@pytest.mark.parametrize("per_channel", [False, True])
def test_compressed_tensors_scales(tmp_path: Path, per_channel: bool) -> None:
    source = _base()
    name = "model.layers.0.mlp.up_proj.weight"
    w = source[name]
    if per_channel:
        q, s = fp8_channel(w)
    else:
        s = (w.abs().max() / 448.0).reshape(1)
        q = (w / s).to(torch.float8_e4m3fn)
    stored = {name: q, name.replace("weight", "weight_scale"): s,
              name.replace("weight", "input_scale"): torch.ones(1)}  # fmt: skip
    a_sum, a = _frame(save(tmp_path / "base", {name: w}), save(tmp_path / "ct", stored, CT_CONFIG))
    _, b = _frame(tmp_path / "base", save(tmp_path / "plain", {name: q.float() * s}))
    _same(a, b, [name])
    layout = "channel" if per_channel else "tensor"
    assert f"fp8-e4m3-{layout}" in a.loc[name, "method"]
    assert (
        "activation quantization scale"
        in a.loc["model.layers.0.mlp.up_proj.input_scale", "skipped"]
    )
    assert a_sum["regime"] == "quantized"


def test_mxfp4_known_bytes() -> None:
    """0x21: low nibble 1 (+0.5) is the even entry, high nibble 2 (+1.0) the odd one; scale
    byte 128 is 2^(128 - 127) = 2; 0x9F: low 0xF (-6.0), high 0x9 (-0.5)."""
    from opdgeo.io.checkpoint import TensorInfo
    from opdgeo.io.quant import Mxfp4

    blocks = torch.zeros(1, 1, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0, 0], blocks[0, 0, 0, 1] = 0x21, 0x9F
    scales = torch.full((1, 1, 1), 128, dtype=torch.uint8)
    infos = (TensorInfo("x_blocks", "U8", (1, 1, 1, 16), Path(), 0, 16),
             TensorInfo("x_scales", "U8", (1, 1, 1), Path(), 0, 1))  # fmt: skip
    out = Mxfp4(infos).decode([blocks.reshape(-1), scales.reshape(-1)])
    assert out.shape == (1, 32, 1)
    assert out[0, :4, 0].tolist() == [1.0, 2.0, -12.0, -1.0]
    assert torch.equal(out, mxfp4_reference(blocks, scales))


def test_mxfp4_gpt_oss_experts_equal_stored_dequantized(tmp_path: Path) -> None:
    e, h, i2 = 2, 64, 96  # gate_up_proj [E, H, 2I]; blocks [E, 2I, H/32, 16]
    gen = torch.Generator().manual_seed(3)
    dense = torch.randn(e, h, i2, generator=gen) * 0.02
    blocks, scales = mxfp4(dense.transpose(1, 2))
    assert blocks.shape == (e, i2, h // 32, 16) and scales.shape == (e, i2, h // 32)
    prefix = "model.layers.0.mlp.experts."
    quant = {prefix + "gate_up_proj_blocks": blocks, prefix + "gate_up_proj_scales": scales}
    path = save(tmp_path / "mx", quant, MX_CONFIG)
    ckpt = dequantized(open_checkpoint(str(path)))
    got = ckpt.read(prefix + "gate_up_proj")
    assert got.shape == (e, h, i2)
    assert torch.equal(got, mxfp4_reference(blocks, scales))
    base = save(tmp_path / "base", {prefix + "gate_up_proj": dense.to(torch.bfloat16)})
    a_sum, a = _frame(base, path)
    _, b = _frame(base, save(tmp_path / "plain", {prefix + "gate_up_proj": got}))
    _same(a, b, [prefix + "gate_up_proj"])
    assert a.loc[prefix + "gate_up_proj", "dtype_tuned"] == "MXFP4"
    assert a_sum["quant_step_share"] == 1.0 and a_sum["regime"] == "quantized"


def test_float_weight_beside_an_integer_sibling_is_compared(tmp_path: Path) -> None:
    name = "model.layers.0.mlp.up_proj"
    w = _base()[name + ".weight"]
    side = {name + ".weight": w.to(torch.bfloat16),
            name + ".qweight": torch.zeros(17, 264, dtype=torch.int32),
            name + ".qzeros": torch.zeros(1, 33, dtype=torch.int32),
            name + ".scales": torch.ones(1, 264, dtype=torch.float16)}  # fmt: skip
    _, frame = _frame(save(tmp_path / "a", side), save(tmp_path / "b", side))
    assert frame.loc[name + ".weight", "skipped"] == ""
    assert "GPTQ/AWQ" in frame.loc[name + ".qweight", "skipped"]
    assert "GPTQ/AWQ" in frame.loc[name + ".scales", "skipped"]


def test_bad_scale_shape_and_unknown_method(tmp_path: Path) -> None:
    w = _base()["model.layers.0.self_attn.q_proj.weight"]
    q, _ = fp8_block(w)
    name = "model.layers.0.self_attn.q_proj.weight"
    bad = save(tmp_path / "bad", {name: q, name + "_scale_inv": torch.ones(3, 3)}, FP8_CONFIG)
    with pytest.raises(
        QuantizationError, match=r"scale_inv.*\[3, 3\].*fits no quantization layout"
    ):
        dequantized(open_checkpoint(str(bad)))
    assert QuantizationError("x").exit_code == EXIT_ERROR
    odd = save(tmp_path / "odd", {name: q, name + "_scale_inv": torch.ones(2, 2)},
               {"quantization_config": {"quant_method": "fancy4"}})  # fmt: skip
    with pytest.raises(QuantizationError, match="unknown quantization method 'fancy4'"):
        dequantized(open_checkpoint(str(odd)))
    blocks = torch.zeros(2, 8, 4, 16, dtype=torch.uint8)  # MXFP4 scales one group short
    p = "model.layers.0.mlp.experts.down_proj"
    short = save(tmp_path / "mx", {p + "_blocks": blocks,
                                   p + "_scales": torch.zeros(2, 8, 3, dtype=torch.uint8)},
                 MX_CONFIG)  # fmt: skip
    with pytest.raises(QuantizationError, match=r"MXFP4 .*\[2, 8, 3\]: expected U8"):
        dequantized(open_checkpoint(str(short)))


def test_inspect_names_quantization(tmp_path: Path) -> None:
    fp8, _ = _fp8_release(_base())
    info = opdgeo.inspect(str(save(tmp_path / "fp8", fp8, FP8_CONFIG)))
    notes = dict(zip(info.frame["tensor"], info.frame["decoding"], strict=True))
    assert notes["model.layers.0.self_attn.q_proj.weight"].startswith("fp8-e4m3-block128x128")
    assert "quantization scale" in notes["model.layers.0.self_attn.q_proj.weight_scale_inv"]
    assert notes["model.layers.0.input_layernorm.weight"] == ""


@pytest.mark.parametrize(
    ("fmt", "value", "half"),
    [("F8_E4M3", 1.0, 1 / 16), ("F8_E4M3", 448.0, 16.0), ("F8_E4M3", 0.0, 2.0**-10),
     ("F8_E5M2", 1.0, 1 / 8), ("F8_E5M2", 0.0, 2.0**-17)],
)  # fmt: skip
def test_fp8_half_step_known_answers(fmt: str, value: float, half: float) -> None:
    """Half the spacing of the fp8 grid: e4m3 has 3 mantissa bits (1.0 -> 1.125), e5m2 two
    (1.0 -> 1.25); below the smallest normal (2^-6, 2^-14) the subnormal spacing holds."""
    from opdgeo.io.dtypes import TORCH_DTYPES
    from opdgeo.io.quant import _fp8_half_step

    q = torch.tensor([value]).to(TORCH_DTYPES[fmt])
    assert float(_fp8_half_step(q, fmt)[0]) == half


def test_cli_bad_scale_is_one_line_exit_1(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from opdgeo.cli import app

    name = "model.layers.0.self_attn.q_proj.weight"
    q, _ = fp8_block(_base()[name])
    bad = save(tmp_path / "bad", {name: q, name + "_scale_inv": torch.ones(1, 5)}, FP8_CONFIG)
    base = save(tmp_path / "base", {name: _base()[name]})
    result = CliRunner().invoke(app, ["compare", str(base), str(bad)])
    assert result.exit_code == EXIT_ERROR
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "fits no quantization layout" in lines[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp8_on_cuda_matches_cpu(tmp_path: Path) -> None:
    source = _bf16(_base())
    fp8, _ = _fp8_release({k: v.float() for k, v in source.items()})
    base, tuned = save(tmp_path / "base", source), save(tmp_path / "fp8", fp8, FP8_CONFIG)
    cpu = opdgeo.compare(str(base), str(tuned))[0].summary
    gpu = opdgeo.compare(str(base), str(tuned), device="cuda")[0].summary
    assert gpu["regime"] == cpu["regime"] == "quantized"
    assert gpu["quant_step_share"] == cpu["quant_step_share"]


def test_fp8_fused_experts_keep_their_expert_axis(tmp_path: Path) -> None:
    """A fused [E, m, n] FP8 tensor with [E, ⌈m/128⌉, ⌈n/128⌉] scales: each expert its own grid."""
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(3, 136, 200, generator=gen) * 0.02
    q, s = zip(*(fp8_block(w[e]) for e in range(3)), strict=True)
    name = "model.layers.0.mlp.experts.gate_up_proj"
    path = save(tmp_path / "moe", {name: torch.stack(q), name + "_scale_inv": torch.stack(s)},
                FP8_CONFIG)  # fmt: skip
    ckpt = dequantized(open_checkpoint(str(path)))
    got = ckpt.read(name)
    assert got.shape == (3, 136, 200)
    for e in range(3):
        assert torch.equal(got[e], fp8_dequant_reference(q[e], s[e]))


def test_fp8_e5m2_block_equals_stored_dequantized(tmp_path: Path) -> None:
    """F8_E5M2 with block scales (partial edge blocks) is decoded like E4M3."""
    name = "model.layers.0.self_attn.q_proj.weight"
    w = _base()[name]  # 200 x 136
    scale = torch.empty(2, 2)
    for i in range(2):
        for j in range(2):
            scale[i, j] = w[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128].abs().max() / 57344.0
    q = (w / scale[torch.arange(200) // 128][:, torch.arange(136) // 128]).to(torch.float8_e5m2)
    base = save(tmp_path / "base", {name: w.bfloat16()})
    a_sum, a = _frame(base, save(tmp_path / "e5", {name: q, name + "_scale_inv": scale},
                                 FP8_CONFIG))  # fmt: skip
    _, b = _frame(base, save(tmp_path / "plain", {name: fp8_dequant_reference(q, scale)}))
    _same(a, b, [name])
    assert a.loc[name, "dtype_tuned"] == "F8_E5M2"
    assert "fp8-e5m2-block128x128" in a.loc[name, "method"]
    assert a_sum["regime"] == "quantized"


def test_compressed_tensors_int8_channel_with_zero_point_and_scalar_scale(tmp_path: Path) -> None:
    """int-quantized: W = (q - zero) * scale per channel; a 0-d per-tensor scale also works."""
    name = "model.layers.0.mlp.up_proj.weight"
    w = _base()[name]
    scale = w.abs().amax(dim=1, keepdim=True) / 120
    zero = torch.randint(-3, 4, (w.shape[0], 1), generator=torch.Generator().manual_seed(0))
    q = (torch.round(w / scale) + zero).to(torch.int8)
    config = {"quantization_config": {"quant_method": "compressed-tensors",
                                      "format": "int-quantized"}}  # fmt: skip
    base = save(tmp_path / "base", {name: w})
    stem = name.removesuffix("weight")
    _, a = _frame(base, save(tmp_path / "i8", {name: q, stem + "weight_scale": scale,
                                               stem + "weight_zero_point": zero.to(torch.int8)},
                             config))  # fmt: skip
    _, b = _frame(base, save(tmp_path / "plain", {name: (q.float() - zero) * scale}))
    _same(a, b, [name])
    assert "int8-channel" in a.loc[name, "method"]
    assert "quantization scale" in a.loc[stem + "weight_zero_point", "skipped"]
    s = (w.abs().max() / 448.0).reshape(())  # a 0-d scale, as some exports store it
    f8 = (w / s).to(torch.float8_e4m3fn)
    _, c = _frame(base, save(tmp_path / "scalar", {name: f8, stem + "weight_scale": s}, CT_CONFIG))
    _, d = _frame(base, save(tmp_path / "plain0", {name: f8.float() * s}))
    _same(c, d, [name])
    assert "fp8-e4m3-tensor" in c.loc[name, "method"]


@pytest.mark.parametrize(
    ("stored", "fmt"),
    [
        ({".weight": torch.zeros(13600, 1, dtype=torch.uint8), ".weight.absmax": torch.ones(425),
          ".weight.quant_map": torch.ones(16),
          ".weight.quant_state.bitsandbytes__nf4": torch.zeros(8, dtype=torch.uint8)},
         "bitsandbytes 4-bit"),
        ({".weight": torch.zeros(200, 136, dtype=torch.int8), ".SCB": torch.ones(200)},
         "bitsandbytes int8"),
        ({".qweight": torch.zeros(17, 200, dtype=torch.int32),
          ".qzeros": torch.zeros(1, 25, dtype=torch.int32),
          ".scales": torch.ones(1, 200, dtype=torch.float16)}, "GPTQ/AWQ"),
    ],
)  # fmt: skip
def test_undecoded_formats_are_named_never_mislabelled(
    tmp_path: Path, stored: dict[str, torch.Tensor], fmt: str
) -> None:
    """bitsandbytes and GPTQ/AWQ weights are skipped naming the format; a quantized
    ``.weight`` the base has in float is not reported as "only in base"."""
    stem = "model.layers.0.self_attn.q_proj"
    norm = {"model.norm.weight": torch.ones(136)}
    base = save(tmp_path / "base", {stem + ".weight": _base()[stem + ".weight"], **norm})
    tuned = save(tmp_path / "q", {stem + k: v for k, v in stored.items()} | norm)
    _, frame = _frame(base, tuned, cache=False)
    for suffix in stored:
        assert fmt in frame.loc[stem + suffix, "skipped"], suffix
    reasons = frame.loc[[stem + ".weight"], "skipped"].tolist()
    if ".weight" in stored:  # one row, naming the format
        assert len(reasons) == 1 and fmt in reasons[0]
    else:  # GPTQ renames the weight: the base's float weight has no partner
        assert reasons == ["only in base"]


def test_cli_unknown_quant_method_is_one_line_exit_1(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from opdgeo.cli import app

    name = "model.layers.0.self_attn.q_proj.weight"
    q, s = fp8_block(_base()[name])
    odd = save(tmp_path / "odd", {name: q, name + "_scale_inv": s},
               {"quantization_config": {"quant_method": "fancy4"}})  # fmt: skip
    base = save(tmp_path / "base", {name: _base()[name]})
    result = CliRunner().invoke(app, ["compare", str(base), str(odd), "--no-cache"])
    assert result.exit_code == EXIT_ERROR
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown quantization method 'fancy4'" in lines[0]


@pytest.mark.parametrize("layout", ["block", "channel", "tensor", "mxfp4"])
def test_fused_half_step_of_one_expert_is_its_part_of_the_whole(
    tmp_path: Path, layout: str
) -> None:
    """Slices of a fused decoded tensor get their quantization step from their own expert's
    codes (nothing the size of the fused tensor is held): equal to the whole grid's part."""
    from opdgeo.io.decoded import annotation

    gen = torch.Generator().manual_seed(7)
    w = torch.randn(3, 136, 200, generator=gen) * 0.02
    name = "model.layers.0.mlp.experts.gate_up_proj"
    if layout == "mxfp4":
        blocks, scales = mxfp4(w[:, :128].transpose(1, 2))  # [E, 200, 128]
        stored = {name + "_blocks": blocks, name + "_scales": scales}
        config = MX_CONFIG
    else:
        if layout == "block":
            q, s = (torch.stack(t) for t in zip(*(fp8_block(x) for x in w), strict=True))
        elif layout == "channel":
            s = w.abs().amax(dim=2, keepdim=True) / 448.0
            q = (w / s).to(torch.float8_e4m3fn)
        else:
            s = (w.abs().max() / 448.0).reshape(1)
            q = (w / s).to(torch.float8_e4m3fn)
        stored = {name: q, name + "_scale_inv": s}
        config = FP8_CONFIG
    ckpt = dequantized(open_checkpoint(str(save(tmp_path / layout, stored, config))))
    got = ckpt.read(name)
    if layout in ("channel", "tensor"):  # a per-tensor [1] scale on a fused tensor too
        assert torch.equal(got, q.float() * s)
    found = annotation(got)
    assert found is not None and found.half_step is not None and found.half_step_at is not None
    whole = found.half_step()
    for e in range(3):
        assert torch.equal(found.half_step_at(e), whole[e])


def test_quantized_verdict_names_formats_from_the_records_not_the_method_text() -> None:
    """The decoders' names come from the records' structured methods (issue: the ``method``
    column is written as text and never parsed back): a frame without it still names them."""
    import pandas as pd

    from opdgeo.quantized import quantization_verdict

    frame = pd.DataFrame({"skipped": ["", ""], "tied": [False, False],
                          "quant_params": [8.0, 0.0], "max_abs_delta": [0.1, 0.0]})  # fmt: skip
    summary = {"n_quantized_params": 8, "quant_step_share": 1.0}
    verdict = quantization_verdict(summary, frame, {"mxfp4", "fp8-e4m3-block128x128"})
    assert verdict is not None and verdict.regime == "quantized"
    assert "decoded from fp8-e4m3-block128x128, mxfp4" in verdict.reasons[0]
    assert "a quantized format" in str(quantization_verdict(summary, frame))
