"""Pairing tensors of two checkpoints when names may differ (the generic family).

First by canonical name (:func:`opdgeo.naming.canonical`: wrapper prefixes removed) when the
column counts agree (rows may differ: a resized vocabulary, a pruned width); then, among the
matrices left, by structure: grouped by column count, the i-th remaining matrix of A in
header order with the i-th of B. Whatever is left is reported, not guessed.
"""

from __future__ import annotations

import re

from opdgeo.lineage.layout import Layout, canonical_names

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|block)\.(\d+)\.(.*)$")


def suffix_after_layer(name: str) -> tuple[int, str] | None:
    """(block index, rest of the name) for ``...layers.<i>.<rest>``, else None."""
    match = _LAYER.search(name)
    return (int(match.group(1)), match.group(2)) if match else None


def rename_block(name: str, i: int, j: int) -> str:
    """``name`` with its block index ``i`` replaced by ``j``."""
    pattern = re.compile(rf"(^|\.)(layers|h|blocks|layer|block)\.{i}\.")
    return pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}.{j}.", name, count=1)


def pair_by_structure(a: Layout, b: Layout) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(pairs of stored names, unpaired A matrices, unpaired B matrices)."""
    mats_a, mats_b = a.matrices(), b.matrices()
    can_b = canonical_names({n: b.tensors[n] for n in mats_b})
    pairs: list[tuple[str, str]] = []
    used_b: set[str] = set()
    left_a: list[str] = []
    for name, canon in (
        (n, c) for c, n in canonical_names({n: a.tensors[n] for n in mats_a}).items()
    ):
        other = can_b.get(canon)
        if other is not None and a.tensors[name].shape[1] == b.tensors[other].shape[1]:
            pairs.append((name, other))
            used_b.add(other)
        else:
            left_a.append(name)
    left_b = [n for n in mats_b if n not in used_b]
    by_cols_b: dict[int, list[str]] = {}
    for n in left_b:
        by_cols_b.setdefault(b.tensors[n].shape[1], []).append(n)
    unpaired_a = []
    for n in left_a:
        queue = by_cols_b.get(a.tensors[n].shape[1])
        if queue:
            other = queue.pop(0)
            pairs.append((n, other))
            used_b.add(other)
        else:
            unpaired_a.append(n)
    unpaired_b = [n for n in left_b if n not in used_b]
    return pairs, unpaired_a, unpaired_b
