"""``opdgeo lineage``: is checkpoint B derived from checkpoint A? A calibrated answer from the
weights alone, reading only the rows the tests need.

    from opdgeo.lineage import lineage
    result = lineage(["base/", "sft/", "other-model/"])
    for pair in result.pairs:
        print(pair.a, pair.b, pair.verdict, pair.p_value, pair.reasons)

See docs/lineage.md for the tests, their null distributions and the calibration.
"""

from __future__ import annotations

from opdgeo.lineage.api import lineage, lineage_pair
from opdgeo.lineage.output import (
    lineage_frame,
    lineage_identity_frame,
    lineage_json,
    lineage_layers_frame,
    lineage_matrix,
    lineage_tests_frame,
    render_lineage,
)
from opdgeo.lineage.plan import LineageSettings, plan_bytes
from opdgeo.lineage.plot import lineage_heatmap
from opdgeo.lineage.records import (
    LayerEvidence,
    LineageResult,
    PairResult,
    TensorIdentity,
    TestRecord,
)

__all__ = [
    "LayerEvidence",
    "LineageResult",
    "LineageSettings",
    "PairResult",
    "TensorIdentity",
    "TestRecord",
    "lineage",
    "lineage_frame",
    "lineage_heatmap",
    "lineage_identity_frame",
    "lineage_json",
    "lineage_layers_frame",
    "lineage_matrix",
    "lineage_pair",
    "lineage_tests_frame",
    "plan_bytes",
    "render_lineage",
]
