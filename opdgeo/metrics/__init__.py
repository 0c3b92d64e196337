"""The metrics: each module registers its diagnostics in :mod:`opdgeo.metrics.registry`.

The import list below is the registry manifest: import order is column order. Everything
the rest of opdgeo uses from the registry is re-exported here.
"""

from __future__ import annotations

from opdgeo.metrics.registry import (
    ALL_TIERS,
    METRICS,
    Derived,
    MetricSpec,
    Over,
    Param,
    Pool,
    Summary,
    all_columns,
    applies,
    derived,
    metric,
    params,
    summaries,
)

# isort: off
from opdgeo.metrics import sparsity  # noqa: E402,F401
from opdgeo.metrics import norms  # noqa: E402,F401
from opdgeo.metrics import spectral  # noqa: E402,F401
from opdgeo.metrics import masks  # noqa: E402,F401
from opdgeo.metrics import intruders  # noqa: E402,F401
from opdgeo.metrics import update_size  # noqa: E402,F401
from opdgeo.metrics import decoded  # noqa: E402,F401
# isort: on

__all__ = [
    "ALL_TIERS", "METRICS", "Derived", "MetricSpec", "Over", "Param", "Pool", "Summary",
    "all_columns", "applies", "derived", "metric", "params", "summaries",
]  # fmt: skip
