"""Which tensors of a checkpoint play which role in the lineage tests (headers only).

Roles come from opdgeo's tensor naming (:mod:`opdgeo.naming`): per transformer block the MLP
``gate`` and ``up`` projections (hidden units are rows) and the attention ``q``, ``k``, ``v``
projections (heads are blocks of rows); fused ``gate_up_proj`` and ``qkv_proj`` tensors are
split into row ranges. A checkpoint with such blocks is of family ``llm``; anything else is
``generic`` and falls back to per-matrix tests. Head counts come from ``config.json``
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, or the zoo's ``heads``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opdgeo.lineage.access import FLOAT_DTYPES, TensorInfo
from opdgeo.naming import canonical, layer_index, module_type

ROLE_TYPES = ("gate", "up", "q", "k", "v")


@dataclass(frozen=True)
class Ref:
    """Rows ``[start, stop)`` of tensor ``name`` (``cols`` values per row)."""

    name: str
    start: int
    stop: int
    cols: int
    dtype: str

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Heads:
    """Attention layout: ``n_q`` query heads in ``n_kv`` groups, ``head_dim`` rows each."""

    n_q: int
    n_kv: int
    head_dim: int


@dataclass
class Layout:
    """Roles of one checkpoint's tensors."""

    family: str
    layers: dict[int, dict[str, Ref]]
    embed: Ref | None
    lm_head: Ref | None
    heads: Heads | None
    hidden: int | None
    tensors: Mapping[str, TensorInfo]
    notes: list[str] = field(default_factory=list)

    @property
    def vocab(self) -> int | None:
        return self.embed.rows if self.embed else self.lm_head.rows if self.lm_head else None

    def role_names(self) -> set[str]:
        """Tensor names used by some role (the rest only get an identity check)."""
        names = {r.name for roles in self.layers.values() for r in roles.values()}
        names |= {r.name for r in (self.embed, self.lm_head) if r is not None}
        return names

    def matrices(self) -> list[str]:
        """Float 2-D tensors, in header order."""
        return [n for n, t in self.tensors.items() if len(t.shape) == 2 and t.dtype in FLOAT_DTYPES]


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _heads(config: Mapping[str, Any], q_rows: int, k_rows: int, notes: list[str]) -> Heads | None:
    n_q = _int(config, "num_attention_heads", "n_head", "n_heads", "num_heads", "heads")
    if n_q is None:
        notes.append("attention head count unknown (no num_attention_heads in config.json)")
        return None
    n_kv = _int(config, "num_key_value_heads", "n_kv_heads", "num_kv_heads") or n_q
    head_dim = _int(config, "head_dim") or (q_rows // n_q if q_rows % n_q == 0 else 0)
    if head_dim <= 0 or q_rows != n_q * head_dim or k_rows != n_kv * head_dim or n_q % n_kv:
        notes.append(
            f"attention shapes (q {q_rows} rows, k {k_rows} rows) do not fit {n_q} heads / "
            f"{n_kv} kv heads from config.json"
        )
        return None
    return Heads(n_q, n_kv, head_dim)


def build_layout(tensors: Mapping[str, TensorInfo], config: Mapping[str, Any]) -> Layout:
    """Assign roles from names and shapes (and head counts from ``config``)."""
    notes: list[str] = []
    found: dict[int, dict[str, list[TensorInfo]]] = {}
    embed = lm_head = None
    for name, info in tensors.items():
        if len(info.shape) != 2 or info.dtype not in FLOAT_DTYPES or not name.endswith("weight"):
            continue
        kind = module_type(name)
        ref = Ref(name, 0, info.shape[0], info.shape[1], info.dtype)
        if kind == "embed" and embed is None:
            embed = ref
        elif kind == "lm_head" and lm_head is None:
            lm_head = ref
        layer = layer_index(name)
        if layer is not None and kind in (*ROLE_TYPES, "gate_up", "qkv"):
            found.setdefault(layer, {}).setdefault(kind, []).append(info)
    hidden = _int(config, "hidden_size", "n_embd", "d_model", "hidden")
    if hidden is None and embed is not None:
        hidden = embed.cols
    layers: dict[int, dict[str, Ref]] = {}
    heads: Heads | None = None
    head_checked = False
    for layer in sorted(found):
        roles: dict[str, Ref] = {}
        for kind, infos in found[layer].items():
            if len(infos) != 1:
                notes.append(f"layer {layer}: {len(infos)} {kind} tensors (experts?) not tested")
                continue
            info = infos[0]
            rows, cols = info.shape
            if kind == "gate_up" and rows % 2 == 0:
                roles["gate"] = Ref(info.name, 0, rows // 2, cols, info.dtype)
                roles["up"] = Ref(info.name, rows // 2, rows, cols, info.dtype)
            elif kind == "qkv":
                roles.update(_split_qkv(info, config))
            elif kind in ROLE_TYPES:
                roles[kind] = Ref(info.name, 0, rows, cols, info.dtype)
        if hidden is not None:
            roles = {k: r for k, r in roles.items() if r.cols == hidden}
        if not head_checked and "q" in roles and "k" in roles:
            heads = _heads(config, roles["q"].rows, roles["k"].rows, notes)
            head_checked = True
        if roles:
            layers[layer] = roles
    llm = any(
        ("gate" in r and "up" in r) or ("q" in r and "k" in r and "v" in r) for r in layers.values()
    )
    if not llm:
        return Layout("generic", {}, embed, lm_head, None, hidden, tensors, notes)
    return Layout("llm", layers, embed, lm_head, heads, hidden, tensors, notes)


def _split_qkv(info: TensorInfo, config: Mapping[str, Any]) -> dict[str, Ref]:
    rows, cols = info.shape
    n_q = _int(config, "num_attention_heads", "n_head", "n_heads", "num_heads", "heads")
    if n_q is None:
        if rows % 3:
            return {}
        q_rows = kv_rows = rows // 3
    else:
        n_kv = _int(config, "num_key_value_heads", "n_kv_heads", "num_kv_heads") or n_q
        head_dim = _int(config, "head_dim") or rows // (n_q + 2 * n_kv)
        q_rows, kv_rows = n_q * head_dim, n_kv * head_dim
        if q_rows + 2 * kv_rows != rows:
            return {}
    return {
        "q": Ref(info.name, 0, q_rows, cols, info.dtype),
        "k": Ref(info.name, q_rows, q_rows + kv_rows, cols, info.dtype),
        "v": Ref(info.name, q_rows + kv_rows, rows, cols, info.dtype),
    }


def canonical_names(tensors: Mapping[str, TensorInfo]) -> dict[str, str]:
    """canonical name -> stored name (first wins)."""
    out: dict[str, str] = {}
    for name in tensors:
        out.setdefault(canonical(name), name)
    return out
