"""LoRA / PEFT adapters compared as the merged model they define (opdgeo.io.peft)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import opdgeo
from opdgeo.io import open_checkpoint
from opdgeo.io.peft import AdapterError, open_adapter, pattern_key
from tests.quantfixtures import save, save_adapter

P = "base_model.model."
AGREE = ("delta_fro", "base_fro", "rel_norm", "stable_rank", "delta_sigma1", "unchanged_bf16")


def _base(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {"model.embed_tokens.weight": torch.randn(50, 48, generator=gen) * 0.02,
           "lm_head.weight": torch.randn(50, 48, generator=gen) * 0.02}  # fmt: skip
    for i in range(2):
        for proj, shape in (("q_proj", (48, 48)), ("v_proj", (24, 48)), ("o_proj", (48, 48))):
            out[f"model.layers.{i}.self_attn.{proj}.weight"] = (
                torch.randn(*shape, generator=gen) * 0.02
            )
    return {k: v.to(dtype) for k, v in out.items()}


def _adapter(base: dict[str, torch.Tensor], config: dict) -> tuple[dict, dict]:
    """(adapter tensors, merged state dict: W0 + s B A formed in float32 as opdgeo does)."""
    gen = torch.Generator().manual_seed(1)
    tensors, merged = {}, {k: v.clone() for k, v in base.items()}
    for name, w in base.items():
        module = name.removesuffix(".weight")
        if not module.endswith(("q_proj", "v_proj")):
            continue
        r = config.get("rank_pattern", {}).get(module.split(".")[-1], config["r"])
        alpha = config.get("alpha_pattern", {}).get(module.split(".")[-1], config["lora_alpha"])
        s = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        a = torch.randn(r, w.shape[1], generator=gen) * 0.05
        b = torch.randn(w.shape[0], r, generator=gen) * 0.05
        tensors[f"{P}{module}.lora_A.weight"] = a
        tensors[f"{P}{module}.lora_B.weight"] = b
        merged[name] = w.float() + (s * b) @ a
    for module in config.get("modules_to_save", []):
        name = f"{module}.weight"
        tensors[P + name] = base[name] + 0.01
        merged[name] = base[name] + 0.01
    return tensors, merged


CONFIGS = {
    "plain": {"r": 4, "lora_alpha": 8},
    "patterns+rslora+modules_to_save": {
        "r": 4, "lora_alpha": 16, "use_rslora": True, "rank_pattern": {"v_proj": 2},
        "alpha_pattern": {"v_proj": 3}, "modules_to_save": ["lm_head"],
    },
}  # fmt: skip


@pytest.mark.parametrize("which", list(CONFIGS))
def test_adapter_agrees_with_the_merged_model(tmp_path: Path, which: str) -> None:
    config = CONFIGS[which]
    base = _base()
    tensors, merged = _adapter(base, config)
    base_dir = save(tmp_path / "base", base)
    adapter = save_adapter(tmp_path / "adapter", tensors, config)
    merged_dir = save(tmp_path / "merged", merged)
    run_a = opdgeo.compare(str(base_dir), str(adapter))[0]
    run_m = opdgeo.compare(str(base_dir), str(merged_dir))[0]
    a, m = run_a.tensors.set_index("tensor"), run_m.tensors.set_index("tensor")
    compared = [n for n in m.index if not m.loc[n, "skipped"]]
    assert set(compared) <= set(a.index)
    for name in compared:
        for col in AGREE:
            x, y = float(a.loc[name, col]), float(m.loc[name, col])
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-6), (name, col)
    assert a.loc[compared, "unchanged_bf16"].tolist() == m.loc[compared, "unchanged_bf16"].tolist()
    assert run_a.summary["sparsity_bf16"] == run_m.summary["sparsity_bf16"]
    assert run_a.summary["rel_norm"] == pytest.approx(run_m.summary["rel_norm"], rel=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    v = "model.layers.1.self_attn.v_proj.weight"
    assert a.loc[q, "lora_rank"] == 4
    assert "lowrank-core-f64" in a.loc[q, "method"]
    if which == "plain":
        assert a.loc[q, "lora_scale"] == 2.0
    else:
        assert a.loc[q, "lora_scale"] == 8.0  # 16 / sqrt(4)
        assert a.loc[v, "lora_rank"] == 2 and a.loc[v, "lora_scale"] == pytest.approx(
            3 / math.sqrt(2)
        )
        assert a.loc[v, "stable_rank"] <= 2.0 + 1e-9
        assert a.loc["lm_head.weight", "skipped"] == ""
    assert "LoRA factor" in a.loc[f"{P}model.layers.0.self_attn.q_proj.lora_A.weight", "skipped"]


def test_fan_in_fan_out_and_exact_core(tmp_path: Path) -> None:
    """GPT-2 Conv1D stores [in, out]: ΔW = (B A)ᵀ; σ₁ from the core equals the SVD's."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(32, 96, generator=gen) * 0.02  # c_attn: in 32, out 96
    a, b = torch.randn(3, 32, generator=gen), torch.randn(96, 3, generator=gen)
    base = save(tmp_path / "base", {"h.0.attn.c_attn.weight": w})
    adapter = save_adapter(tmp_path / "ad", {f"{P}transformer.h.0.attn.c_attn.lora_A.weight": a,
                                             f"{P}transformer.h.0.attn.c_attn.lora_B.weight": b},
                           {"r": 3, "lora_alpha": 6, "fan_in_fan_out": True})  # fmt: skip
    view = open_adapter(open_checkpoint(str(adapter)), open_checkpoint(str(base)))
    w1 = view.read("h.0.attn.c_attn.weight")
    delta = (2.0 * b @ a).T
    assert torch.allclose(w1, w + delta, atol=1e-6)
    frame = opdgeo.compare(str(base), str(adapter), tier="exact")[0].tensors.set_index("tensor")
    sigma = torch.linalg.svdvals(a.T.double() @ (2.0 * b).T.double())  # ΔW in float64
    assert frame.loc["h.0.attn.c_attn.weight", "delta_sigma1"] == pytest.approx(
        float(sigma[0]), rel=1e-12
    )
    srank = float((sigma**2).sum() / sigma[0] ** 2)
    assert frame.loc["h.0.attn.c_attn.weight", "stable_rank"] == pytest.approx(srank, rel=1e-12)


