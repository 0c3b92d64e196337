"""A small Llama-shaped decoder: RMSNorm, rotary attention, gated (SwiGLU) MLP, untied head.

Parameter names follow Qwen/Llama (``model.layers.{i}.self_attn.q_proj.weight``,
``model.layers.{i}.mlp.gate_proj.weight``, ``model.norm.weight``, ``lm_head.weight``), so the
state dict saved with safetensors is grouped by opdgeo exactly as a released model would be.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder."""

    vocab_size: int = 16
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    intermediate: int = 384
    max_len: int = 48
    rope_theta: float = 10000.0
    init_std: float = 0.02

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (``weight``)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Multi-head causal self-attention with rotary position embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.q_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.o_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, _ = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q = _rotate(split(self.q_proj(x)), cos, sin)
        k = _rotate(split(self.k_proj(x)), cos, sin)
        v = split(self.v_proj(x))
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        # A fresh segment is causal; one token appended to a cache attends to everything.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1)), (k, v)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm decoder block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h, kv = self.self_attn(self.input_layernorm(x), cos, sin, cache)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class Backbone(nn.Module):
    """``model.*``: embeddings, blocks, final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden)


class TinyLlama(nn.Module):
    """The decoder. ``forward(ids)`` returns logits; ``forward(ids, cache, start)`` decodes."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        head_dim = cfg.hidden // cfg.heads
        inv = 1.0 / cfg.rope_theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(cfg.max_len).float(), inv)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self._init(cfg.init_std, cfg.layers)

    def _init(self, std: float, layers: int) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2 style: residual output projections scaled down by depth.
                scale = (
                    1 / math.sqrt(2 * layers)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else 1.0
                )
                nn.init.normal_(p, std=std * scale)

    def forward(
        self, ids: torch.Tensor, cache: KVCache | None = None, start: int = 0
    ) -> tuple[torch.Tensor, KVCache]:
        t = ids.shape[1]
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        x = self.model.embed_tokens(ids)
        new_cache: KVCache = []
        for i, layer in enumerate(self.model.layers):
            x, kv = layer(x, cos, sin, None if cache is None else cache[i])
            new_cache.append(kv)
        return self.lm_head(self.model.norm(x)), new_cache

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits of a full sequence (training)."""
        return self.forward(ids)[0]


def n_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
