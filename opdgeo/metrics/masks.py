"""Where the visible updates land: overlap with principal / low-magnitude masks (papers.md D6)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from opdgeo.linalg import count, threshold_mask
from opdgeo.metrics.registry import Derived, Over, Pool, Summary, metric
from opdgeo.pair import TensorPair

NAN = float("nan")
M = Over.MATRICES


def mask_rank(pair: TensorPair) -> int:
    """Rank of the principal-mask reconstruction: min(mask_rank, ceil(min(m, n) / 16))."""
    m, n = pair.base.shape
    return max(1, min(pair.settings.mask_rank, math.ceil(min(m, n) / 16)))


def _enrichment(pooled: Mapping[str, float]) -> float:
    """lowmag_overlap / overlap_baseline: 1 = random, > 1 = visible updates favour small |W0|."""
    baseline = pooled["overlap_baseline"]
    return pooled["lowmag_overlap"] / baseline if baseline and not math.isnan(baseline) else NAN


@metric(
    "mask_overlap",
    columns=(
        "principal_overlap",
        "lowmag_overlap",
        "principal_notlow_overlap",
        "overlap_baseline",
        "principal_notlow_baseline",
        "mask_rank",
    ),
    matrix_only=True,
    tiers=("standard", "exact"),
    summaries=(
        Summary("principal_overlap", "principal_overlap", Pool.MEAN, M, group=True,
                label="princ.\noverlap", percent=True),
        Summary("lowmag_overlap", "lowmag_overlap", Pool.MEAN, M, group=True,
                label="low-mag\noverlap", group_label="low-mag overlap", percent=True),
        Summary("principal_notlow_overlap", "principal_notlow_overlap", Pool.MEAN, M),
        Summary("overlap_baseline", "overlap_baseline", Pool.MEAN, M),
    ),
    derived=(Derived("lowmag_enrichment", _enrichment),),
    w0_k=mask_rank,
)  # fmt: skip
def mask_overlap(pair: TensorPair) -> dict[str, float]:
    """Share of visibly updated entries that fall in W0's principal / low-magnitude masks.

    ``M_upd = {bf16(W1) ≠ bf16(W0)}`` (D3). ``M_princ`` = top-α entries of
    ``|U_r Σ_r V_rᵀ|`` (rank-r reconstruction of W0, r = ``mask_rank``; OPDG r = 64, LIFT's
    principal weights); ``M_low`` = bottom-α entries of ``|W0|``; α = ``alpha`` (OPDG Fig. 3:
    0.3), ties filled in index order so each mask holds exactly round(α·n) entries.
    ``overlap(M) = |M ∩ M_upd| / |M_upd|``; an update blind to the masks scores α
    (``overlap_baseline``). ``principal_notlow_overlap`` uses ``M_princ ∩ M_lowᶜ`` (PNT Fig. 5),
    whose baseline is that mask's density. NaN when no entry changed visibly, and for a mask
    that holds no entry (``round(α·n) == 0``). The thresholds
    depend on W0 alone and are kept with its spectrum (shared across runs, base cache).
    """
    alpha = pair.settings.alpha
    r = mask_rank(pair)
    w0_abs = pair.w0.abs()
    thr, need = pair.threshold(f"low:{alpha!r}", w0_abs, alpha, largest=False)
    low = threshold_mask(w0_abs, thr, need, largest=False)
    del w0_abs
    sp = pair.spec0(r)
    recon = (sp.u[:, :r] * sp.s[:r]).to(torch.float32) @ sp.v[:, :r].to(torch.float32).T
    recon.abs_()
    thr, need = pair.threshold(f"principal:{alpha!r}:{r}", recon, alpha, largest=True)
    princ = threshold_mask(recon, thr, need, largest=True)
    del recon
    notlow = princ & ~low
    n = pair.numel
    result = {
        "overlap_baseline": alpha,
        "principal_notlow_baseline": count(notlow) / n,
        "mask_rank": r,
    }
    visible = pair.visible
    n_vis = count(visible)
    if n_vis == 0:
        return {
            **result,
            "principal_overlap": NAN,
            "lowmag_overlap": NAN,
            "principal_notlow_overlap": NAN,
        }
    # a mask that holds no entry (round(alpha * n) == 0, e.g. alpha = 1e-9) has no overlap
    has_princ, has_low = bool(count(princ)), bool(count(low))
    return {
        **result,
        "principal_overlap": count(princ & visible) / n_vis if has_princ else NAN,
        "lowmag_overlap": count(low & visible) / n_vis if has_low else NAN,
        "principal_notlow_overlap": count(notlow & visible) / n_vis if has_princ else NAN,
    }
