"""The metric registry's types and table (the manifest of metrics is :mod:`opdgeo.metrics`).

The registry is the single source of truth for every per-tensor and summary column.

A metric is a plain function ``fn(pair: TensorPair) -> dict[str, float]`` registered with
:func:`metric`. Its registration declares everything the rest of opdgeo needs:

* ``columns`` - the per-tensor columns it returns (exactly these);
* ``summaries`` - how columns pool into the whole-model summary and the per-module /
  per-layer rows (:class:`Summary`: which column, which :class:`Pool`, over which rows),
  and ``derived`` summary values computed from pooled ones (:class:`Derived`);
* ``tiers`` - the tiers that run it (others report NaN), ``matrix_only`` - only 2-D matrices
  that pass the spectral checks;
* ``w0_k`` / ``w1_k`` - how many singular vectors of W0 / W1 it needs (so a pair decomposes
  each side once, with the largest k any running metric needs);
* ``params`` - settings of its own (:class:`Param`), accepted in a config's ``[settings]``.

So adding a metric is one module in ``opdgeo/metrics/`` (and its line in the package's
manifest), one test and one README row; :mod:`opdgeo.aggregate`, the report and the CLI
follow the registry.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opdgeo.pair import TensorPair

MetricFn = Callable[["TensorPair"], dict[str, float]]
KFn = Callable[["TensorPair"], int]
ALL_TIERS = ("scan", "fast", "standard", "exact")


class Pool(StrEnum):
    """How a per-tensor column pools over a set of tensors (NaN values are left out)."""

    SUM = "sum"
    """Σ x."""
    MAX = "max"
    """max x."""
    MEAN = "mean"
    """Unweighted mean over the tensors where x is defined."""
    MEDIAN = "median"
    """Median over the tensors where x is defined."""
    PER_PARAM = "per_param"
    """Σ x / Σ numel: counts become parameter-weighted fractions."""
    WEIGHTED = "weighted"
    """Σ x·numel / Σ numel: a parameter-weighted mean."""
    RSS = "rss"
    """sqrt(Σ x²): norms of the concatenation."""
    SHARE_OF_SQUARES = "share_of_squares"
    """Σ x² over the group / Σ x² over the whole run (e.g. a module's share of the update
    energy); only meaningful for groups."""


class Over(StrEnum):
    """Which tensors a summary pools over."""

    TENSORS = "tensors"
    """Every compared tensor (not skipped, not a tied duplicate)."""
    MATRICES = "matrices"
    """Tensors that ran the matrix-only metrics (2-D, passed the spectral checks)."""
    TWO_D = "2d"
    """Every compared 2-D tensor."""


@dataclass(frozen=True)
class Summary:
    """One pooled column of the summary row (and, with ``group``, of per-group rows)."""

    name: str
    column: str
    pool: Pool
    over: Over = Over.TENSORS
    group: bool = False
    """Also a column of the per-module / per-layer rows."""
    summary: bool = True
    """A column of the whole-model summary row (False: per-group rows only)."""
    label: str = ""
    """Header in the terminal summary table ("" = not shown)."""
    group_label: str = ""
    """Header in the terminal per-module table ("" = not shown)."""
    percent: bool = False
    """Shown as a percentage in the terminal tables."""


@dataclass(frozen=True)
class Derived:
    """A summary value computed from pooled values (e.g. a ratio of two pooled norms)."""

    name: str
    fn: Callable[[Mapping[str, float]], float]
    group: bool = False
    label: str = ""
    group_label: str = ""
    percent: bool = False


@dataclass(frozen=True)
class Param:
    """A setting that belongs to one metric (set in a config's ``[settings]`` table)."""

    name: str
    default: float | int
    doc: str
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: object) -> float | int:
        """``value`` validated against this parameter's type and range (ValueError if not)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if isinstance(self.default, int) and not isinstance(value, int):
            raise ValueError(f"{self.name} must be an integer, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{self.name} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{self.name} must be <= {self.maximum}, got {value!r}")
        return value


@dataclass(frozen=True)
class MetricSpec:
    """A registered diagnostic: its function, columns, pooling, tiers and documentation."""

    name: str
    fn: MetricFn
    columns: tuple[str, ...]
    matrix_only: bool
    doc: str
    tiers: tuple[str, ...] = ALL_TIERS
    summaries: tuple[Summary, ...] = ()
    derived: tuple[Derived, ...] = ()
    w0_k: KFn | None = None
    w1_k: KFn | None = None
    params: tuple[Param, ...] = ()
    unavailable: str = ""
    """What the ``method`` column says on matrices in tiers that do not run this metric
    ("" = nothing; e.g. ``no-full-W0-basis`` when only the exact tier has what it needs)."""


METRICS: dict[str, MetricSpec] = {}


def metric(
    name: str,
    columns: tuple[str, ...],
    matrix_only: bool = False,
    tiers: tuple[str, ...] = ALL_TIERS,
    summaries: tuple[Summary, ...] = (),
    derived: tuple[Derived, ...] = (),
    w0_k: KFn | None = None,
    w1_k: KFn | None = None,
    params: tuple[Param, ...] = (),
    unavailable: str = "",
) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn`` under ``name``; its docstring (the maths) becomes its documentation."""

    def register(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        unknown = [s.column for s in summaries if s.column not in columns]
        if unknown:
            raise ValueError(f"metric {name!r} pools undeclared column(s) {unknown}")
        doc = inspect.getdoc(fn) or ""
        METRICS[name] = MetricSpec(
            name, fn, columns, matrix_only, doc, tiers, summaries, derived, w0_k, w1_k, params,
            unavailable,
        )  # fmt: skip
        return fn

    return register


def all_columns() -> list[str]:
    """Every per-tensor metric column, in registry order."""
    return [c for spec in METRICS.values() for c in spec.columns]


def summaries() -> list[Summary]:
    """Every pooled summary column, in registry order."""
    return [s for spec in METRICS.values() for s in spec.summaries]


def derived() -> list[Derived]:
    """Every derived summary value, in registry order."""
    return [d for spec in METRICS.values() for d in spec.derived]


def params() -> dict[str, Param]:
    """Every metric-owned setting by name."""
    return {p.name: p for spec in METRICS.values() for p in spec.params}


def applies(spec: MetricSpec, tier: str, matrix_ok: bool) -> bool:
    """Whether ``spec`` runs on a tensor in ``tier`` (``matrix_ok``: it passed the spectral
    checks)."""
    return tier in spec.tiers and (matrix_ok or not spec.matrix_only)
