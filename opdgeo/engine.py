"""The streaming engine: read one tensor pair at a time, run the metrics, yield a record.

Nothing here prints. Records are plain dicts (one per tensor, skipped tensors included) so
that the caller can stream them into progress bars, aggregations and CSV writers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from opdgeo.cache import BaseCache, BaseShared
from opdgeo.config import Settings
from opdgeo.errors import ConfigError
from opdgeo.io import Checkpoint
from opdgeo.metrics import METRICS, all_columns
from opdgeo.pair import BufferPool, TensorPair
from opdgeo.pairing import Pair, Plan
from opdgeo.readahead import read_ahead
from opdgeo.threads import apply_threads

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

Observer = Callable[[int, Pair, TensorPair], None]
"""Called as ``observer(run index, pair, tensor_pair)`` while the pair's tensors are live."""


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


def method_text(methods: dict[str, set[str]]) -> str:
    """The ``method`` column: ``metric=method[+method];...`` for every metric that ran
    linear algebra (element-wise metrics are exact counts and sums)."""
    return ";".join(f"{m}={'+'.join(sorted(v))}" for m, v in sorted(methods.items()))


def analyze_pair(
    pair: Pair,
    base: torch.Tensor,
    tuned: torch.Tensor,
    settings: Settings,
    pool: BufferPool | None = None,
    shared: BaseShared | None = None,
    observer: Observer | None = None,
    run: int = 0,
) -> dict[str, Any]:
    """Every metric column for one pair, plus ``method``, ``n_nonfinite``, ``spectral_skipped``.

    ``shared`` shares W0's decompositions and mask thresholds between runs with the same base
    tensor (and with the base cache); ``observer(run, pair, tensor_pair)`` sees the live pair
    after the metrics ran. Metrics that the tier does not run report NaN.
    """
    tp = TensorPair(base, tuned, settings, pool, module=pair.module, shared=shared)
    reason = spectral_skip_reason(pair, tp, settings)
    record: dict[str, Any] = {"n_nonfinite": tp.n_nonfinite, "spectral_skipped": reason}
    for spec in METRICS.values():
        if (spec.matrix_only and reason is not None) or settings.tier not in spec.tiers:
            record.update(dict.fromkeys(spec.columns, float("nan")))
            continue
        tp.active = spec.name
        values = spec.fn(tp)
        if set(values) != set(spec.columns):
            raise RuntimeError(f"metric {spec.name} returned {sorted(values)}, not {spec.columns}")
        record.update(values)
    tp.active = ""
    record["method"] = method_text(tp.metric_methods) or "elementwise"
    if observer is not None:
        observer(run, pair, tp)
    return record


def compare(
    base: Checkpoint, tuned: Checkpoint, plan: Plan, settings: Settings
) -> Iterator[dict[str, Any]]:
    """Records of one comparison (see :func:`compare_many`)."""
    for _, record in compare_many(base, [tuned], [plan], settings):
        yield record


def compare_many(
    base: Checkpoint,
    runs: Sequence[Checkpoint],
    plans: Sequence[Plan],
    settings: Settings,
    observer: Observer | None = None,
    done: set[tuple[int, str]] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Compare several runs against one base, reading each base tensor once.

    Base tensors are visited in the first run's file order (so its shards stream in
    sequence; tensors it lacks follow in the base's order); for each, every run that pairs it
    reads its own tensor and is analysed, sharing W0's decompositions (computed once per
    base tensor, whatever the number of runs). Yields ``(run index, record)``; skipped
    tensors follow at the end. ``done`` holds (run index, tensor) pairs to leave out (resume).
    """
    check_device(settings)
    apply_threads(settings)
    pool = BufferPool(settings.device)
    cache = BaseCache.for_settings(settings)
    done = done or set()
    todo: dict[str, list[tuple[int, Pair]]] = {}
    for i, plan in enumerate(plans):
        for pair in plan.pairs:
            if (i, pair.name) not in done:
                todo.setdefault(pair.base_name, []).append((i, pair))
    first = {p.base_name: p.tuned_name for pairs in todo.values() for i, p in pairs if i == 0}

    def position(name: str) -> tuple[int, int, int]:
        # the first run's file order (its shards stream in sequence), then the base's
        if name in first:
            return (0, *runs[0].file_position(first[name]))
        return (1, *base.file_position(name))

    order = sorted(todo, key=position)
    base.prepare(order)
    for i, run in enumerate(runs):
        run.prepare([p.tuned_name for name in order for j, p in todo[name] if j == i])
    pin = torch.device(settings.device).type == "cuda"

    def size(name: str) -> int:
        infos = [base.tensors[name]] + [runs[i].tensors[p.tuned_name] for i, p in todo[name]]
        return sum(t.nbytes for t in infos)

    def read(name: str) -> tuple[str, torch.Tensor, list[torch.Tensor]]:
        w0 = base.read(name, pin=pin)
        return name, w0, [runs[i].read(p.tuned_name, p.rows, pin=pin) for i, p in todo[name]]

    for name, w0_full, tuned in read_ahead(order, read, size, settings.read_ahead):
        shared = cache.shared(base, name, settings) if cache is not None else BaseShared()
        for (i, pair), w1 in zip(todo[name], tuned, strict=True):
            w0 = w0_full if pair.rows is None else w0_full[: pair.rows]
            record = _identity(base, runs[i], pair.name)
            record.update(
                tuned_name=pair.tuned_name if pair.tuned_name != pair.name else "",
                module=pair.module,
                layer=pair.layer,
                shape="x".join(map(str, pair.shape)),
                numel=pair.numel,
                dtype_base=base.tensors[pair.base_name].dtype,
                dtype_tuned=runs[i].tensors[pair.tuned_name].dtype,
                tied=pair.tied,
                added_rows=pair.added_rows,
                skipped="",
            )
            spectra = shared if pair.rows is None else BaseShared()
            record.update(analyze_pair(pair, w0, w1, settings, pool, spectra, observer, i))
            del w0, w1
            yield i, record
        if cache is not None:
            cache.keep(shared, tuple(w0_full.shape))
        del w0_full, tuned  # release before the next read is taken (bounded memory)
    for i, plan in enumerate(plans):
        for skip in plan.skipped:
            if (i, skip.name) in done:
                continue
            record = _identity(base, runs[i], skip.name)
            shape = skip.base_shape or skip.tuned_shape or ()
            record.update(shape="x".join(map(str, shape)), skipped=skip.reason, numel=0)
            yield i, record


def _identity(base: Checkpoint, tuned: Checkpoint, name: str) -> dict[str, Any]:
    from opdgeo.naming import layer_index, module_type

    return {
        "run": tuned.label,
        "base": base.label,
        "tensor": name,
        "module": module_type(name),
        "layer": layer_index(name),
    }
