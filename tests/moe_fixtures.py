"""Tiny mixture-of-experts state dicts in the real layouts (names and shape roles from the
released configs, sizes shrunk).

* ``qwen3_moe`` - Qwen/Qwen3-30B-A3B (config: hidden_size 2048, moe_intermediate_size 768,
  num_experts 128): ``mlp.experts.{e}.{gate,up,down}_proj.weight``, router ``mlp.gate.weight``;
* ``qwen2_moe`` - Qwen/Qwen1.5-MoE-A2.7B: as above plus ``mlp.shared_expert.*`` and
  ``mlp.shared_expert_gate.weight [1, H]``;
* ``deepseek_v3`` - deepseek-ai/DeepSeek-V3: ``mlp.experts.{e}.*``, ``mlp.shared_experts.*``,
  ``mlp.gate.weight`` and ``mlp.gate.e_score_correction_bias [E]``;
* ``mixtral`` - mistralai/Mixtral-8x7B-v0.1: ``block_sparse_moe.experts.{e}.w1/w2/w3.weight``
  and ``block_sparse_moe.gate.weight``.

:func:`fuse` turns a per-expert state dict into a fused one: transformers 5's layout
(``experts.gate_up_proj [E, 2I, H]`` = cat(gate, up), ``experts.down_proj [E, H, I]``),
gpt-oss's (openai/gpt-oss-20b: ``[E, H, 2I]`` with interleaved gate/up columns plus
``gate_up_proj_bias [E, 2I]`` and ``down_proj_bias [E, H]``; hidden_size = intermediate_size
there, so down_proj is square) or Llama 4's (meta-llama/Llama-4-Scout-17B-16E:
``feed_forward.experts.gate_up_proj [E, H, 2I]`` concatenated, ``down_proj [E, I, H]``).
"""

from __future__ import annotations

import torch

Tensors = dict[str, torch.Tensor]

MIXTRAL_PARTS = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def per_expert(
    family: str = "qwen3_moe",
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
    inter: int = 16,
    experts: int = 4,
    bias: bool = False,
) -> Tensors:
    """A per-expert MoE state dict (attention + experts + router), bf16."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    out: Tensors = {"model.embed_tokens.weight": rand(64, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = rand(hidden, hidden)
        out[p + "self_attn.o_proj.weight"] = rand(hidden, hidden)
        moe = p + ("block_sparse_moe." if family == "mixtral" else "mlp.")
        out[moe + "gate.weight"] = rand(experts, hidden)
        for e in range(experts):
            for part, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                ("down_proj", (hidden, inter))):  # fmt: skip
                stem = MIXTRAL_PARTS[part] if family == "mixtral" else part
                out[f"{moe}experts.{e}.{stem}.weight"] = rand(*shape)
                if bias:
                    out[f"{moe}experts.{e}.{stem}.bias"] = rand(shape[0])
        if family == "qwen2_moe":
            for part, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                ("down_proj", (hidden, inter))):  # fmt: skip
                out[f"{moe}shared_expert.{part}.weight"] = rand(*shape)
            out[moe + "shared_expert_gate.weight"] = rand(1, hidden)
        if family == "deepseek_v3":
            for part, shape in (("gate_proj", (inter, hidden)), ("up_proj", (inter, hidden)),
                                ("down_proj", (hidden, inter))):  # fmt: skip
                out[f"{moe}shared_experts.{part}.weight"] = rand(*shape)
            out[moe + "gate.e_score_correction_bias"] = rand(experts)
    out["lm_head.weight"] = rand(64, hidden)
    return {k: v.bfloat16() for k, v in out.items()}


def fuse(tensors: Tensors, layout: str = "transformers5") -> Tensors:
    """The same weights with each layer's experts fused (``transformers5``, ``gpt_oss`` or
        ``llama4``); per-expert names must be qwen-style (``mlp.experts.{e}.gate_proj``). Names
    outside the experts are kept (rename the router / ``feed_forward`` paths where a test
    needs them)."""
    out: Tensors = {}
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in tensors.items():
        if ".experts." in name and name.split(".experts.")[1].split(".")[0].isdigit():
            prefix, rest = name.split(".experts.")
            e, part, kind = rest.split(".")
            groups.setdefault(prefix, {}).setdefault(f"{part}.{kind}", {})[int(e)] = t
            out.setdefault(prefix + ".experts.", torch.empty(0))  # keep the position
        else:
            out[name] = t
    for prefix, parts in groups.items():
        del out[prefix + ".experts."]
        n = len(parts["gate_proj.weight"])

        def stack(key: str, parts: dict[str, dict[int, torch.Tensor]] = parts) -> torch.Tensor:
            return torch.stack([parts[key][e] for e in range(len(parts[key]))])

        gate, up, down = (
            stack("gate_proj.weight"),
            stack("up_proj.weight"),
            stack("down_proj.weight"),
        )
        p = prefix + ".experts."
        if layout == "transformers5":
            out[p + "gate_up_proj"] = torch.cat([gate, up], dim=1)  # [E, 2I, H]
            out[p + "down_proj"] = down  # [E, H, I]
        elif layout == "llama4":
            out[p + "gate_up_proj"] = torch.cat([gate, up], dim=1).transpose(1, 2)  # [E, H, 2I]
            out[p + "down_proj"] = down.transpose(1, 2)  # [E, I, H]
        else:  # gpt_oss: [E, H, 2I], gate in even columns, up in odd ones
            inter_gate_up = torch.stack([gate, up], dim=2).reshape(n, -1, gate.shape[2])
            out[p + "gate_up_proj"] = inter_gate_up.transpose(1, 2)
            out[p + "down_proj"] = down.transpose(1, 2)
            if "gate_proj.bias" in parts:
                gb, ub = stack("gate_proj.bias"), stack("up_proj.bias")
                out[p + "gate_up_proj_bias"] = torch.stack([gb, ub], dim=2).reshape(n, -1)
                out[p + "down_proj_bias"] = stack("down_proj.bias")
    return {k: v.contiguous() for k, v in out.items()}


CONFIGS = {
    "qwen3_moe": {"model_type": "qwen3_moe", "hidden_size": 32},
    "mixtral": {"model_type": "mixtral", "hidden_size": 32},
    "gpt_oss": {"model_type": "gpt_oss", "hidden_size": 32},
    "llama4": {"model_type": "llama4", "text_config": {"model_type": "llama4_text",
                                                       "hidden_size": 32}},
}  # fmt: skip
