"""One pair of checkpoints: read what the plan says, run the tests, combine, decide.

Order of work for the LLM family (bounded memory: gate rows of every block, then one block
pair at a time):

1. headers -> layouts (:mod:`layout`) and the read plan (:mod:`plan`);
2. embedding / lm_head rows: the residual-dimension tests, and a signed permutation of B's
   residual dimensions (AWM-style) that is applied to B's columns when the embedding says
   B's residual basis was permuted;
3. gate rows of every block -> block assignment by content (:mod:`layers`);
4. per assigned block pair: up, q, k, v rows -> MLP and attention tests (:mod:`statistics`);
5. identity prefixes of the remaining tensors -> bit-identity per tensor;
6. Fisher / Bonferroni combination and the verdict (:mod:`combine`, :mod:`verdict`).

The generic family runs :func:`statistics.split_test` on every paired 2-D weight instead.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from opdgeo.errors import NotComparableError
from opdgeo.lineage import statistics as st
from opdgeo.lineage.access import Source
from opdgeo.lineage.columns import ColumnAligner, natural_key
from opdgeo.lineage.layers import match_layers
from opdgeo.lineage.layout import Layout, Ref, build_layout, canonical_names
from opdgeo.lineage.matching import signed_alignment
from opdgeo.lineage.naming_pairs import pair_by_structure, rename_block, suffix_after_layer
from opdgeo.lineage.plan import LineageSettings, checkpoint_bytes, plan_reads, token_rows
from opdgeo.lineage.records import PairResult, TensorIdentity
from opdgeo.lineage.side import Progress, Run, Side, record
from opdgeo.lineage.verdict import decide
from opdgeo.naming import canonical

MIN_TOKENS_PER_HALF = 64
"""Each half of the token rows must hold this many tokens for the embedding tests."""
ALIGN_MIN_CORR = 0.5
"""Median |corr| of matched embedding columns needed to re-align B's residual dimensions."""


def analyse_pair(
    src_a: Source,
    src_b: Source,
    settings: LineageSettings | None = None,
    progress: Progress | None = None,
) -> PairResult:
    """Lineage of ``src_b`` relative to ``src_a`` (see module docstring)."""
    settings = settings or LineageSettings()
    start = time.perf_counter()
    lay_a = build_layout(src_a.tensors, src_a.config)
    lay_b = build_layout(src_b.tensors, src_b.config)
    if lay_a.family != lay_b.family:
        lay_a.family = lay_b.family = "generic"
    a = Side.open(src_a, lay_a, plan_reads(lay_a, lay_b, settings))
    b = Side.open(src_b, lay_b, plan_reads(lay_b, lay_a, settings))
    say = progress or (lambda _msg: None)
    run = (
        _LlmRun(a, b, settings, say) if lay_a.family == "llm" else _GenericRun(a, b, settings, say)
    )
    run.execute()
    identity = run.finish_identity()
    result = decide(
        src_a.label, src_b.label, lay_a.family, run.tests, run.evidence(identity), identity,
        settings, run.notes + lay_a.notes + [f"B: {n}" for n in lay_b.notes],
        (_n_tensors(lay_a), _n_tensors(lay_b)),
    )  # fmt: skip
    result.alignment = run.aligner.description
    result.bytes_read = a.reader.bytes_read + b.reader.bytes_read
    result.bytes_a, result.bytes_b = checkpoint_bytes(lay_a), checkpoint_bytes(lay_b)
    result.seconds = time.perf_counter() - start
    return result


