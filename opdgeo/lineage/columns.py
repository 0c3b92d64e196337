"""Generic family: a matrix's input columns follow the rows of the matrix that feeds it.

Permuting the hidden units of a plain ``Linear -> Linear`` chain permutes the rows of the
first matrix *and the columns of the second*. The ``matrix`` test matches rows on even vs odd
columns, so the second matrix would read as ``not shared``. Matrices are therefore tested in
natural name order (``fc2`` before ``fc10``), and each is aligned with the nearest earlier
tested matrix whose row count equals its column count (on both sides): when that matrix's
test was significant and its row matching moved most rows, the second matrix's columns are
restricted to the first's rows read in A and taken in the matched order in B.

The alignment depends only on *other* tensors of A and B, so under independent
initialisation the second matrix's rows are as exchangeable as before and its p-value stays
exact. Conv1D layouts (GPT-2 stores ``[in, out]``, so units are columns) are not aligned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from opdgeo.lineage.matching import abs_cosine, assign

MOVED = 0.5
"""Fraction of rows a matching must move (off the diagonal) to be applied to later columns."""


def natural_key(name: str) -> tuple[str | int, ...]:
    """``layers.10`` after ``layers.2``: digits compare as numbers."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))


@dataclass
class _Feeder:
    name: str
    rows_a: int
    rows_b: int
    match: np.ndarray | None
    """A's rows read -> B's rows read, or None when not applied (not significant, as stored)."""


@dataclass
class ColumnAligner:
    """The matrices tested so far, newest last, and the alignment they imply."""

    level: float
    """log10 p at or below which a matrix's row matching is trusted."""
    feeders: list[_Feeder] = field(default_factory=list)

    def align(
        self, cols: tuple[int, int], xa: torch.Tensor, xb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(A rows, B rows, note): columns aligned with the nearest earlier feeder, if any."""
        for f in reversed(self.feeders):
            if (f.rows_a, f.rows_b) == cols:
                if f.match is None:
                    break
                idx = torch.from_numpy(f.match)
                note = f"columns aligned by the row matching of {f.name}"
                return xa[:, : len(f.match)], xb[:, idx], note
        return xa, xb, ""

    def offer(
        self, name: str, rows: tuple[int, int], xa: torch.Tensor, xb: torch.Tensor, log10_p: float
    ) -> None:
        """Record a tested matrix (its rows as tested) as a feeder of later columns."""
        match = None
        if log10_p <= self.level and xa.shape[0] <= xb.shape[0]:
            f = assign(abs_cosine(xa, xb))
            if float(np.mean(f != np.arange(len(f)))) > MOVED:
                match = f
        self.feeders.append(_Feeder(name, rows[0], rows[1], match))
