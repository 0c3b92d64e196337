"""Which rows of which tensors the lineage tests read, and how many bytes that is.

Per checkpoint (LLM family), with T = min(vocab_A, vocab_B, ``max_tokens``) rounded down to
an even number and k = ``max_units``:

- MLP ``gate`` and ``up``: the first min(rows, k) hidden units (rows), every column;
- attention ``q``, ``k``, ``v``: every row (a head is a block of rows);
- ``embed`` and an untied ``lm_head``: the first T token rows;
- every other tensor (o, down, norms, biases): a prefix of at most ``identity_bytes`` bytes
  (at least one row), for the bit-identity report only.

Generic family: the first min(rows, k) rows of every float 2-D tensor, identity prefixes for
the rest. Every read is a prefix of rows except the ``up`` half of a fused ``gate_up_proj``
and the k / v parts of a fused ``qkv_proj`` (contiguous row ranges further in).

:func:`plan_bytes` evaluates the plan on headers alone, e.g. on a fake Qwen2.5-7B header.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from opdgeo.lineage.access import row_bytes
from opdgeo.lineage.layout import Layout, Ref


@dataclass(frozen=True)
class LineageSettings:
    """How much to read and where the verdict's cut points lie."""

    max_units: int = 1024
    """Rows (hidden units) read per MLP matrix, and per matrix in the generic family."""
    screen_units: int = 128
    """A's units used to score block-to-block similarity when matching blocks."""
    max_tokens: int = 8192
    """Token rows of the embedding / lm_head read (shared vocabulary prefix)."""
    identity_bytes: int = 256 * 1024
    """Bytes per tensor read only for the bit-identity report."""
    alpha_derived: float = 1e-4
    """Combined p at or below this: ``derived``."""
    alpha_independent: float = 0.01
    """Combined p above this (with enough power): ``independent``."""
    layer_alpha: float = 0.01
    """Family-wise level for calling a block shared / not shared (Bonferroni over blocks)."""
    embedding_in_combined: bool = False
    """Count the embedding / lm_head tests in the combined p-value (see docs/lineage.md)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Read:
    """Rows ``[start, stop)`` of tensor ``name``, and why."""

    name: str
    start: int
    stop: int
    purpose: str


def token_rows(a: Layout, b: Layout, settings: LineageSettings) -> int:
    """T: shared vocabulary prefix read from the embedding / lm_head (even, >= 0)."""
    va, vb = a.vocab, b.vocab
    if va is None or vb is None:
        return 0
    t = min(va, vb, settings.max_tokens)
    return t - t % 2


def _prefix(ref: Ref, rows: int) -> tuple[int, int]:
    return ref.start, ref.start + min(ref.rows, rows)


def plan_reads(layout: Layout, other: Layout, settings: LineageSettings) -> list[Read]:
    """Reads for ``layout``'s checkpoint when compared with ``other``'s."""
    reads: list[Read] = []
    used: set[str] = set()
    if layout.family == "llm" and other.family == "llm":
        t = token_rows(layout, other, settings)
        for role, ref in (("embed", layout.embed), ("lm_head", layout.lm_head)):
            if ref is not None and t > 0:
                reads.append(Read(ref.name, 0, t, role))
                used.add(ref.name)
        for layer in sorted(layout.layers):
            for role, ref in layout.layers[layer].items():
                rows = settings.max_units if role in ("gate", "up") else ref.rows
                start, stop = _prefix(ref, rows)
                reads.append(Read(ref.name, start, stop, f"{role}:{layer}"))
                used.add(ref.name)
    else:
        for name in layout.matrices():
            info = layout.tensors[name]
            reads.append(Read(name, 0, min(info.shape[0], settings.max_units), "matrix"))
            used.add(name)
    for name, info in layout.tensors.items():
        if name in used or not info.shape or info.nbytes == 0:
            continue
        per_row = max(1, row_bytes(info))
        rows = max(1, min(info.shape[0], settings.identity_bytes // per_row))
        reads.append(Read(name, 0, rows, "identity"))
    return reads


def read_bytes(layout: Layout, reads: list[Read]) -> int:
    """Bytes of ``reads`` (a prefix read is counted once per read, as the reader does)."""
    return sum((r.stop - r.start) * row_bytes(layout.tensors[r.name]) for r in reads)


def checkpoint_bytes(layout: Layout) -> int:
    return sum(t.nbytes for t in layout.tensors.values())


@dataclass(frozen=True)
class PlanBytes:
    """Bytes the plan reads from each side beside the checkpoints' sizes."""

    read_a: int
    read_b: int
    size_a: int
    size_b: int

    @property
    def fraction(self) -> float:
        return (self.read_a + self.read_b) / (self.size_a + self.size_b)


def plan_bytes(a: Layout, b: Layout, settings: LineageSettings | None = None) -> PlanBytes:
    """What comparing ``a`` with ``b`` reads, from their headers alone."""
    settings = settings or LineageSettings()
    return PlanBytes(
        read_bytes(a, plan_reads(a, b, settings)),
        read_bytes(b, plan_reads(b, a, settings)),
        checkpoint_bytes(a),
        checkpoint_bytes(b),
    )


def by_purpose(reads: list[Read]) -> Iterator[tuple[str, list[Read]]]:
    """Reads grouped by purpose prefix (``gate``, ``q``, ``embed``, ``identity`` ...)."""
    groups: dict[str, list[Read]] = {}
    for r in reads:
        groups.setdefault(r.purpose.split(":")[0], []).append(r)
    yield from groups.items()
