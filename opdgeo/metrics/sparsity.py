"""Update sparsity: the fraction of entries a fine-tune left unchanged (papers.md D1, D2).

All three read the counts of :attr:`opdgeo.pair.TensorPair.elementwise`, one chunked pass
over the pair.
"""

from __future__ import annotations

from opdgeo.metrics.registry import Pool, Summary, metric
from opdgeo.pair import TensorPair

NAN = float("nan")


@metric(
    "sparsity_bf16",
    columns=("sparsity_bf16", "unchanged_bf16"),
    summaries=(
        Summary("sparsity_bf16", "unchanged_bf16", Pool.PER_PARAM, group=True,
                label="sparsity\nbf16", group_label="sparsity bf16", percent=True),
    ),
)  # fmt: skip
def sparsity_bf16(pair: TensorPair) -> dict[str, float]:
    """Fraction of entries whose bf16 representations are bit-identical (PNT Def. 2.2, OPDG §3.1).

    Both sides are rounded to bf16 first (round-to-nearest-even), then compared as int16 bit
    patterns: ``sparsity_bf16 = #{i : bits(bf16(W1_i)) == bits(bf16(W0_i))} / n``, with +0/−0
    equal and NaN always changed. This equals the papers' relative rule
    ``|ŵ − w| ≤ η·max(|w|, |ŵ|)`` with η = 1e-3, because distinct bf16 numbers differ by a
    relative amount > 2⁻⁸ > η (PNT App. E.2). ``unchanged_bf16`` is the count (for pooling).
    """
    n = pair.numel
    unchanged = pair.elementwise.unchanged_bf16
    return {"sparsity_bf16": unchanged / n if n else NAN, "unchanged_bf16": unchanged}


@metric(
    "sparsity_atol",
    columns=("sparsity_atol", "unchanged_atol", "sparsity_atol_strict"),
    summaries=(
        Summary("sparsity_atol", "unchanged_atol", Pool.PER_PARAM, group=True,
                label="sparsity\natol", percent=True),
        Summary("sparsity_atol_strict", "sparsity_atol_strict", Pool.WEIGHTED),
    ),
)  # fmt: skip
def sparsity_atol(pair: TensorPair) -> dict[str, float]:
    """Fraction of entries with ``|bf16(W1) − bf16(W0)| ≤ atol`` (MUK 2505.11711 §2.2, atol 1e-5).

    The difference is taken in bf16 arithmetic as MUK's code does (``(a − b)`` of two bf16
    tensors, i.e. the exact difference rounded to bf16). ``sparsity_atol_strict`` uses
    ``< atol`` as DSSU's code does (OPD-Param-Analysis); the two differ only on exact ties.
    NaN differences count as changed.
    """
    n = pair.numel
    stats = pair.elementwise
    return {
        "sparsity_atol": stats.le_atol / n if n else NAN,
        "unchanged_atol": stats.le_atol,
        "sparsity_atol_strict": stats.lt_atol / n if n else NAN,
    }


@metric(
    "sparsity_exact",
    columns=("sparsity_exact",),
    summaries=(Summary("sparsity_exact", "sparsity_exact", Pool.WEIGHTED),),
)
def sparsity_exact(pair: TensorPair) -> dict[str, float]:
    """Fraction of entries exactly equal in the stored precision: ``#{W1_i == W0_i} / n``.

    Compared after upcasting both to the compute dtype (exact for bf16/fp16/fp32); NaN never
    equals anything. For fp32-stored checkpoints this is the sparsity the storage really has;
    sparsity_bf16 rounds it away (RAZOR 2509.04259 §6).
    """
    n = pair.numel
    return {"sparsity_exact": pair.elementwise.exact_equal / n if n else NAN}
