"""Pair the tensors of two checkpoints by name, from headers alone.

Rules, in order (peers.md §B.6):

1. exact name matches;
2. unique matches of :func:`opdgeo.naming.canonical` names (wrapper prefixes stripped);
3. tied embeddings: when ``lm_head.weight`` exists on one side only, it is paired with the
   other side's ``embed_tokens.weight`` and marked ``tied`` (its parameters are then left out
   of whole-model totals, so the shared matrix is not counted twice);
4. embedding / lm_head matrices whose row counts differ (vocabulary resize) are compared on
   the shared leading rows and the difference is reported as ``added_rows``.

Everything else that cannot be compared (one side only, shape mismatch, non-float or
quantized dtype) is returned in ``skipped`` with a reason, never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from opdgeo.config import Settings
from opdgeo.errors import ConfigError, NotComparableError
from opdgeo.io import Checkpoint
from opdgeo.io.checkpoint import FLOAT_DTYPES, QUANTIZED_DTYPES, TensorInfo
from opdgeo.naming import ATTENTION_TYPES, LINEAR_TYPES, canonical, layer_index, module_type


@dataclass(frozen=True)
class Pair:
    """One comparable tensor pair."""

    name: str
    """Row label: the base checkpoint's name for the tensor."""
    base_name: str
    tuned_name: str
    module: str
    layer: int | None
    shape: tuple[int, ...]
    """Shape that is compared (the shared rows after a vocabulary resize)."""
    rows: int | None = None
    """Leading rows to read when the two sides differ in row count, else None."""
    added_rows: int = 0
    """Tuned rows minus base rows (vocabulary resize)."""
    tied: bool = False
    """lm_head paired with the other side's embedding; excluded from whole-model totals."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Skipped:
    """A tensor that is not compared, and why."""

    name: str
    reason: str
    base_shape: tuple[int, ...] | None = None
    tuned_shape: tuple[int, ...] | None = None


@dataclass
class Plan:
    """The result of pairing: what will be compared, in tuned-file order, and what will not."""

    pairs: list[Pair] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(p.numel for p in self.pairs if not p.tied)


def _match_names(
    base: list[str], tuned: list[str]
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    tuned_set = set(tuned)
    matches = [(n, n) for n in base if n in tuned_set]
    done = {n for n, _ in matches}
    rest_b = [n for n in base if n not in done]
    rest_t = [n for n in tuned if n not in done]
    canon_b: dict[str, list[str]] = {}
    canon_t: dict[str, list[str]] = {}
    for n in rest_b:
        canon_b.setdefault(canonical(n), []).append(n)
    for n in rest_t:
        canon_t.setdefault(canonical(n), []).append(n)
    used_b: set[str] = set()
    used_t: set[str] = set()
    for c, names_b in canon_b.items():
        names_t = canon_t.get(c, [])
        if len(names_b) == 1 and len(names_t) == 1:
            matches.append((names_b[0], names_t[0]))
            used_b.add(names_b[0])
            used_t.add(names_t[0])
    only_b = [n for n in rest_b if n not in used_b]
    only_t = [n for n in rest_t if n not in used_t]
    return matches, only_b, only_t


def _find(names: list[str], canon: str) -> str | None:
    hits = [n for n in names if canonical(n) == canon]
    return hits[0] if len(hits) == 1 else None


def _in_scope(name: str, info: TensorInfo, settings: Settings) -> bool:
    kind = module_type(name)
    if settings.scope == "linear":
        ok = len(info.shape) == 2 and layer_index(name) is not None and kind in LINEAR_TYPES
    elif settings.scope == "attention":
        ok = len(info.shape) == 2 and kind in ATTENTION_TYPES
    else:
        ok = True
    if settings.include and not re.search(settings.include, name):
        ok = False
    if settings.exclude and re.search(settings.exclude, name):
        ok = False
    return ok


def _dtype_problem(info: TensorInfo, ckpt: Checkpoint) -> str | None:
    """Why a tensor cannot be compared as stored (decoded tensors always can; a float tensor
    is compared whatever siblings it has, see :mod:`opdgeo.io.quant`)."""
    parent = getattr(info, "parent", None)  # an expert slice of a decoded fused tensor
    if info.name in ckpt.decoders or (parent is not None and parent.name in ckpt.decoders):
        return None
    if info.dtype in QUANTIZED_DTYPES:
        return f"quantized dtype {info.dtype} without a decodable scale"
    if info.dtype not in FLOAT_DTYPES:
        return f"non-float dtype {info.dtype}"
    return None


def plan_pairs(base: Checkpoint, tuned: Checkpoint, settings: Settings) -> Plan:
    """Pair tensors by name, apply the selection, and order pairs as the tuned files lie on disk."""
    matches, only_b, only_t = _match_names(list(base.tensors), list(tuned.tensors))
    tied: list[tuple[str, str]] = []
    lm_b, lm_t = _find(only_b, "lm_head.weight"), _find(only_t, "lm_head.weight")
    if lm_b and not lm_t and (emb_t := _find(list(tuned.tensors), "embed_tokens.weight")):
        tied.append((lm_b, emb_t))
        only_b.remove(lm_b)
    elif lm_t and not lm_b and (emb_b := _find(list(base.tensors), "embed_tokens.weight")):
        tied.append((emb_b, lm_t))
        only_t.remove(lm_t)

    plan = Plan()
    shape_mismatches = considered = 0
    for bname, tname in matches + tied:
        is_tied = (bname, tname) in tied
        bi, ti = base.tensors[bname], tuned.tensors[tname]
        label = tname if is_tied and "lm_head" in tname else bname
        if not _in_scope(label, bi, settings):
            continue
        considered += 1
        problem = _dtype_problem(bi, base) or _dtype_problem(ti, tuned)
        if problem:
            plan.skipped.append(Skipped(label, problem, bi.shape, ti.shape))
            continue
        kind = module_type(label)
        shape, rows, added = bi.shape, None, 0
        if bi.shape != ti.shape:
            resizable = (
                kind in ("embed", "lm_head")
                and len(bi.shape) == len(ti.shape) == 2
                and bi.shape[1] == ti.shape[1]
            )
            if not resizable:
                shape_mismatches += 1
                plan.skipped.append(
                    Skipped(
                        label,
                        f"shape mismatch {list(bi.shape)} vs {list(ti.shape)}",
                        bi.shape,
                        ti.shape,
                    )
                )
                continue
            rows = min(bi.shape[0], ti.shape[0])
            shape, added = (rows, bi.shape[1]), ti.shape[0] - bi.shape[0]
        plan.pairs.append(
            Pair(label, bname, tname, kind, layer_index(label), shape, rows, added, is_tied)
        )
    for name in only_b:  # a name the tuned side stores undecoded is skipped with its format below
        if name not in tuned.consumed and _in_scope(name, base.tensors[name], settings):
            plan.skipped.append(Skipped(name, "only in base", base.tensors[name].shape, None))
    for name in only_t:
        if name not in base.consumed and _in_scope(name, tuned.tensors[name], settings):
            plan.skipped.append(Skipped(name, "only in tuned", None, tuned.tensors[name].shape))

    for name in dict.fromkeys([*base.consumed, *tuned.consumed]):  # scales, adapter factors
        if _in_scope(name, TensorInfo(name, "F32", (), Path(), 0, 0), settings):
            reason = base.consumed.get(name) or tuned.consumed[name]
            side = "" if name in base.consumed and name in tuned.consumed else (
                " (base)" if name in base.consumed else " (tuned)")  # fmt: skip
            plan.skipped.append(Skipped(name, reason + side))
    if not matches and not tied:
        raise NotComparableError(
            f"{base.label} and {tuned.label} share no tensor names; are they the same architecture?"
        )
    if not plan.pairs and considered and shape_mismatches == considered:
        raise NotComparableError(
            f"every shared tensor of {base.label} and {tuned.label} differs in shape"
        )
    if not plan.pairs and considered:
        raise NotComparableError(
            f"no shared tensor of {base.label} and {tuned.label} can be compared "
            f"(first: {plan.skipped[0].name}: {plan.skipped[0].reason})"
        )
    if not plan.pairs:
        raise ConfigError(
            f"no comparable tensor left after the selection (scope={settings.scope}, "
            f"include={settings.include!r}, exclude={settings.exclude!r}); "
            f"{len(plan.skipped)} skipped"
        )
    plan.pairs.sort(key=lambda p: tuned.file_position(p.tuned_name))
    return plan
