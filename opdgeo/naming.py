"""Tensor names: canonical aliases, module types and layer indices.

Canonicalisation removes wrapper prefixes added by training frameworks so that the same
weight pairs up across checkpoints saved by different tools (peers.md §B.6):
``module.`` (DDP), ``_orig_mod.`` (torch.compile), ``base_model.model.`` (PEFT-merged),
``model.language_model.`` / ``language_model.model.`` / ``language_model.`` (VLM wrappers)
-> ``model.``, and finally a leading ``model.`` so that ``layers.0...`` meets
``model.layers.0...``. Mixtral's per-expert names become the ones transformers 5 loads them
as (its ``conversion_mapping.py``: ``block_sparse_moe.gate`` -> ``mlp.gate``, ``w1``/``w3``
-> gate/up, ``w2`` -> down), so a Mixtral checkpoint pairs with a fused one
(:mod:`opdgeo.io.experts`).
"""

from __future__ import annotations

import re

_WRAPPERS = ("module.", "_orig_mod.", "base_model.model.")
_REWRITES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),  # LLaVA-style: language_model.model.layers.N
    ("language_model.", "model."),
)

_MIXTRAL = (
    (re.compile(r"(^|\.)block_sparse_moe\.experts\.(\d+)\.w1\."), r"\1mlp.experts.\2.gate_proj."),
    (re.compile(r"(^|\.)block_sparse_moe\.experts\.(\d+)\.w3\."), r"\1mlp.experts.\2.up_proj."),
    (re.compile(r"(^|\.)block_sparse_moe\.experts\.(\d+)\.w2\."), r"\1mlp.experts.\2.down_proj."),
    (re.compile(r"(^|\.)block_sparse_moe\.gate\."), r"\1mlp.gate."),
)

MODULE_TYPES = (
    "q",
    "k",
    "v",
    "o",
    "qkv",
    "gate",
    "up",
    "gate_up",
    "down",
    "embed",
    "lm_head",
    "norm",
    "router",
    "shared_expert",
    "other",
)
ATTENTION_TYPES = frozenset({"q", "k", "v", "o", "qkv"})
LINEAR_TYPES = frozenset(
    {"q", "k", "v", "o", "qkv", "gate", "up", "gate_up", "down", "router", "shared_expert", "other"}
)

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|block)\.(\d+)\.")
_EXPERT_RE = re.compile(r"(?:^|\.)experts\.(\d+)\.")
_TYPE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("lm_head", r"(^|\.)(lm_head|output|embed_out)\.weight$"),
        ("embed", r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embeddings?)\."),
        ("norm", r"(norm|ln_\w*|layernorm)(\.|$)"),
        # MoE routers: Qwen2/3-MoE, DeepSeek (mlp.gate, its e_score_correction_bias), Mixtral
        # (block_sparse_moe.gate), gpt-oss (mlp.router), Llama 4 (feed_forward.router), and
        # Qwen2-MoE's shared_expert_gate
        (
            "router",
            r"(^|\.)((mlp|block_sparse_moe|feed_forward|moe)\.(gate|router)|"
            r"shared_expert_gate)\.\w+$",
        ),
        ("shared_expert", r"(^|\.)shared_experts?\."),
        ("qkv", r"(^|\.)(qkv_proj|c_attn|query_key_value|Wqkv|qkv)\."),
        ("q", r"(^|\.)(q_proj|wq|query)\."),
        ("k", r"(^|\.)(k_proj|wk|key)\."),
        ("v", r"(^|\.)(v_proj|wv|value)\."),
        ("o", r"(^|\.)(o_proj|wo|out_proj)\.|(attn|attention)\.(c_proj|dense)\."),
        ("gate_up", r"(^|\.)(gate_up_proj)\."),
        ("gate", r"(^|\.)(gate_proj|w1)\."),
        ("up", r"(^|\.)(up_proj|w3|fc1|c_fc|dense_h_to_4h)\."),
        ("down", r"(^|\.)(down_proj|w2|fc2|c_proj|dense_4h_to_h)\."),
    )
)


def canonical(name: str) -> str:
    """Strip wrapper prefixes; see module docstring. Idempotent."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
        for old, new in _REWRITES:
            if name.startswith(old):
                name, changed = new + name[len(old) :], True
    name = name[len("model.") :] if name.startswith("model.") else name
    if "block_sparse_moe." in name:
        for pattern, repl in _MIXTRAL:
            name = pattern.sub(repl, name)
    return name


def module_type(name: str) -> str:
    """Coarse module type of a tensor (one of :data:`MODULE_TYPES`)."""
    for kind, pattern in _TYPE_RULES:
        if pattern.search(name):
            return kind
    return "other"


def expert_index(name: str) -> int | None:
    """Expert index parsed from ``experts.<e>.`` (per-expert and sliced fused tensors)."""
    match = _EXPERT_RE.search(name)
    return int(match.group(1)) if match else None


def layer_index(name: str) -> int | None:
    """Transformer block index parsed from ``layers.<i>.`` / ``h.<i>.`` / ``blocks.<i>.``."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None
