"""The metric registry.

A metric is a plain function ``fn(pair: TensorPair) -> dict[str, float]`` registered with
:func:`metric`; it returns exactly its declared ``columns``. ``matrix_only`` metrics run on
2-D matrices that pass the spectral checks (see :func:`opdgeo.engine.spectral_skip_reason`).
The import list at the bottom is the registry manifest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opdgeo.pair import TensorPair

MetricFn = Callable[["TensorPair"], dict[str, float]]


@dataclass(frozen=True)
class MetricSpec:
    """A registered diagnostic: its function, output columns and documentation."""

    name: str
    fn: MetricFn
    columns: tuple[str, ...]
    matrix_only: bool
    doc: str
    tiers: tuple[str, ...] = ("fast", "standard", "exact")
    """The tiers (``Settings.tier``) that run this metric; others report NaN."""


METRICS: dict[str, MetricSpec] = {}


def metric(
    name: str,
    columns: tuple[str, ...],
    matrix_only: bool = False,
    tiers: tuple[str, ...] = ("fast", "standard", "exact"),
) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn`` under ``name``; its docstring (the maths) becomes its documentation."""

    def register(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        doc = inspect.getdoc(fn) or ""
        METRICS[name] = MetricSpec(name, fn, columns, matrix_only, doc, tiers)
        return fn

    return register


def all_columns() -> list[str]:
    """Every per-tensor metric column, in registry order."""
    return [c for spec in METRICS.values() for c in spec.columns]


# The registry manifest: import order is column order.
# isort: off
from opdgeo.metrics import sparsity  # noqa: E402,F401
from opdgeo.metrics import norms  # noqa: E402,F401
from opdgeo.metrics import spectral  # noqa: E402,F401
from opdgeo.metrics import masks  # noqa: E402,F401
# isort: on
