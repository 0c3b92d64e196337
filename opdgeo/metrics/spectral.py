"""Spectral diagnostics of 2-D weight matrices (papers.md D4, D5, D7, D8).

All decompositions come from :class:`opdgeo.pair.TensorPair` (float64 Gram, all eigenvalues
and the top-k eigenvectors, by default; float64 SVD in the exact tier); the ``method`` column
records which (``gram-dc-f64``; ``gram-eigh-f64`` for Grams of order < 224; ``svd-f64``).
"""

from __future__ import annotations

import math

import torch

from opdgeo.linalg import principal_angles as _angles
from opdgeo.linalg import project_left, project_right
from opdgeo.metrics.registry import Over, Pool, Summary, metric
from opdgeo.pair import TensorPair

NAN = float("nan")
FULL_TIERS = ("standard", "exact")
"""Tiers that decompose W0 and W1 (the fast tier skips these metrics)."""
M = Over.MATRICES


def angle_k(pair: TensorPair) -> int:
    """k for principal angles: the ``angle_k`` setting, or clamp(min(m, n) // 8, 1, 512)."""
    m, n = pair.base.shape
    k = pair.settings.angle_k or min(512, max(1, min(m, n) // 8))
    return min(k, m, n)


def energy_k(pair: TensorPair) -> int:
    """k for principal energy: max(1, floor(energy_rank_frac · min(m, n)))."""
    m, n = pair.base.shape
    return max(1, int(pair.settings.energy_rank_frac * min(m, n)))


@metric(
    "principal_angles",
    columns=(
        "angle_left_mean_deg",
        "angle_left_max_deg",
        "angle_right_mean_deg",
        "angle_right_max_deg",
        "angle_k",
    ),
    matrix_only=True,
    tiers=FULL_TIERS,
    summaries=(
        Summary("principal_angle_deg", "angle_left_mean_deg", Pool.MEDIAN, M, group=True,
                label="angle\n(deg)", group_label="angle (deg)"),
        Summary("principal_angle_right_deg", "angle_right_mean_deg", Pool.MEDIAN, M),
        Summary("principal_angle_max_deg", "angle_left_max_deg", Pool.MEDIAN, M),
    ),
    w0_k=angle_k,
    w1_k=angle_k,
)  # fmt: skip
def principal_angles(pair: TensorPair) -> dict[str, float]:
    """Rotation of the top-k singular subspaces (PNT §4.1, OPDG Eq. 2).

    ``cos θ_i(U) = σ_i(U0,kᵀ U1,k)`` and likewise for V, i = 1..k, θ in degrees; reported as
    mean and max over i for the left (U) and right (V) subspaces. k = ``angle_k`` (default
    clamp(min(m, n) // 8, 1, 512); OPDG uses 512). Small angles are taken from sines, so a
    1e-6 degree rotation is resolved (see :func:`opdgeo.linalg.principal_angles`). Angles for
    indices with tiny spectral gaps σ_k − σ_{k+1} are ill-conditioned (Wedin bound).
    """
    k = angle_k(pair)
    if pair.identical:
        return {
            "angle_left_mean_deg": 0.0,
            "angle_left_max_deg": 0.0,
            "angle_right_mean_deg": 0.0,
            "angle_right_max_deg": 0.0,
            "angle_k": k,
        }
    sp0, sp1 = pair.spec0(k), pair.spec1(k)
    left = torch.rad2deg(_angles(sp0.u[:, :k], sp1.u[:, :k]))
    right = torch.rad2deg(_angles(sp0.v[:, :k], sp1.v[:, :k]))
    return {
        "angle_left_mean_deg": float(left.mean()),
        "angle_left_max_deg": float(left.max()),
        "angle_right_mean_deg": float(right.mean()),
        "angle_right_max_deg": float(right.max()),
        "angle_k": k,
    }


@metric(
    "nss",
    columns=("nss", "spectral_drift_ratio"),
    matrix_only=True,
    tiers=FULL_TIERS,
    summaries=(
        Summary("nss", "nss", Pool.MEAN, M, group=True, label="NSS", group_label=""),
        Summary("nss_median", "nss", Pool.MEDIAN, M),
    ),
    w0_k=lambda pair: 1,
    w1_k=lambda pair: 1,
)
def nss(pair: TensorPair) -> dict[str, float]:
    """Normalized spectral shift ``NSS = ‖σ(W1) − σ(W0)‖₂ / ‖σ(W0)‖₂`` (PNT §4.1, OPDG Eq. 3).

    σ(·) is the full descending singular-value vector, in float64 (float32 Gram spectra
    inflate the NSS of tiny updates, papers.md §8). By Mirsky's inequality
    NSS ≤ ‖ΔW‖_F / ‖W0‖_F. ``spectral_drift_ratio = ‖σ(W1) − σ(W0)‖₂ / ‖ΔW‖_F`` ∈ [0, 1]
    (DSSU): near 1 the update mostly rescales singular values, near 0 it mostly rotates.
    """
    if pair.identical:
        return {"nss": 0.0, "spectral_drift_ratio": NAN}
    s0, s1 = pair.spec0(1).s, pair.spec1(1).s
    shift = float(torch.linalg.vector_norm(s1 - s0))
    norm0 = float(torch.linalg.vector_norm(s0))
    dfro = math.sqrt(pair.delta_fro2)
    return {
        "nss": shift / norm0 if norm0 > 0 else NAN,
        "spectral_drift_ratio": shift / dfro if dfro > 0 else NAN,
    }


@metric(
    "principal_energy",
    columns=(
        "principal_energy",
        "principal_energy_left",
        "principal_energy_right",
        "principal_energy_baseline",
        "energy_k",
    ),
    matrix_only=True,
    tiers=FULL_TIERS,
    summaries=(
        Summary("principal_energy", "principal_energy", Pool.MEDIAN, M, group=True,
                label="princ.\nenergy", percent=True),
        Summary("principal_energy_baseline", "principal_energy_baseline", Pool.MEDIAN, M),
    ),
    w0_k=energy_k,
)  # fmt: skip
def principal_energy(pair: TensorPair) -> dict[str, float]:
    """Share of the update's energy inside W0's top-k singular subspaces (DSSU, papers.md D7).

    ``E = ‖U_kᵀ ΔW V_k‖_F² / ‖ΔW‖_F²`` (two-sided), ``E_left = ‖U_kᵀ ΔW‖_F² / ‖ΔW‖_F²``,
    ``E_right = ‖ΔW V_k‖_F² / ‖ΔW‖_F²``, with U_k, V_k the top-k singular vectors of W0 and
    k = max(1, ⌊energy_rank_frac · min(m, n)⌋) (DSSU ρ = 10 %). A random update gives about
    ``k² / (m n)`` two-sided (``principal_energy_baseline``). Projections in float64.
    """
    k = energy_k(pair)
    m, n = pair.base.shape
    baseline = k * k / (m * n)
    if pair.identical or pair.delta_fro2 == 0:
        return {
            "principal_energy": NAN,
            "principal_energy_left": NAN,
            "principal_energy_right": NAN,
            "principal_energy_baseline": baseline,
            "energy_k": k,
        }
    sp0 = pair.spec0(k)
    u, v = sp0.u[:, :k], sp0.v[:, :k]
    left = project_left(pair.delta, u)  # k x n
    right = project_right(pair.delta, v)  # m x k
    total = pair.delta_fro2
    both = float(torch.linalg.matrix_norm(left @ v)) ** 2
    return {
        "principal_energy": both / total,
        "principal_energy_left": float(torch.linalg.matrix_norm(left)) ** 2 / total,
        "principal_energy_right": float(torch.linalg.matrix_norm(right)) ** 2 / total,
        "principal_energy_baseline": baseline,
        "energy_k": k,
    }


@metric(
    "stable_rank",
    columns=("stable_rank", "delta_sigma1"),
    matrix_only=True,
    tiers=("fast", *FULL_TIERS),
    summaries=(
        Summary("stable_rank", "stable_rank", Pool.MEAN, M, group=True,
                label="stable\nrank", group_label="stable rank"),
    ),
)  # fmt: skip
def stable_rank(pair: TensorPair) -> dict[str, float]:
    """Stable rank of the update ``srank(ΔW) = ‖ΔW‖_F² / ‖ΔW‖₂²`` (OPDG Eq. 8).

    ‖ΔW‖_F² is accumulated in float64; σ₁ = ‖ΔW‖₂ comes from block Krylov power iteration
    on ΔW in float32 (``krylov-f32``; to 1e-6 relative change in the standard tier, 1e-4 in
    the fast tier) or from float64 SVD in the exact tier (see
    :attr:`opdgeo.pair.TensorPair.delta_sigma1`). For a LoRA adapter both norms come exactly
    from the r x r core (``lowrank-core-f64``). 1 for a rank-one update, min(m, n) for an
    update with a flat spectrum; NaN when ΔW = 0.
    """
    if pair.identical or pair.delta_fro2 == 0:
        return {"stable_rank": NAN, "delta_sigma1": 0.0}
    sigma1 = pair.delta_sigma1
    return {
        "stable_rank": pair.update_fro2 / sigma1**2 if sigma1 > 0 else NAN,
        "delta_sigma1": sigma1,
    }
