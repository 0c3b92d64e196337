"""Intruder dimensions (Shuttleworth et al., arXiv 2410.21228; papers.md D14)."""

from __future__ import annotations

import torch

from opdgeo.metrics.registry import Over, Param, Pool, Summary, metric
from opdgeo.pair import TensorPair


def _top(pair: TensorPair) -> int:
    return int(pair.settings.param("intruder_k"))


def left_basis(pair: TensorPair) -> torch.Tensor:
    """Every left singular vector of W0 (m x min(m, n), float64 SVD), once per base tensor."""
    memo = pair.shared.memo
    if "left_basis" not in memo:
        u, _, _ = torch.linalg.svd(pair.w0.to(torch.float64), full_matrices=False)
        memo["left_basis"] = u
    return memo["left_basis"]  # type: ignore[no-any-return]


@metric(
    "intruder_dims",
    columns=("intruder_dims",),
    matrix_only=True,
    tiers=("exact",),
    summaries=(Summary("intruder_dims", "intruder_dims", Pool.MEAN, Over.MATRICES),),
    w1_k=_top,
    params=(
        Param("intruder_k", 10, "W1's top singular vectors tested (INTR: 10)", minimum=1),
        Param("intruder_eps", 0.5, "cosine below which a vector is an intruder (INTR: 0.5)",
              minimum=0.0, maximum=1.0),
    ),
    unavailable="no-full-W0-basis",
)  # fmt: skip
def intruder_dims(pair: TensorPair) -> dict[str, float]:
    """Number of W1's top-k left singular vectors that are far from every one of W0's.

    ``intruder_dims = #{j ≤ k : max_i |⟨u_j(W1), u_i(W0)⟩| < ε}``, with u_i(W0) ranging over
    ALL min(m, n) left singular vectors of W0 (INTR Algorithm 1; PEFT's
    ``detect_intruder_dimensions``), k = ``intruder_k`` (10) and ε = ``intruder_eps`` (0.5),
    both settings. Vectors from float64 SVDs, so only the exact tier has W0's full basis;
    other tiers leave it empty and the ``method`` column says ``no-full-W0-basis``. LoRA
    fine-tunes acquire such dimensions, full fine-tuning rarely does (INTR).
    """
    k = min(_top(pair), *pair.base.shape)
    if pair.identical:
        return {"intruder_dims": 0.0}
    u1 = pair.spec1(k).u[:, :k]
    basis = left_basis(pair).to(u1.device)
    pair.use("svd-f64")
    best = (u1.T @ basis).abs().amax(dim=1)
    eps = float(pair.settings.param("intruder_eps"))
    return {"intruder_dims": float(int((best < eps).sum()))}
