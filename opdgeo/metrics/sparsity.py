"""Update sparsity: the fraction of entries a fine-tune left unchanged (papers.md D1, D2)."""

from __future__ import annotations

import torch

from opdgeo.metrics import metric
from opdgeo.pair import TensorPair


@metric("sparsity_bf16", columns=("sparsity_bf16", "unchanged_bf16"))
def sparsity_bf16(pair: TensorPair) -> dict[str, float]:
    """Fraction of entries whose bf16 representations are bit-identical (PNT Def. 2.2, OPDG §3.1).

    Both sides are rounded to bf16 first (round-to-nearest-even), then compared as int16 bit
    patterns: ``sparsity_bf16 = #{i : bits(bf16(W1_i)) == bits(bf16(W0_i))} / n``, with +0/−0
    equal and NaN always changed. This equals the papers' relative rule
    ``|ŵ − w| ≤ η·max(|w|, |ŵ|)`` with η = 1e-3, because distinct bf16 numbers differ by a
    relative amount > 2⁻⁸ > η (PNT App. E.2). ``unchanged_bf16`` is the count (for pooling).
    """
    n = pair.numel
    if pair.identical and pair.n_nonfinite == 0:
        unchanged = n
    else:
        unchanged = int(pair.unchanged_bf16.sum())
    return {"sparsity_bf16": unchanged / n if n else float("nan"), "unchanged_bf16": unchanged}


@metric("sparsity_atol", columns=("sparsity_atol", "unchanged_atol", "sparsity_atol_strict"))
def sparsity_atol(pair: TensorPair) -> dict[str, float]:
    """Fraction of entries with ``|bf16(W1) − bf16(W0)| ≤ atol`` (MUK 2505.11711 §2.2, atol 1e-5).

    The difference is taken in bf16 arithmetic as MUK's code does (``(a − b)`` of two bf16
    tensors, i.e. the exact difference rounded to bf16). ``sparsity_atol_strict`` uses
    ``< atol`` as DSSU's code does (OPD-Param-Analysis); the two differ only on exact ties.
    NaN differences count as changed.
    """
    n = pair.numel
    if n == 0:
        return {
            "sparsity_atol": float("nan"),
            "unchanged_atol": 0,
            "sparsity_atol_strict": float("nan"),
        }
    if pair.identical and pair.n_nonfinite == 0:
        return {"sparsity_atol": 1.0, "unchanged_atol": n, "sparsity_atol_strict": 1.0}
    a = pair.bits1.view(torch.bfloat16).float()
    b = pair.bits0.view(torch.bfloat16).float()
    d = a.sub_(b).to(torch.bfloat16).float().abs_()
    atol = pair.settings.atol
    le = int((d <= atol).sum())
    lt = int((d < atol).sum())
    return {"sparsity_atol": le / n, "unchanged_atol": le, "sparsity_atol_strict": lt / n}


@metric("sparsity_exact", columns=("sparsity_exact",))
def sparsity_exact(pair: TensorPair) -> dict[str, float]:
    """Fraction of entries exactly equal in the stored precision: ``#{W1_i == W0_i} / n``.

    Compared after upcasting both to the compute dtype (exact for bf16/fp16/fp32). For
    fp32-stored checkpoints this is the sparsity the storage really has; sparsity_bf16
    rounds it away (RAZOR 2509.04259 §6).
    """
    n = pair.numel
    if n == 0:
        return {"sparsity_exact": float("nan")}
    if pair.identical:
        same = n - pair.n_nonfinite
    else:
        same = int((pair.w0 == pair.w1).sum())
    return {"sparsity_exact": same / n}