class _LlmRun(Run):
    """Embedding, block assignment, MLP and attention tests."""

    def execute(self) -> None:
        a, b, s = self.a, self.b, self.settings
        if a.layout.hidden != b.layout.hidden:
            raise NotComparableError(
                f"{a.source.label} and {b.source.label}: hidden sizes differ "
                f"({a.layout.hidden} vs {b.layout.hidden}); lineage compares residual-space rows"
            )
        self._embedding()
        role = self._signature_role()
        if role is None:
            raise NotComparableError(
                f"{a.source.label} and {b.source.label}: no MLP or attention projections "
                "present in both (nothing comparable)"
            )
        self.role = role
        self.say(f"matching blocks on {role} rows")
        sig_a = {i: a.rows(r[role]) for i, r in a.layout.layers.items() if role in r}
        sig_b = {j: self.aligner(b.rows(r[role])) for j, r in b.layout.layers.items() if role in r}
        self.map = match_layers(sig_a, sig_b, s.screen_units)
        pairs = self.name_pairs()
        for i in sorted(a.layout.layers):
            j = self.map.pairs.get(i)
            if j is not None:
                self.say(f"block {i} <-> {j}")
                self._block(i, j, combined=True)
                self._settle([p for p in pairs if _block_of(p[0]) == i])
        self.extra: dict[int, int] = {}
        for j in sorted(set(self.map.b_layers) - set(self.map.pairs.values())):
            i = self.map.best_a_for(j)
            self.extra[j] = i
            self._block(i, j, combined=False)
        self._note_unpaired(pairs)

    def _note_unpaired(self, pairs: list[tuple[str, str]]) -> None:
        """Report tensors left without a same-named partner (outside missing / extra blocks,
        which the block evidence reports): an added adapter, a renamed or fused tensor."""
        missing = set(self.a.layout.layers) - set(self.map.pairs)
        left = []
        for side, used, skip in (
            (self.a, {na for na, _ in pairs}, missing),
            (self.b, {nb for _, nb in pairs}, set(self.extra)),
        ):
            left.append(
                [n for n, t in side.layout.tensors.items() if t.shape and n not in used
                 and _block_of(n) not in skip]
            )  # fmt: skip
        if left[0] or left[1]:
            self.notes.append(
                f"not paired by name (no identity check): {len(left[0])} tensors of A, "
                f"{len(left[1])} of B (e.g. {(left[0] or left[1])[0]})"
            )

    def _signature_role(self) -> str | None:
        for role in ("gate", "q", "k", "up", "v"):
            if any(role in r for r in self.a.layout.layers.values()) and any(
                role in r for r in self.b.layout.layers.values()
            ):
                return role
        return None

    def _embedding(self) -> None:
        a, b, s = self.a, self.b, self.settings
        t = token_rows(a.layout, b.layout, s)
        if t < 2 * MIN_TOKENS_PER_HALF:
            self.notes.append(
                f"embedding tests skipped: {t} shared token rows (need {2 * MIN_TOKENS_PER_HALF});"
                " residual dimensions taken as stored"
            )
            return
        tied_a = a.source.config.get("tie_word_embeddings") is True
        tied_b = b.source.config.get("tie_word_embeddings") is True
        for part in ("embed", "lm_head"):
            ra: Ref | None = getattr(a.layout, part)
            rb: Ref | None = getattr(b.layout, part)
            if ra is None or rb is None or (part == "lm_head" and (tied_a or tied_b)):
                continue
            xa, xb = a.rows(ra), b.rows(rb)
            out = st.embedding_test(f"{part}", xa, xb)
            self.tests.append(
                record(part, ra.name, rb.name, None, None, out, s.embedding_in_combined)
            )
            if part == "embed":
                self._align(xa, xb, out)

    def _align(self, xa: torch.Tensor, xb: torch.Tensor, out: st.Outcome) -> None:
        """Use the embedding's signed permutation when it looks like a derived model's.

        Applied only if the embedding test is significant, most dimensions moved, and the
        matched columns correlate strongly (median |corr| >= ALIGN_MIN_CORR): independent
        models with a shared token geometry also agree on the embedding test but match
        columns weakly (docs/lineage.md, "Residual alignment").
        """
        if out.tail.log10_p_ge > -3:
            return
        perm, sign, corr = signed_alignment(xa, xb)
        kept = float(np.mean((perm == np.arange(len(perm))) & (sign > 0)))
        strong = float(np.median(corr)) >= ALIGN_MIN_CORR
        if kept < 0.5 and strong:
            self.aligner.perm = perm
            self.aligner.sign = torch.from_numpy(sign.astype(np.float32))
            self.aligner.description = (
                f"signed permutation of residual dimensions from the embedding "
                f"({100 * (1 - kept):.0f}% of dimensions moved or flipped)"
            )

    def _block(self, i: int, j: int, combined: bool) -> None:
        a, b = self.a, self.b
        ra, rb = a.layout.layers[i], b.layout.layers[j]
        al = self.aligner
        if "gate" in ra and "up" in ra and "gate" in rb and "up" in rb:
            out = st.mlp_test(
                f"mlp:{i}:{j}",
                (a.rows(ra["gate"]), al(b.rows(rb["gate"]))),
                (a.rows(ra["up"]), al(b.rows(rb["up"]))),
            )
            self.tests.append(
                record("mlp", f"layers.{i}.mlp", f"layers.{j}.mlp", i, j, out, combined)
            )
        ha, hb = a.layout.heads, b.layout.heads
        if not all(r in ra and r in rb for r in ("q", "k", "v")):
            return
        if ha is None or hb is None or ha.head_dim != hb.head_dim:
            if combined and i == min(a.layout.layers):
                self.notes.append("attention tests skipped: head layout unknown or different")
            return
        if ha.n_q // ha.n_kv != hb.n_q // hb.n_kv:
            if combined and i == min(a.layout.layers):
                self.notes.append("attention tests skipped: different q heads per kv head")
            return
        qa, ka, va = (a.rows(ra[r]) for r in ("q", "k", "v"))
        qb, kb, vb = (al(b.rows(rb[r])) for r in ("q", "k", "v"))
        swap = ha.n_kv > hb.n_kv or ha.n_q > hb.n_q
        if swap:
            qa, ka, va, qb, kb, vb = qb, kb, vb, qa, ka, va
        d, group = ha.head_dim, ha.n_q // ha.n_kv
        kv, k_match = st.kv_test(f"kv:{i}:{j}", (ka, kb), (va, vb), d)
        q_out = st.q_group_test(f"q:{i}:{j}", (qa, qb), k_match, d, group)
        names = (f"layers.{i}.self_attn", f"layers.{j}.self_attn")
        self.tests.append(record("attn_kv", *names, i, j, kv, combined))
        self.tests.append(record("attn_q", *names, i, j, q_out, combined))

    def name_pairs(self) -> list[tuple[str, str]]:
        can_a = canonical_names(self.a.layout.tensors)
        can_b = canonical_names(self.b.layout.tensors)
        pairs = []
        for ca, na in can_a.items():
            split = suffix_after_layer(ca)
            if split is None:
                cb: str | None = ca
            else:
                j = self.map.pairs.get(split[0])
                cb = None if j is None else rename_block(ca, split[0], j)
            if cb is not None and cb in can_b:
                pairs.append((na, can_b[cb]))
        return pairs

    def evidence(self, identity: list[TensorIdentity]) -> dict[str, object]:
        return {
            "kind": "llm",
            "map": self.map,
            "extra": self.extra,
            "a_layers": sorted(self.a.layout.layers),
        }


