"""Independently initialised Llama/Qwen-shaped models: the null hypothesis, generated.

The lineage p-values are exact when A and B were initialised independently (i.i.d. weights:
every unit of B is exchangeable). These generators produce such models, with the tensor
names and shapes of a real checkpoint, so the calibration (``bench/lineage_null.py``) and
the tests can check the p-values' law on the very code path that users run.

Initialisation: every matrix i.i.d. N(0, std^2) (std 0.02, the Llama / Qwen / zoo
``init_std``); norm weights 1, as ``transformers`` initialises them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from opdgeo.lineage.access import TensorInfo


@dataclass(frozen=True)
class LlamaShape:
    """Shapes of a Llama/Qwen decoder (GQA when ``kv_heads < heads``)."""

    layers: int = 2
    hidden: int = 64
    intermediate: int = 128
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 256
    tied: bool = False
    qkv_bias: bool = False
    """Biases on q/k/v (Qwen2)."""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def config(self) -> dict[str, Any]:
        """A ``config.json`` in transformers' spelling."""
        return {
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def llama_state(
    shape: LlamaShape, seed: int, std: float = 0.02, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.Tensor]:
    """Freshly initialised weights of ``shape`` (module docstring), from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    h, i, d = shape.hidden, shape.intermediate, shape.head_dim

    def w(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) * std

    out = {"model.embed_tokens.weight": w(shape.vocab, h)}
    for layer in range(shape.layers):
        p = f"model.layers.{layer}."
        out[p + "input_layernorm.weight"] = torch.ones(h)
        out[p + "self_attn.q_proj.weight"] = w(shape.heads * d, h)
        out[p + "self_attn.k_proj.weight"] = w(shape.kv_heads * d, h)
        out[p + "self_attn.v_proj.weight"] = w(shape.kv_heads * d, h)
        if shape.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = torch.zeros(shape.heads * d)
            out[p + "self_attn.k_proj.bias"] = torch.zeros(shape.kv_heads * d)
            out[p + "self_attn.v_proj.bias"] = torch.zeros(shape.kv_heads * d)
        out[p + "self_attn.o_proj.weight"] = w(h, shape.heads * d)
        out[p + "post_attention_layernorm.weight"] = torch.ones(h)
        out[p + "mlp.gate_proj.weight"] = w(i, h)
        out[p + "mlp.up_proj.weight"] = w(i, h)
        out[p + "mlp.down_proj.weight"] = w(h, i)
    out["model.norm.weight"] = torch.ones(h)
    if not shape.tied:
        out["lm_head.weight"] = w(shape.vocab, h)
    return {k: v.to(dtype) for k, v in out.items()}


QWEN25_7B = LlamaShape(
    layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064,
    tied=False, qkv_bias=True,
)  # fmt: skip
"""Qwen2.5-7B's shapes (config.json of Qwen/Qwen2.5-7B)."""


def llama_header(shape: LlamaShape, dtype: str = "BF16") -> dict[str, TensorInfo]:
    """A fake safetensors header for ``shape`` (names, shapes, offsets; no data, no file).

    Lets the read plan be evaluated for a 7B model without 15 GB of weights.
    """
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    meta = llama_state(LlamaShape(**{**shape.as_dict(), "layers": 1, "hidden": 8,
                                     "intermediate": 8, "heads": 2, "kv_heads": 1,
                                     "vocab": 8}), 0)  # fmt: skip
    h, i, d = shape.hidden, shape.intermediate, shape.head_dim
    shapes = {
        "embed_tokens.weight": (shape.vocab, h), "input_layernorm.weight": (h,),
        "q_proj.weight": (shape.heads * d, h), "k_proj.weight": (shape.kv_heads * d, h),
        "v_proj.weight": (shape.kv_heads * d, h), "o_proj.weight": (h, shape.heads * d),
        "q_proj.bias": (shape.heads * d,), "k_proj.bias": (shape.kv_heads * d,),
        "v_proj.bias": (shape.kv_heads * d,), "post_attention_layernorm.weight": (h,),
        "gate_proj.weight": (i, h), "up_proj.weight": (i, h), "down_proj.weight": (h, i),
        "model.norm.weight": (h,), "lm_head.weight": (shape.vocab, h),
    }  # fmt: skip
    out: dict[str, TensorInfo] = {}
    offset = 0
    fake = Path("/nonexistent/fake-header.safetensors")
    for layer in range(-1, shape.layers + 1):
        for name in meta:
            in_block = "layers.0." in name
            if in_block != (0 <= layer < shape.layers):
                continue
            if not in_block and (layer == -1) != ("embed" in name):
                continue
            full = name.replace("layers.0.", f"layers.{layer}.")
            key = next(k for k in shapes if name.endswith(k))
            dims = shapes[key]
            nbytes = math.prod(dims) * sizes[dtype]
            out[full] = TensorInfo(full, dtype, dims, fake, offset, nbytes)
            offset += nbytes
    return out


def write_model(
    folder: Path, state: dict[str, torch.Tensor], config: dict[str, Any] | None = None
) -> Path:
    """``folder/model.safetensors`` (+ ``config.json``); returns ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    return folder


_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32",
                torch.float64: "F64"}  # fmt: skip


class MemorySource:
    """A checkpoint held in memory (a state dict): the lineage tests run on it without files.

    Implements the :class:`opdgeo.lineage.access.Source` protocol (headers, config, prefix
    reads), so the calibration runs hundreds of generated pairs through the same code path
    as real checkpoints.
    """

    def __init__(
        self, label: str, state: dict[str, torch.Tensor], config: dict[str, Any] | None = None
    ) -> None:
        self.label = label
        self.config: dict[str, Any] = dict(config or {})
        self._state = state
        self.tensors: dict[str, TensorInfo] = {}
        offset = 0
        fake = Path(f"/memory/{label}.safetensors")
        for name, t in state.items():
            nbytes = t.numel() * t.element_size()
            dtype = _DTYPE_NAMES[t.dtype]
            self.tensors[name] = TensorInfo(name, dtype, tuple(t.shape), fake, offset, nbytes)
            offset += nbytes

    def read(self, name: str, rows: int | None = None, pin: bool = False) -> torch.Tensor:
        t = self._state[name]
        return t if rows is None else t[:rows]


class RandomSource:
    """A checkpoint that exists only as a header: rows are drawn on demand, i.i.d.
    N(0, std^2) from a seed per (checkpoint, tensor), so a 7B-shaped pair can run through the
    lineage tests (to time them) without 15 GB of weights. 1-D tensors read as ones."""

    def __init__(
        self,
        label: str,
        tensors: dict[str, TensorInfo],
        config: dict[str, Any],
        seed: int,
        std: float = 0.02,
    ) -> None:
        self.label, self.tensors, self.config = label, tensors, dict(config)
        self.seed, self.std = seed, std

    def read(self, name: str, rows: int | None = None, pin: bool = False) -> torch.Tensor:
        info = self.tensors[name]
        shape = (info.shape[0] if rows is None else rows, *info.shape[1:])
        dtype = {"BF16": torch.bfloat16, "F16": torch.float16}.get(info.dtype, torch.float32)
        if len(shape) == 1:
            return torch.ones(shape, dtype=dtype)
        digest = hashlib.blake2b(f"{self.seed}:{name}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        return (torch.randn(shape, generator=gen) * self.std).to(dtype)
