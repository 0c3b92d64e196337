"""What decoding adds to a tensor pair: the LoRA rank and scale, and how far a quantized
weight lies from the base (papers.md has no metric for these; see README "Quantized
weights" and "LoRA / PEFT adapters")."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from opdgeo.linalg import count
from opdgeo.metrics.registry import Derived, Pool, Summary, metric
from opdgeo.pair import TensorPair

NAN = math.nan
BF16_HALF_ULP = 2.0**-8
"""Half a bf16 ulp relative to the value: the base may be the bf16 rounding of the
quantizer's float32 source, so each entry is allowed that much on top of half a step."""


def _share(pooled: Mapping[str, float]) -> float:
    n = pooled.get("n_quantized_params", 0.0)
    return pooled["n_within_quant_step"] / n if n and n > 0 else NAN


@metric(
    "decoding",
    columns=("lora_rank", "lora_scale", "quant_params", "quant_within_step"),
    summaries=(
        Summary("lora_rank_max", "lora_rank", Pool.MAX),
        Summary("n_quantized_params", "quant_params", Pool.SUM),
        Summary("n_within_quant_step", "quant_within_step", Pool.SUM),
    ),
    derived=(Derived("quant_step_share", _share),),
)  # fmt: skip
def decoding(pair: TensorPair) -> dict[str, float]:
    """Facts from the decoders (:mod:`opdgeo.io.quant`, :mod:`opdgeo.io.peft`).

    ``lora_rank`` and ``lora_scale`` are the adapter's r and s = lora_alpha / r (or
    lora_alpha / √r with rsLoRA) for a LoRA-composed tensor. For a tensor decoded from a
    quantized format on either side, ``quant_params`` is its size and ``quant_within_step``
    counts the entries with ``|W1 − W0| ≤ h + 2⁻⁸ |W0|``, h being half the quantization step
    at that entry (the largest of the quantized sides): the entries a round-to-nearest
    quantization of W0 explains (the 2⁻⁸ |W0| allows for a bf16 base rounded from the
    quantizer's float32 source). All four are 0 for tensors stored as plain floats. The
    summary's ``quant_step_share`` is Σ quant_within_step / Σ quant_params (NaN without
    quantized tensors).
    """
    out = dict.fromkeys(("lora_rank", "lora_scale", "quant_params", "quant_within_step"), 0.0)
    steps = []
    for decoded in pair.decoded:
        if decoded is None:
            continue
        if decoded.method:
            pair.use(decoded.method)
        if decoded.rank is not None:
            out["lora_rank"] = float(decoded.rank)
            out["lora_scale"] = float(decoded.scale) if decoded.scale is not None else NAN
        if decoded.half_step is not None:
            steps.append(decoded.half_step().to(pair.delta.device))
    if steps:
        half = steps[0] if len(steps) == 1 else torch.maximum(steps[0], steps[1])
        allowed = half + BF16_HALF_ULP * pair.w0.abs()
        out["quant_params"] = float(pair.numel)
        out["quant_within_step"] = float(count(pair.delta.abs() <= allowed))
    return out
