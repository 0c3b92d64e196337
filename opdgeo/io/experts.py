"""Mixture-of-experts layouts: every expert becomes its own matrix.

Checkpoints store experts in two ways:

* **per expert** - one ``nn.Linear`` weight per expert and projection, already a matrix:
  Qwen2/3-MoE and DeepSeek-V2/V3 ``mlp.experts.{e}.{gate,up,down}_proj.weight``, Mixtral
  ``block_sparse_moe.experts.{e}.w1/w3/w2.weight`` (w1 = gate, w3 = up, w2 = down; paired with
  the names below by :func:`opdgeo.naming.canonical`);
* **fused** - all experts of a layer in one 3-D tensor, which :func:`split_experts` cuts into
  per-expert :class:`~opdgeo.io.checkpoint.SliceInfo` views named as the per-expert layout
  names them (``...mlp.experts.7.gate_proj.weight``), in the ``[out, in]`` orientation of an
  ``nn.Linear`` weight, so that a per-expert base pairs with a fused tuned checkpoint and gives
  the same numbers. The fused layouts, from transformers' modelling code:

  - transformers 5 (``conversion_mapping.py``: Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3, OLMoE,
    ...): ``experts.gate_up_proj [E, 2I, H]`` = per expert ``cat([gate, up], dim=0)``
    (``MergeModulelist(dim=0)`` then ``Concatenate(dim=1)``; Qwen3MoeExperts.forward:
    ``F.linear(x, gate_up_proj[e]).chunk(2, dim=-1)``), ``experts.down_proj [E, H, I]``;
  - gpt-oss (``modeling_gpt_oss.py`` GptOssExperts): ``gate_up_proj [E, H, 2I]`` used as
    ``x @ gate_up_proj[e] + gate_up_proj_bias[e]`` with **interleaved** columns
    (``gate = gate_up[..., ::2]``, ``up = gate_up[..., 1::2]``), ``gate_up_proj_bias [E, 2I]``,
    ``down_proj [E, I, H]`` (``x @ down_proj[e]``), ``down_proj_bias [E, H]``;
  - Llama 4 (``modeling_llama4.py`` Llama4TextExperts): ``feed_forward.experts.gate_up_proj
    [E, H, 2I]`` used as ``bmm(x, gate_up_proj)`` then ``chunk(2, dim=-1)`` (gate first,
    concatenated), ``down_proj [E, I, H]``.

  The stored orientation (``[E, 2I, H]`` or ``[E, H, 2I]``) is read from the shapes (the
  hidden size comes from ``config.json``, the embedding or the router); whether gate/up are
  interleaved comes from the family (``model_type``, a ``gate_up_proj_bias`` sibling as
  gpt-oss has, or a ``feed_forward.experts`` path as Llama 4 has). A fused tensor whose layout
  cannot be decided is left whole (and reported as not split), never guessed.

Splitting works on the :class:`~opdgeo.io.checkpoint.TensorInfo` a checkpoint lists, whatever
produced it: dequantised MXFP4 experts (``*_blocks``/``*_scales``) are split the same way once
they are listed as a float ``gate_up_proj``. Each fused tensor is read once and every slice is
a view of it (:meth:`~opdgeo.io.checkpoint.Checkpoint.read`).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from typing import Any

from opdgeo.errors import OpdgeoWarning
from opdgeo.io.checkpoint import Checkpoint, SliceInfo, TensorInfo
from opdgeo.naming import canonical, expert_index, layer_index

_FUSED = re.compile(r"^(?P<prefix>.*\.experts\.)(?P<proj>gate_up_proj|down_proj)(?P<bias>_bias)?"
                    r"(?P<suffix>\.weight)?$")  # fmt: skip
_ROUTER = re.compile(r"\.(?:mlp|block_sparse_moe|feed_forward|moe)\.(?:gate|router)\.weight$")
_INTERLEAVED = frozenset({"gpt_oss"})
"""Families whose fused gate_up interleaves gate and up columns (others concatenate)."""
_TRANSPOSED = frozenset({"gpt_oss", "llama4", "llama4_text"})


@dataclass(frozen=True)
class ExpertBlock:
    """The experts of one MoE layer as a checkpoint stores them."""

    prefix: str
    """Name prefix of the experts (``model.layers.3.mlp.experts.``)."""
    layer: int | None
    n_experts: int
    layout: str
    """``fused`` or ``per-expert``."""
    detail: str = ""
    """For fused blocks: orientation and gate/up order (``[E, 2I, H] concatenated``), or why
    the block was left whole."""

    def row(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "layer": self.layer, "n_experts": self.n_experts,
                "layout": self.layout, "detail": self.detail}  # fmt: skip


def model_type(config: dict[str, Any]) -> str:
    """``model_type`` of a config.json (that of ``text_config`` for multimodal wrappers)."""
    text = config.get("text_config")
    inner = text.get("model_type") if isinstance(text, dict) else None
    outer = config.get("model_type")
    value = inner if isinstance(inner, str) else outer
    return value if isinstance(value, str) else ""


def hidden_size(tensors: dict[str, TensorInfo], config: dict[str, Any]) -> int | None:
    """The model width: config ``hidden_size``, else an embedding's or a router's width."""
    for cfg in (config.get("text_config"), config):
        if isinstance(cfg, dict) and isinstance(cfg.get("hidden_size"), int):
            return int(cfg["hidden_size"])
    for name, info in tensors.items():
        if len(info.shape) == 2 and (name.endswith("embed_tokens.weight") or _ROUTER.search(name)):
            return info.shape[1]
    return None


def _orientation(shape: tuple[int, ...], hidden: int | None, proj: str, fallback: str) -> str:
    """``standard`` ([E, out, in], as nn.Linear) or ``transposed`` ([E, in, out]) or ""."""
    if proj == "gate_up_proj":
        standard = shape[2] == hidden and shape[1] % 2 == 0
        transposed = shape[1] == hidden and shape[2] % 2 == 0
    else:
        standard, transposed = shape[1] == hidden, shape[2] == hidden
    if standard != transposed:
        return "standard" if standard else "transposed"
    return fallback if (standard or hidden is None) else ""


def _pair_width(members: dict[str, tuple[str, TensorInfo]]) -> int | None:
    """The hidden size implied by a fused gate_up / down pair of shapes, if any."""
    if "gate_up_proj" not in members or "down_proj" not in members:
        return None
    _, a, b = members["gate_up_proj"][1].shape
    _, c, d = members["down_proj"][1].shape
    standard, transposed = a == 2 * d and b == c, b == 2 * c and a == d
    if standard != transposed:
        return b if standard else a
    return None


def _slices(
    info: TensorInfo, base: str, proj: str, orient: str, interleaved: bool, bias: bool
) -> list[SliceInfo]:
    """The per-expert slices of fused tensor ``info`` (weights, or biases with ``bias``)."""
    n = info.shape[0]
    suffix = "bias" if bias else "weight"
    # axis of the fused gate/up dimension inside one expert, in stored orientation
    axis = 0 if bias or orient == "standard" else 1
    parts: list[tuple[str, int, int, int]]  # (name, offset, count, step)
    if proj == "gate_up_proj":
        half = info.shape[1 + axis] // 2
        if interleaved:
            parts = [("gate_proj", 0, half, 2), ("up_proj", 1, half, 2)]
        else:
            parts = [("gate_proj", 0, half, 1), ("up_proj", half, half, 1)]
    else:
        parts = [("down_proj", 0, 0, 1)]
    out = []
    for e in range(n):
        for j, (part, offset, count, step) in enumerate(parts):
            shape = list(info.shape[1:])
            if count:
                shape[axis] = count
            transpose = orient == "transposed" and not bias
            if transpose:
                shape.reverse()
            out.append(SliceInfo(
                name=f"{base}{e}.{part}.{suffix}", dtype=info.dtype, shape=tuple(shape),
                file=info.file, start=info.start,
                nbytes=info.nbytes // max(1, info.numel) * _numel(shape), parent=info, index=e,
                axis=axis if count else None, offset=offset, count=count, step=step,
                transpose=transpose, order=e * len(parts) + j,
            ))  # fmt: skip
    return out


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_split(
    tensors: dict[str, TensorInfo],
    config: dict[str, Any],
    decoded: frozenset[str] = frozenset(),
) -> tuple[dict[str, list[SliceInfo]], list[ExpertBlock]]:
    """Slices for every fused expert tensor that can be split (by fused name), and the
    expert blocks found (fused and per-expert, one per layer prefix); integer tensors are
    split only when ``decoded`` names them (dequantised int8 experts)."""
    family = model_type(config)
    hidden = hidden_size(tensors, config)
    fallback = "transposed" if family in _TRANSPOSED else "standard" if family else ""
    fused: dict[str, dict[str, tuple[str, TensorInfo]]] = {}
    for name, info in tensors.items():
        m = _FUSED.match(name)
        if (
            m is None
            or (info.dtype in ("U8", "I8") and name not in decoded)
            or len(info.shape) != (2 if m["bias"] else 3)
        ):
            continue
        fused.setdefault(m["prefix"], {})[m["proj"] + (m["bias"] or "")] = (name, info)
    slices: dict[str, list[SliceInfo]] = {}
    blocks: list[ExpertBlock] = []
    for prefix, members in fused.items():
        has_bias = "gate_up_proj_bias" in members  # gpt-oss stores expert biases
        llama4_path = "feed_forward.experts." in prefix
        here = fallback or ("transposed" if has_bias or llama4_path else "")
        width = hidden if hidden is not None else _pair_width(members)
        orients = {
            proj: _orientation(info.shape, width, proj, here)
            for proj, (_, info) in members.items()
            if not proj.endswith("_bias")
        }
        known = {o for o in orients.values() if o}
        if len(known) == 1:  # a square down_proj follows its gate_up_proj
            orients = dict.fromkeys(orients, known.pop())
        interleaved: bool | None = None
        if family in _INTERLEAVED or has_bias:
            interleaved = True
        elif family or llama4_path or orients.get("gate_up_proj") == "standard":
            interleaved = False  # transformers 5 and Llama 4 concatenate gate and up
        n_experts = max(info.shape[0] for _, info in members.values())
        if (
            not orients
            or not all(orients.values())
            or ("gate_up_proj" in orients and interleaved is None)
        ):
            why = "fused layout ambiguous (no config.json model_type or hidden size); not split"
            blocks.append(ExpertBlock(prefix, layer_index(prefix), n_experts, "fused", why))
            warnings.warn(f"{prefix}*: {why}", OpdgeoWarning, stacklevel=2)
            continue
        orient = next(iter(orients.values()))
        for proj, (name, info) in members.items():
            weight = proj.removesuffix("_bias")
            slices[name] = _slices(info, prefix, weight, orients.get(weight, orient),
                                   bool(interleaved), proj.endswith("_bias"))  # fmt: skip
        stored = "[E, 2I, H]" if orient == "standard" else "[E, H, 2I]"
        order = "interleaved" if interleaved else "concatenated"
        blocks.append(ExpertBlock(prefix, layer_index(prefix), n_experts, "fused",
                                  f"gate_up {stored}, gate/up {order}"))  # fmt: skip
    per_expert: dict[str, set[int]] = {}
    for name in tensors:
        e = expert_index(name)
        if e is not None:
            prefix = name[: name.index(f"experts.{e}.")] + "experts."
            per_expert.setdefault(prefix, set()).add(e)
    for prefix, experts in per_expert.items():
        blocks.append(ExpertBlock(prefix, layer_index(prefix), len(experts), "per-expert"))
    blocks.sort(key=lambda b: (b.layer if b.layer is not None else -1, canonical(b.prefix)))
    return slices, blocks


def split_experts(ckpt: Checkpoint) -> list[ExpertBlock]:
    """Replace each splittable fused expert tensor of ``ckpt`` by its per-expert slices (in
    place, keeping the file order); returns the checkpoint's expert blocks."""
    slices, blocks = plan_split(ckpt.tensors, ckpt.config, frozenset(ckpt.decoders))
    if slices:
        tensors: dict[str, TensorInfo] = {}
        for name, info in ckpt.tensors.items():
            for piece in slices.get(name, [info]):
                tensors[piece.name] = piece
        ckpt.tensors = tensors
    return blocks


def describe(ckpt: Checkpoint) -> dict[str, Any]:
    """What ``inspect`` says about experts: MoE layers, experts per layer, layouts (of the
    tensors as they are compared: gpt-oss MXFP4 ``*_blocks`` as the fused tensors they
    decode to; headers only)."""
    from opdgeo.errors import QuantizationError
    from opdgeo.io.quant import dequantized

    view = dataclasses.replace(ckpt, tensors=dict(ckpt.tensors), decoders={}, consumed={})
    try:
        dequantized(view)  # names, dtypes and shapes only: nothing is read
    except QuantizationError:  # inspect's decoding column says why
        view = ckpt
    _, blocks = plan_split(view.tensors, view.config, frozenset(view.decoders))
    return {
        "n_moe_layers": len({b.prefix for b in blocks}),
        "n_experts": max((b.n_experts for b in blocks), default=0),
        "layouts": sorted({b.layout for b in blocks}),
        "blocks": [b.row() for b in blocks],
    }
