"""The streaming engine: read one tensor pair at a time, run the metrics, yield a record.

Nothing here prints. Records are plain dicts (one per tensor, skipped tensors included) so
that the caller can stream them into progress bars, aggregations and CSV writers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from opdgeo.config import Settings
from opdgeo.errors import ConfigError
from opdgeo.metrics import METRICS, all_columns
from opdgeo.pair import BufferPool, TensorPair
from opdgeo.pairing import Pair, Plan
from opdgeo.sources import Checkpoint

RECORD_COLUMNS = (
    "run",
    "base",
    "tensor",
    "tuned_name",
    "module",
    "layer",
    "shape",
    "numel",
    "dtype_base",
    "dtype_tuned",
    "tied",
    "added_rows",
    "skipped",
    "spectral_skipped",
    "method",
    "n_nonfinite",
)
"""Identity columns of a per-tensor record; metric columns follow (see :func:`tensor_columns`)."""


def tensor_columns() -> list[str]:
    """All columns of the per-tensor CSV, in order."""
    return [*RECORD_COLUMNS, *all_columns()]


def spectral_skip_reason(pair: Pair, tensor_pair: TensorPair, settings: Settings) -> str | None:
    """Why the matrix-only metrics do not run on this tensor, or None when they do."""
    if len(pair.shape) != 2:
        return f"{len(pair.shape)}-D tensor"
    if min(pair.shape) < 2:
        return "matrix with a dimension below 2"
    if pair.module in ("embed", "lm_head") and not settings.spectral_embeddings:
        return "embedding matrix (enable spectral_embeddings)"
    if min(pair.shape) > settings.max_spectral_dim:
        return f"smaller side {min(pair.shape)} > max_spectral_dim {settings.max_spectral_dim}"
    if tensor_pair.n_nonfinite:
        return "non-finite values"
    if tensor_pair.elementwise.base_sq == 0:
        return "all-zero base matrix (no singular subspaces)"
    return None


def check_device(settings: Settings) -> None:
    """Fail early with a clear message when CUDA is asked for but absent."""
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but no CUDA device is available")


def analyze_pair(
    pair: Pair,
    base: torch.Tensor,
    tuned: torch.Tensor,
    settings: Settings,
    pool: BufferPool | None = None,
) -> dict[str, Any]:
    """Every metric column for one pair, plus ``method``, ``n_nonfinite``, ``spectral_skipped``."""
    tp = TensorPair(base, tuned, settings, pool, module=pair.module)
    reason = spectral_skip_reason(pair, tp, settings)
    record: dict[str, Any] = {"n_nonfinite": tp.n_nonfinite, "spectral_skipped": reason}
    for spec in METRICS.values():
        if spec.matrix_only and reason is not None:
            record.update(dict.fromkeys(spec.columns, float("nan")))
            continue
        values = spec.fn(tp)
        if set(values) != set(spec.columns):
            raise RuntimeError(f"metric {spec.name} returned {sorted(values)}, not {spec.columns}")
        record.update(values)
    record["method"] = "+".join(sorted(tp.methods)) or "elementwise"
    return record


def compare(
    base: Checkpoint, tuned: Checkpoint, plan: Plan, settings: Settings
) -> Iterator[dict[str, Any]]:
    """Yield one record per planned pair (in tuned-file order), then one per skipped tensor."""
    check_device(settings)
    pool = BufferPool(settings.device)
    base.prepare([p.base_name for p in plan.pairs])
    tuned.prepare([p.tuned_name for p in plan.pairs])
    for pair in plan.pairs:
        w0 = base.read(pair.base_name, pair.rows)
        w1 = tuned.read(pair.tuned_name, pair.rows)
        record = _identity(base, tuned, pair.name)
        record.update(
            tuned_name=pair.tuned_name if pair.tuned_name != pair.name else "",
            module=pair.module,
            layer=pair.layer,
            shape="x".join(map(str, pair.shape)),
            numel=pair.numel,
            dtype_base=base.tensors[pair.base_name].dtype,
            dtype_tuned=tuned.tensors[pair.tuned_name].dtype,
            tied=pair.tied,
            added_rows=pair.added_rows,
            skipped="",
        )
        record.update(analyze_pair(pair, w0, w1, settings, pool))
        del w0, w1
        yield record
    for skip in plan.skipped:
        record = _identity(base, tuned, skip.name)
        shape = skip.base_shape or skip.tuned_shape or ()
        record.update(shape="x".join(map(str, shape)), skipped=skip.reason, numel=0)
        yield record


def _identity(base: Checkpoint, tuned: Checkpoint, name: str) -> dict[str, Any]:
    from opdgeo.naming import layer_index, module_type

    return {
        "run": tuned.label,
        "base": base.label,
        "tensor": name,
        "module": module_type(name),
        "layer": layer_index(name),
    }
