"""The ``quantized`` verdict: a checkpoint that is its base rounded to a quantization grid.

Comparing an FP8 / MXFP4 release with its bf16 source asks "what did quantization do?", not
"how was this fine-tuned?". :func:`quantization_verdict` answers ``quantized`` before the
regime classifier runs when some tensors were decoded from a quantized format, nearly all
their entries lie within half a quantization step of the base (the ``decoding`` metric,
:mod:`opdgeo.metrics.decoded`), and every other compared tensor is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from opdgeo.regimes import Regime, Verdict

MIN_SHARE = 0.999
"""Share of the quantized entries that must lie within half a step of the base."""


def quantization_verdict(
    summary: Mapping[str, Any], frame: pd.DataFrame, formats: Iterable[str] = ()
) -> Verdict | None:
    """``quantized`` when the run is its base quantized (module docstring), else None.
    ``formats`` are the decoders' method names (the ``decoding`` metric's methods of the
    compared records, taken from the records, not parsed back from the ``method`` text)."""
    n_quant = float(summary.get("n_quantized_params") or 0)
    share = summary.get("quant_step_share")
    if n_quant <= 0 or share is None or not math.isfinite(float(share)):
        return None
    rows = frame[(frame["skipped"] == "") & (~frame["tied"].astype(bool))]
    plain = rows[rows["quant_params"].astype(float).fillna(0) == 0]
    changed = plain[plain["max_abs_delta"].astype(float).fillna(math.inf) > 0]
    if float(share) < MIN_SHARE or len(changed):
        return None
    named = sorted(set(formats))
    reasons = (
        f"{int(n_quant)} parameters were decoded from {', '.join(named) or 'a quantized format'}",
        f"{float(share):.4%} of them lie within half a quantization step of the base",
        f"the other {len(plain)} compared tensors are bit-identical",
    )
    return Verdict(
        Regime.QUANTIZED, float(share), reasons,
        ("a quantized release of the base, not a fine-tune: the features of the "
         "fine-tuning regimes do not apply",),
    )  # fmt: skip
