"""Trajectories of one run: cumulative updates ΔW_t = W_t − W0 and subspace locking (OPDG §4).

Per checkpoint t, over the trajectory matrices (default attention q/k/v/o, as in OPDG):

* ``stable_rank`` - mean of ‖ΔW_t‖_F² / ‖ΔW_t‖₂²;
* ``update_norm`` - mean ‖ΔW_t‖_F;
* ``hill_alpha`` - mean Hill tail exponent of σ(ΔW_t), α = [(1/(k−1)) Σ_{i<k} log(σ_i/σ_k)]⁻¹
  over the top k (default 10) singular values; NaN when σ_k is zero (OPDG App. E);
* ``sim_final`` - mean Sim_K(t, final) = (1/K)‖V_K(t)ᵀ V_K(final)‖_F², V_K the top-K right
  singular vectors of ΔW, K = 16 (OPDG Eq. 9);
* ``jaccard_prev`` / ``jaccard_final`` - mean Jaccard of the visible-update masks
  (bf16 bits differ from W0) with the previous / final checkpoint, each beside the
  independent-Bernoulli baseline pq/(p+q−pq) (PNT §2.2).

The pass is matrix-major (:func:`opdgeo.engine.compare_many` visits every checkpoint of one
base tensor in turn), so only one matrix's masks and subspaces are held at a time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from opdgeo.linalg import spectrum
from opdgeo.pair import TensorPair
from opdgeo.pairing import Pair

DEFAULT_MATRICES = r"(q_proj|k_proj|v_proj|o_proj|qkv_proj|c_attn|query_key_value)\.weight$"
COLUMNS = ("stable_rank", "update_norm", "hill_alpha", "sim_final", "jaccard_prev",
           "jaccard_prev_baseline", "jaccard_final", "jaccard_final_baseline")  # fmt: skip


def hill_alpha(s: torch.Tensor, k: int) -> float:
    """Hill estimator over the top-k singular values (descending); NaN when undefined."""
    if s.numel() < k or k < 2 or float(s[k - 1]) <= 0:
        return math.nan
    logs = torch.log(s[: k - 1].double() / float(s[k - 1]))
    mean = float(logs.mean())
    return 1.0 / mean if mean > 0 else math.nan


def jaccard(a: np.ndarray, b: np.ndarray, n: int) -> tuple[float, float]:
    """Jaccard of two packed bit masks of n entries, and its independent-Bernoulli baseline."""
    inter = int(np.bitwise_count(a & b).sum())
    union = int(np.bitwise_count(a | b).sum())
    p, q = int(np.bitwise_count(a).sum()) / n, int(np.bitwise_count(b).sum()) / n
    denom = p + q - p * q
    return (inter / union if union else math.nan), (p * q / denom if denom > 0 else math.nan)


@dataclass
class _Track:
    """One matrix across the checkpoints seen so far."""

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    subspaces: dict[int, torch.Tensor] = field(default_factory=dict)
    numel: int = 0


class TrajectoryObserver:
    """Collects per-checkpoint trajectory statistics while :func:`compare_many` runs."""

    def __init__(self, n_checkpoints: int, matrices: str = DEFAULT_MATRICES, k: int = 16,
                 hill_k: int = 10, method: str = "gram") -> None:  # fmt: skip
        self.n = n_checkpoints
        self.pattern = re.compile(matrices)
        self.k, self.hill_k, self.method = k, hill_k, method
        self.values: list[dict[str, list[float]]] = [
            {c: [] for c in COLUMNS} for _ in range(n_checkpoints)
        ]
        self._tracks: dict[str, _Track] = {}

    def __call__(self, run: int, pair: Pair, tp: TensorPair) -> None:
        if len(pair.shape) != 2 or not self.pattern.search(pair.name) or tp.n_nonfinite:
            return
        track = self._tracks.setdefault(pair.name, _Track(numel=tp.numel))
        row = self.values[run]
        fro2 = tp.delta_fro2
        row["update_norm"].append(math.sqrt(fro2))
        if fro2 > 0:
            sp = spectrum(tp.delta, min(self.k, *pair.shape), self.method)
            row["stable_rank"].append(fro2 / float(sp.s[0]) ** 2)
            row["hill_alpha"].append(hill_alpha(sp.s, self.hill_k))
            track.subspaces[run] = sp.v.to(torch.float32)
        track.masks[run] = np.packbits(tp.visible.numpy().reshape(-1))
        if run == self.n - 1:
            self._finish(pair.name)

    def _finish(self, name: str) -> None:
        track = self._tracks.pop(name)
        final_v = track.subspaces.get(self.n - 1)
        final_m = track.masks.get(self.n - 1)
        for t in range(self.n):
            row = self.values[t]
            v = track.subspaces.get(t)
            if v is not None and final_v is not None:
                overlap = float(torch.linalg.matrix_norm(v.T @ final_v)) ** 2
                row["sim_final"].append(overlap / min(v.shape[1], final_v.shape[1]))
            m = track.masks.get(t)
            if m is None:
                continue
            if final_m is not None:
                j, base = jaccard(m, final_m, track.numel)
                row["jaccard_final"].append(j)
                row["jaccard_final_baseline"].append(base)
            prev = track.masks.get(t - 1)
            if prev is not None:
                j, base = jaccard(prev, m, track.numel)
                row["jaccard_prev"].append(j)
                row["jaccard_prev_baseline"].append(base)

    def rows(self) -> list[dict[str, float]]:
        """Per checkpoint: the mean of every column over the trajectory matrices."""
        out = []
        for values in self.values:
            row = {}
            for column, xs in values.items():
                clean = [x for x in xs if not math.isnan(x)]
                row[column] = sum(clean) / len(clean) if clean else math.nan
            row["n_trajectory_matrices"] = len(values["update_norm"])
            out.append(row)
        return out
