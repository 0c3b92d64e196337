"""The two sides of a pair and what every test family shares: rows read once and cached, a
residual alignment, the run's records, and exact tensor identity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from opdgeo.lineage import statistics as st
from opdgeo.lineage.access import RowReader, Source
from opdgeo.lineage.layout import Layout, Ref
from opdgeo.lineage.plan import LineageSettings, Read
from opdgeo.lineage.records import TensorIdentity, TestRecord

Progress = Callable[[str], None]


@dataclass
class Side:
    """One checkpoint in a pair: layout, planned reads and a cache of rows read."""

    source: Source
    layout: Layout
    reads: dict[tuple[str, int], Read]
    reader: RowReader
    cache: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict)

    @classmethod
    def open(cls, source: Source, layout: Layout, reads: list[Read]) -> Side:
        index = {(r.name, r.start): r for r in reads}
        return cls(source, layout, index, RowReader(source))

    def rows(self, ref: Ref) -> torch.Tensor:
        """The planned rows of ``ref`` (read once, then cached)."""
        read = self.reads[(ref.name, ref.start)]
        key = (read.name, read.start, read.stop)
        if key not in self.cache:
            self.cache[key] = self.reader.rows(read.name, read.start, read.stop)
        return self.cache[key]

    def prefix(self, name: str) -> torch.Tensor | None:
        """The longest prefix of ``name`` read so far, reading the planned one if needed."""
        best = None
        for (n, start, stop), t in self.cache.items():
            if n == name and start == 0 and (best is None or stop > best.shape[0]):
                best = t
        if best is None and (name, 0) in self.reads:
            read = self.reads[(name, 0)]
            best = self.reader.rows(name, 0, read.stop)
            self.cache[(name, 0, read.stop)] = best
        return best

    def drop(self, names: set[str]) -> None:
        for key in [k for k in self.cache if k[0] in names]:
            del self.cache[key]


class Aligner:
    """Signed permutation applied to B's residual (column) coordinates; identity by default."""

    def __init__(self) -> None:
        self.perm: np.ndarray | None = None
        self.sign: torch.Tensor | None = None
        self.description = "identity (names and residual dimensions as stored)"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is None or self.sign is None:
            return x
        return x.to(torch.float32)[:, torch.from_numpy(self.perm)] * self.sign


def record(
    kind: str, a: str, b: str, la: int | None, lb: int | None, out: st.Outcome, combined: bool
) -> TestRecord:
    t = out.tail
    return TestRecord(
        kind, a, b, la, lb, out.units_a, out.units_b, t.hits, t.expected, t.max_hits,
        t.log10_p_random, t.log10_p_ge, out.effect, combined, t.log10_p_min, out.note,
    )  # fmt: skip


class Run:
    def __init__(self, a: Side, b: Side, settings: LineageSettings, say: Progress) -> None:
        self.a, self.b, self.settings, self.say = a, b, settings, say
        self.tests: list[TestRecord] = []
        self.notes: list[str] = []
        self.aligner = Aligner()
        self.identity: list[TensorIdentity] = []
        self.settled: set[str] = set()

    def _settle(self, pairs: list[tuple[str, str]]) -> None:
        """Identity of ``pairs`` now, then forget their rows (memory stays one block)."""
        self.identity += identities(self.a, self.b, pairs)
        self.settled |= {na for na, _ in pairs}
        self.a.drop({na for na, _ in pairs})
        self.b.drop({nb for _, nb in pairs})

    def finish_identity(self) -> list[TensorIdentity]:
        """Identities of every name-paired tensor (those not settled block by block)."""
        rest = [p for p in self.name_pairs() if p[0] not in self.settled]
        return self.identity + identities(self.a, self.b, rest)

    def execute(self) -> None:
        raise NotImplementedError

    def name_pairs(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def evidence(self, identity: list[TensorIdentity]) -> dict[str, object]:
        raise NotImplementedError


_RANK = {"BF16": 0, "F16": 0, "F32": 1, "F64": 2}


def identities(a: Side, b: Side, pairs: list[tuple[str, str]]) -> list[TensorIdentity]:
    """Exact identity of every name-paired tensor on the rows read from both sides."""
    out = []
    for na, nb in pairs:
        ia, ib = a.layout.tensors[na], b.layout.tensors[nb]
        if not ia.shape or not ib.shape:
            continue
        xa, xb = a.prefix(na), b.prefix(nb)
        if xa is None or xb is None:
            continue
        rows = min(xa.shape[0], xb.shape[0])
        same_shape = ia.shape == ib.shape
        identical = bitwise = False
        if same_shape and xa.dtype.is_floating_point and xb.dtype.is_floating_point:
            ta, tb = xa[:rows], xb[:rows]
            if ia.dtype == ib.dtype:
                bitwise = torch.equal(ta.view(torch.uint8), tb.view(torch.uint8))
                identical = bitwise or torch.equal(ta, tb)
            elif _RANK.get(ia.dtype, 1) != _RANK.get(ib.dtype, 1):
                coarse = ta.dtype if _RANK.get(ia.dtype, 1) < _RANK.get(ib.dtype, 1) else tb.dtype
                identical = torch.equal(ta.to(coarse), tb.to(coarse))
            else:
                identical = torch.equal(ta.to(torch.float32), tb.to(torch.float32))
        elif same_shape:
            bitwise = identical = torch.equal(xa[:rows], xb[:rows])
        out.append(
            TensorIdentity(
                na,
                nb,
                ia.shape,
                ib.shape,
                ia.dtype,
                ib.dtype,
                rows,
                ia.shape[0],
                identical,
                bitwise,
            )  # fmt: skip
        )
    return out