def test_dora_is_composed_as_peft_merges_it(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(16, 24, generator=gen) * 0.02
    a, b = torch.randn(2, 24, generator=gen), torch.randn(16, 2, generator=gen) * 0.01
    mag = torch.rand(16, generator=gen) + 0.5
    m = f"{P}model.layers.0.mlp.up_proj"
    adapter = save_adapter(tmp_path / "ad", {m + ".lora_A.weight": a, m + ".lora_B.weight": b,
                                             m + ".lora_magnitude_vector": mag},
                           {"r": 2, "lora_alpha": 2, "use_dora": True})  # fmt: skip
    base = save(tmp_path / "base", {"model.layers.0.mlp.up_proj.weight": w})
    view = open_adapter(open_checkpoint(str(adapter)), open_checkpoint(str(base)))
    merged = w + b @ a
    expected = mag.reshape(-1, 1) / torch.linalg.norm(merged, dim=1, keepdim=True) * merged
    assert torch.allclose(view.read("model.layers.0.mlp.up_proj.weight"), expected, atol=1e-7)


def test_bad_adapters(tmp_path: Path) -> None:
    base = save(tmp_path / "base", _base())
    tensors, _ = _adapter(_base(), {"r": 4, "lora_alpha": 8})
    no_config = save_adapter(tmp_path / "none", tensors, None)
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        opdgeo.compare(str(base), str(no_config))
    wrong_r = save_adapter(tmp_path / "r", tensors, {"r": 8, "lora_alpha": 8})
    with pytest.raises(AdapterError, match=r"A \[4, 48\] and B \[48, 4\].*r = 8"):
        opdgeo.compare(str(base), str(wrong_r))
    ia3 = save_adapter(tmp_path / "ia3", tensors, {"r": 4, "lora_alpha": 8, "peft_type": "IA3"})
    with pytest.raises(AdapterError, match="PEFT type IA3 is not supported"):
        opdgeo.compare(str(base), str(ia3))


def test_pattern_key_follows_peft() -> None:
    assert pattern_key(["v_proj"], "model.layers.0.self_attn.v_proj") == "v_proj"
    assert pattern_key(["layers.1.self_attn.q_proj"], "model.layers.1.self_attn.q_proj")
    assert pattern_key(["q_proj"], "model.layers.0.self_attn.qq_proj") is None


def test_inspect_shows_adapter_rank_and_scale(tmp_path: Path) -> None:
    tensors, _ = _adapter(_base(), {"r": 4, "lora_alpha": 8})
    info = opdgeo.inspect(str(save_adapter(tmp_path / "ad", tensors, {"r": 4, "lora_alpha": 8})))
    notes = dict(zip(info.frame["tensor"], info.frame["decoding"], strict=True))
    note = notes[f"{P}model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert note == "lora_A of model.layers.0.self_attn.q_proj (r=4, scale=2)"


def test_hub_adapter_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter repo on a (fake, local) Hub is composed like the same adapter folder."""
    import huggingface_hub.constants as hf_constants

    from tests.hubserver import SHA_A, FakeHub, repo_from_dir

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_ETAG_TIMEOUT", 3)
    monkeypatch.setattr(hf_constants, "HF_HUB_DOWNLOAD_TIMEOUT", 3)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    config = {"r": 4, "lora_alpha": 8}
    tensors, _ = _adapter(_base(), config)
    base = save(tmp_path / "base", _base())
    adapter = save_adapter(tmp_path / "adapter", tensors, config)
    server = FakeHub()
    server.repos = {"org/lora": repo_from_dir(adapter, sha=SHA_A)}
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        hub = opdgeo.compare(str(base), "org/lora", progress=False)[0]
    finally:
        server.stop()
    local = opdgeo.compare(str(base), str(adapter))[0]
    for column in ("rel_norm", "stable_rank", "sparsity_bf16", "lora_rank_max"):
        assert hub.summary[column] == local.summary[column], column


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adapter_on_cuda_matches_cpu(tmp_path: Path) -> None:
    config = {"r": 4, "lora_alpha": 8}
    tensors, _ = _adapter(_base(), config)
    base = save(tmp_path / "base", _base())
    adapter = save_adapter(tmp_path / "adapter", tensors, config)
    cpu = opdgeo.compare(str(base), str(adapter))[0].summary
    gpu = opdgeo.compare(str(base), str(adapter), device="cuda")[0].summary
    for column in ("rel_norm", "stable_rank", "sparsity_bf16", "lora_rank_max"):
        assert gpu[column] == pytest.approx(cpu[column], rel=1e-6), column


def test_bf16_base_adapter_agrees_with_float32_and_bf16_merges(tmp_path: Path) -> None:
    """The usual case, a bf16 base: the adapter equals its float32 merge within 1e-6, and its
    bf16 sparsity equals exactly that of the merge stored in bf16 (what a user releases)."""
    config = CONFIGS["patterns+rslora+modules_to_save"]
    base = _base(torch.bfloat16)
    tensors, merged = _adapter(base, config)
    base_dir = save(tmp_path / "base", base)
    runs = opdgeo.compare(str(base_dir), [
        str(save_adapter(tmp_path / "adapter", tensors, config)),
        str(save(tmp_path / "f32", {k: v.float() for k, v in merged.items()})),
        str(save(tmp_path / "bf16", {k: v.bfloat16() for k, v in merged.items()})),
    ], cache=False)  # fmt: skip
    a, f32, bf16 = (r.tensors.set_index("tensor") for r in runs)
    compared = [n for n in f32.index if not f32.loc[n, "skipped"]]
    for name in compared:
        for col in AGREE:
            x, y = float(a.loc[name, col]), float(f32.loc[name, col])
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-6), (name, col)
    assert runs[0].summary["sparsity_bf16"] == runs[1].summary["sparsity_bf16"]
    assert runs[0].summary["sparsity_bf16"] == runs[2].summary["sparsity_bf16"]
    assert (
        a.loc[compared, "unchanged_bf16"].tolist() == bf16.loc[compared, "unchanged_bf16"].tolist()
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-config", "no adapter_config.json"),
        ("wrong-r", "do not match r = 8"),
        ("adapter-as-base", "is a LoRA adapter, not a base model"),
    ],
)
def test_cli_bad_adapter_is_one_line_exit_1(tmp_path: Path, case: str, message: str) -> None:
    from typer.testing import CliRunner

    from opdgeo.cli import app
    from opdgeo.errors import EXIT_ERROR

    base = save(tmp_path / "base", _base())
    tensors, _ = _adapter(_base(), {"r": 4, "lora_alpha": 8})
    config = None if case == "no-config" else {"r": 8 if case == "wrong-r" else 4, "lora_alpha": 8}
    adapter = save_adapter(tmp_path / "adapter", tensors, config)
    order = [adapter, base] if case == "adapter-as-base" else [base, adapter]
    result = CliRunner().invoke(app, ["compare", *map(str, order), "--no-cache"])
    assert result.exit_code == EXIT_ERROR, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


@pytest.mark.parametrize(
    ("config", "extra", "message"),
    [
        ({"use_dora": True, "fan_in_fan_out": True}, ".lora_magnitude_vector", "DoRA on"),
        ({"use_dora": True}, "", "DoRA on"),  # use_dora without its magnitude vector
        ({"lora_bias": True}, ".lora_B.bias", "is not supported"),
    ],
)
def test_unsupported_lora_variants_are_refused_by_name(
    tmp_path: Path, config: dict, extra: str, message: str
) -> None:
    w = torch.randn(16, 24) * 0.02
    m = f"{P}model.layers.0.mlp.up_proj"
    tensors = {m + ".lora_A.weight": torch.randn(2, 24), m + ".lora_B.weight": torch.randn(16, 2)}
    if config.get("fan_in_fan_out"):  # GPT-2 Conv1D stores [in, out]; A and B as usual
        w = w.T.contiguous()
    if extra:
        tensors[m + extra] = torch.ones(16)  # out features: the magnitude or the bias
    adapter = save_adapter(tmp_path / "ad", tensors, {"r": 2, "lora_alpha": 2, **config})
    base = save(tmp_path / "base", {"model.layers.0.mlp.up_proj.weight": w})
    with pytest.raises(AdapterError, match=message):
        opdgeo.compare(str(base), str(adapter), cache=False)
