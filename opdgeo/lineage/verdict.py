"""From tests to a verdict: per-block evidence, the combined p-value, reasons.

Verdicts (cut points in :class:`LineageSettings`):

- ``same-weights``: every tensor of A pairs with the same-named tensor of B (blocks in
  place) and all are equal on the rows read (at the coarser dtype, so a bf16 -> fp32 cast is
  the same weights);
- ``derived``: combined p <= ``alpha_derived`` (1e-4);
- ``independent``: combined p > ``alpha_independent`` (0.01) and the tests had the power to
  reach ``alpha_derived`` / 100 had every unit agreed;
- ``inconclusive``: anything else (a p in between, or too little to compare).

A block is ``shared`` when the Fisher combination of its tests is at most
``layer_alpha / n_blocks`` (Bonferroni over blocks), ``not shared`` (re-initialised or
replaced) when it is not although its tests could have reached that level, ``identical``
when every tensor of the block is equal on the rows read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from opdgeo.errors import NotComparableError
from opdgeo.lineage.combine import bonferroni_log10, contributions, fisher_log10
from opdgeo.lineage.plan import LineageSettings
from opdgeo.lineage.records import LayerEvidence, PairResult, TensorIdentity, TestRecord

TOP_CONTRIBUTORS = 3


def _fmt_p(log10_p: float) -> str:
    if log10_p > -3:
        return f"{10**log10_p:.3g}"
    return f"1e{log10_p:.0f}" if log10_p < -300 else f"{10**log10_p:.1e}"


def _label(t: TestRecord) -> str:
    if t.kind in ("embed", "lm_head"):
        return t.kind
    if t.layer_a is not None:
        moved = "" if t.layer_a == t.layer_b else f"->{t.layer_b}"
        return f"layer {t.layer_a}{moved} {t.kind}"
    return f"{t.kind} {t.a}"


def _status(
    tests: list[TestRecord], ids: list[TensorIdentity], level: float
) -> tuple[str, float, float]:
    if ids and all(i.identical for i in ids):
        status = "identical"
    else:
        status = ""
    if not tests:
        return status or "untested", 0.0, math.nan
    log10_p = fisher_log10([t.log10_p for t in tests])
    power = fisher_log10([t.log10_p_min for t in tests])
    span = sum(t.max_hits - t.expected for t in tests)
    effect = sum(t.hits - t.expected for t in tests) / span if span > 0 else 0.0
    if status:
        return status, log10_p, effect
    if log10_p <= math.log10(level):
        return "shared", log10_p, effect
    if power <= math.log10(level) - 2:
        return "not shared", log10_p, effect
    return "weak", log10_p, effect


def _block_evidence(
    tests: list[TestRecord], identity: list[TensorIdentity], info: Mapping[str, Any], level: float
) -> list[LayerEvidence]:
    out = []
    pairs: dict[int, int] = info["map"].pairs
    for i in info["a_layers"]:
        ids = [x for x in identity if f"layers.{i}." in x.a]
        j = pairs.get(i)
        if j is None:
            out.append(LayerEvidence(f"layer {i}", i, None, "missing in B", 0.0, math.nan, (), 0,
                                     0, "no block of B left to match (pruned?)"))  # fmt: skip
            continue
        block = [t for t in tests if t.in_combined and t.layer_a == i]
        status, log10_p, effect = _status(block, ids, level)
        note = f"matched to B block {j}" if i != j else ""
        if status == "not shared":
            note = ", ".join(x for x in (note, "re-initialised or replaced") if x)
        out.append(LayerEvidence(f"layer {i}", i, j, status, log10_p, effect,
                                 tuple(t.kind for t in block), sum(x.identical for x in ids),
                                 len(ids), note))  # fmt: skip
    for j, i in sorted(info["extra"].items()):
        block = [t for t in tests if not t.in_combined and t.layer_b == j]
        status, log10_p, effect = _status(block, [], level)
        status = "duplicate" if status == "shared" else "extra in B"
        out.append(LayerEvidence(f"B layer {j}", i, j, status, log10_p, effect,
                                 tuple(t.kind for t in block), 0, 0,
                                 f"closest A block {i}"))  # fmt: skip
    return out


def _part_evidence(
    tests: list[TestRecord], identity: list[TensorIdentity], level: float
) -> list[LayerEvidence]:
    out = []
    for t in tests:
        if t.kind in ("embed", "lm_head", "matrix"):
            ids = [x for x in identity if x.a == t.a]
            status, log10_p, effect = _status([t], ids, level)
            part = t.kind if t.kind != "matrix" else t.a
            note = ""
            if t.kind in ("embed", "lm_head"):
                note = "token geometry, not in the combined p"
                if status == "not shared":
                    note = "re-initialised (a new head?)" if t.kind == "lm_head" else "replaced"
            elif status == "not shared":
                note = "re-initialised or replaced"
            out.append(LayerEvidence(part, None, None, status, log10_p, effect, (t.kind,),
                                     sum(x.identical for x in ids), len(ids), note))  # fmt: skip
    return out


def decide(
    a: str,
    b: str,
    family: str,
    tests: list[TestRecord],
    info: Mapping[str, Any],
    identity: list[TensorIdentity],
    settings: LineageSettings,
    notes: list[str],
    n_tensors: tuple[int, int] = (0, 0),
) -> PairResult:
    """Combine ``tests`` into a :class:`PairResult` (bytes and timing filled by the caller)."""
    included = [t for t in tests if t.in_combined]
    if not included:
        raise NotComparableError(f"{a} and {b}: no test could run (nothing comparable)")
    ps = [t.log10_p for t in included]
    log10_p = fisher_log10(ps)
    bonf = bonferroni_log10(ps)
    power = fisher_log10([t.log10_p_min for t in included])
    span = sum(t.max_hits - t.expected for t in included)
    effect = sum(t.hits - t.expected for t in included) / span if span > 0 else 0.0
    n_blocks = max(1, len(info.get("a_layers", [])) or len(included))
    level = settings.layer_alpha / n_blocks
    layers = _part_evidence(tests, identity, level)
    if info.get("kind") == "llm":
        layers = [e for e in layers if e.part in ("embed", "lm_head")] + _block_evidence(
            tests, identity, info, level
        )
    all_paired = n_tensors[0] > 0 and len(identity) == n_tensors[0] == n_tensors[1]
    in_place = all(e.layer_a == e.layer_b for e in layers)
    if all_paired and in_place and all(i.identical for i in identity):
        verdict = "same-weights"
    elif log10_p <= math.log10(settings.alpha_derived):
        verdict = "derived"
    elif (
        log10_p > math.log10(settings.alpha_independent)
        and power <= math.log10(settings.alpha_derived) - 2
    ):
        verdict = "independent"
    else:
        verdict = "inconclusive"
    shares = contributions(ps)
    ranked = sorted(zip(included, shares, strict=True), key=lambda x: -x[1])
    decided_by = [
        f"{_label(t)} (p={_fmt_p(t.log10_p)}, {t.hits}/{t.units_a} agree, {100 * s:.0f}%)"
        for t, s in ranked[:TOP_CONTRIBUTORS]
        if s > 0
    ]
    reasons = [
        f"combined p={_fmt_p(log10_p)} (Fisher over {len(included)} tests; "
        f"Bonferroni {_fmt_p(bonf)}); effect {effect:.2f}"
    ]
    if verdict == "inconclusive" and power > math.log10(settings.alpha_derived) - 2:
        reasons.append(f"too little to compare: the best possible combined p is {_fmt_p(power)}")
    if verdict in ("derived", "same-weights"):
        for e in layers:
            if e.status in ("not shared", "missing in B", "duplicate", "extra in B"):
                extra = f", {e.note}" if e.note else ""
                reasons.append(f"{e.part}: {e.status} (p={_fmt_p(e.log10_p)}{extra})")
    moved = [
        e
        for e in layers
        if e.layer_a is not None
        and e.layer_b is not None
        and e.layer_a != e.layer_b
        and e.status not in ("duplicate", "extra in B")
    ]
    if moved and verdict in ("derived", "same-weights"):
        reasons.append(
            "blocks matched by content: " + ", ".join(f"{e.layer_a}->{e.layer_b}" for e in moved)
        )
    n_ident = sum(i.identical for i in identity)
    if identity:
        reasons.append(f"{n_ident}/{len(identity)} paired tensors equal on the rows read")
    return PairResult(
        a=a, b=b, verdict=verdict, log10_p=log10_p, log10_p_bonferroni=bonf, effect=effect,
        family=family, n_tests=len(included), reasons=reasons, decided_by=decided_by,
        layers=layers, tests=tests, identity=identity, bytes_read=0, bytes_a=0, bytes_b=0,
        seconds=0.0, alignment="", notes=notes,
    )  # fmt: skip