class _GenericRun(Run):
    """Every paired 2-D weight: rows matched on even vs odd columns."""

    def execute(self) -> None:
        a, b = self.a, self.b
        pairs, unpaired_a, unpaired_b = pair_by_structure(a.layout, b.layout)
        self.pairs = pairs
        columns = ColumnAligner(math.log10(self.settings.alpha_derived))
        for na, nb in sorted(pairs, key=lambda p: natural_key(p[0])):
            xa, xb = a.prefix(na), b.prefix(nb)
            if xa is None or xb is None or xa.ndim != 2 or xa.shape[1] < 4 or xa.shape[0] < 2:
                continue
            if xb.shape[0] < 2:
                continue
            ta, tb = a.layout.tensors[na].shape, b.layout.tensors[nb].shape
            xa, xb, note = columns.align((ta[1], tb[1]), xa, xb)
            out = dataclasses.replace(st.split_test(f"matrix:{na}:{nb}", xa, xb), note=note)
            self.tests.append(record("matrix", na, nb, None, None, out, True))
            columns.offer(na, (ta[0], tb[0]), xa, xb, out.tail.log10_p_random)
        if unpaired_a or unpaired_b:
            self.notes.append(
                f"not paired by name or structure: {len(unpaired_a)} matrices of A, "
                f"{len(unpaired_b)} of B"
                + (f" (e.g. {unpaired_a[0]})" if unpaired_a else f" (e.g. {unpaired_b[0]})")
            )
        if not self.tests:
            raise NotComparableError(
                f"{a.source.label} and {b.source.label}: no 2-D weights with matching column "
                "counts (nothing comparable)"
            )

    def name_pairs(self) -> list[tuple[str, str]]:
        can_a = canonical_names(self.a.layout.tensors)
        can_b = canonical_names(self.b.layout.tensors)
        paired = {na for na, _ in self.pairs}
        out = list(self.pairs)
        out += [(na, can_b[c]) for c, na in can_a.items() if c in can_b and na not in paired]
        return out

    def evidence(self, identity: list[TensorIdentity]) -> dict[str, object]:
        return {"kind": "generic"}


def _block_of(name: str) -> int | None:
    split = suffix_after_layer(canonical(name))
    return None if split is None else split[0]


def _n_tensors(layout: Layout) -> int:
    return sum(1 for t in layout.tensors.values() if t.shape)
