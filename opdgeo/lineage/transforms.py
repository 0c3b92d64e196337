"""Edits of Llama-named state dicts that keep (or break) lineage: the robustness checks.

Function-preserving: :func:`permute_mlp` (hidden units, with sign flips and rescaling through
up/down), :func:`permute_heads` (kv heads with their q heads, q heads within a group),
:func:`permute_residual` (signed permutation of the residual stream), :func:`cast`.
Packaging: :func:`renumber` (prune / duplicate / reorder blocks), :func:`resize_vocab`.
Lineage-breaking: :func:`reinit_layer`. :func:`train_noise` is a crude stand-in for further
training (the calibration also trains for real). Every edit returns a new dict; names follow
:func:`opdgeo.lineage.nullmodels.llama_state`.
"""

from __future__ import annotations

import re

import torch

State = dict[str, torch.Tensor]


def _layers(state: State) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.search(r"layers\.(\d+)\.", k))})


def permute_mlp(state: State, seed: int = 0) -> State:
    """Permute (and sign-flip / rescale through up and down) every block's hidden units."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for i in _layers(state):
        p = f"model.layers.{i}.mlp."
        n = state[p + "gate_proj.weight"].shape[0]
        perm = torch.randperm(n, generator=gen)
        scale = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) * (
            0.5 + torch.rand(n, generator=gen)
        )
        dt = state[p + "up_proj.weight"].dtype
        out[p + "gate_proj.weight"] = state[p + "gate_proj.weight"][perm]
        out[p + "up_proj.weight"] = (state[p + "up_proj.weight"].float()[perm] * scale[:, None]).to(
            dt
        )
        out[p + "down_proj.weight"] = (
            state[p + "down_proj.weight"].float()[:, perm] / scale[None, :]
        ).to(dt)
    return out


def _derangement(n: int, gen: torch.Generator) -> torch.Tensor:
    """A uniform permutation without fixed points (n >= 2), by rejection."""
    while True:
        perm = torch.randperm(n, generator=gen)
        if n < 2 or not bool((perm == torch.arange(n)).any()):
            return perm


def _head_rows(perm: torch.Tensor, d: int) -> torch.Tensor:
    """Row indices of heads ``perm`` (each ``d`` rows)."""
    return (perm[:, None] * d + torch.arange(d)[None, :]).reshape(-1)


def permute_heads(state: State, heads: int, kv_heads: int, seed: int = 0) -> State:
    """Permute kv heads (their q heads move with them) and q heads within each group; no
    head keeps its place (so no attention weight stays where it was)."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    group = heads // kv_heads
    for i in _layers(state):
        p = f"model.layers.{i}.self_attn."
        q = state[p + "q_proj.weight"]
        d = q.shape[0] // heads
        kv_perm = _derangement(kv_heads, gen)
        q_heads = torch.cat([g * group + _derangement(group, gen) for g in kv_perm.tolist()])

        q_rows, kv_rows = _head_rows(q_heads, d), _head_rows(kv_perm, d)
        out[p + "q_proj.weight"] = q[q_rows]
        out[p + "k_proj.weight"] = state[p + "k_proj.weight"][kv_rows]
        out[p + "v_proj.weight"] = state[p + "v_proj.weight"][kv_rows]
        out[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, q_rows]
    return out


def permute_residual(state: State, seed: int = 0) -> State:
    """Signed permutation of the residual stream (embedding columns, norms, every projection)."""
    gen = torch.Generator().manual_seed(seed)
    h = state["model.embed_tokens.weight"].shape[1]
    perm = torch.randperm(h, generator=gen)
    sign = torch.where(torch.rand(h, generator=gen) < 0.5, -1.0, 1.0)
    out = {}
    for k, v in state.items():
        x = v.float()
        if v.ndim == 1 and v.shape[0] == h:
            x = x[perm]
        elif re.search(r"(embed_tokens|lm_head|[qkv]_proj|gate_proj|up_proj)\.weight$", k):
            x = x[:, perm] * sign
        elif re.search(r"(o_proj|down_proj)\.weight$", k):
            x = x[perm] * sign[:, None]
        out[k] = x.to(v.dtype)
    return out


def reinit_layer(state: State, layer: int, seed: int = 99, std: float = 0.02) -> State:
    """Replace every matrix of one block with fresh N(0, std^2) weights."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k, v in state.items():
        if f"layers.{layer}." in k and v.ndim == 2:
            out[k] = (torch.randn(v.shape, generator=gen) * std).to(v.dtype)
    return out


def renumber(state: State, order: list[int]) -> State:
    """New block j = old block order[j] (drops or repeats blocks)."""
    out = {k: v for k, v in state.items() if "layers." not in k}
    for j, i in enumerate(order):
        for k, v in state.items():
            if f"layers.{i}." in k:
                out[k.replace(f"layers.{i}.", f"layers.{j}.")] = v.clone()
    return out


def resize_vocab(state: State, vocab: int, seed: int = 5) -> State:
    """Truncate or extend (fresh rows) the embedding and lm_head to ``vocab`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        if k in state:
            v = state[k]
            if vocab <= v.shape[0]:
                out[k] = v[:vocab].clone()
            else:
                extra = torch.randn(vocab - v.shape[0], v.shape[1], generator=gen) * 0.02
                out[k] = torch.cat([v, extra.to(v.dtype)])
    return out


def train_noise(state: State, scale: float, seed: int = 3) -> State:
    """Add relative Gaussian noise of size ``scale`` (a stand-in for continued training)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        x = v.float()
        if v.ndim == 2:
            x = x + scale * x.std() * torch.randn(x.shape, generator=gen)
        out[k] = x.to(v.dtype)
    return out


def cast(state: State, dtype: torch.dtype) -> State:
    return {k: v.to(dtype) for k, v in state.items()}
