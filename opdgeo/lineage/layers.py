"""Match transformer blocks of A to blocks of B by content, not by name.

Pruning drops blocks, duplication (upscaling) repeats them, and a re-packaged model may
renumber them, so block i of A is not assumed to be block i of B. For every pair (i, j) a
screening score is computed from the *gate* rows only,

    S[i, j] = mean over A's first s units of  max over B's units of |cos(gate_A,i, gate_B,j)|,

and a one-to-one assignment maximises the total score (scipy ``linear_sum_assignment``).
Because the choice uses gate rows alone, it does not bias the tests that follow: under the
null, the up/v/q matchings are independent of every gate row, so a test's agreement law is
the same whichever block was chosen; and because the assignment is one-to-one, no B block's
data enters two combined tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from opdgeo.lineage.matching import unit_rows


@dataclass(frozen=True)
class LayerMap:
    """Assignment of A blocks to B blocks, and the screening scores behind it."""

    a_layers: list[int]
    b_layers: list[int]
    scores: np.ndarray
    """len(a_layers) x len(b_layers) screening scores."""
    pairs: dict[int, int]
    """A block -> B block (one-to-one)."""

    def best_a_for(self, b_layer: int) -> int:
        j = self.b_layers.index(b_layer)
        return self.a_layers[int(np.argmax(self.scores[:, j]))]


def screening_scores(
    rows_a: dict[int, torch.Tensor], rows_b: dict[int, torch.Tensor], units: int
) -> np.ndarray:
    """S[i, j] (module docstring) for blocks in sorted order."""
    a_keys, b_keys = sorted(rows_a), sorted(rows_b)
    b_unit = {j: unit_rows(rows_b[j]) for j in b_keys}
    scores = np.zeros((len(a_keys), len(b_keys)))
    for ii, i in enumerate(a_keys):
        a = unit_rows(rows_a[i][:units])
        for jj, j in enumerate(b_keys):
            scores[ii, jj] = float((a @ b_unit[j].T).abs().max(dim=1).values.mean())
    return scores


def match_layers(
    rows_a: dict[int, torch.Tensor], rows_b: dict[int, torch.Tensor], units: int
) -> LayerMap:
    """One-to-one block assignment maximising the total screening score."""
    a_keys, b_keys = sorted(rows_a), sorted(rows_b)
    scores = screening_scores(rows_a, rows_b, units)
    rows, cols = linear_sum_assignment(scores, maximize=True)
    pairs = {a_keys[int(r)]: b_keys[int(c)] for r, c in zip(rows, cols, strict=True)}
    return LayerMap(a_keys, b_keys, scores, pairs)
