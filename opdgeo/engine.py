"""The streaming engine: read one tensor pair at a time, run the metrics, yield a record.

Nothing here prints. Each (run, tensor) becomes one :class:`opdgeo.records.TensorRecord`
(skipped tensors included), streamed to the caller for progress bars, state files and
aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch

from opdgeo.cache import BaseCache, BaseShared
from opdgeo.config import Settings
from opdgeo.errors import ConfigError
from opdgeo.io import Checkpoint
from opdgeo.metrics import METRICS, applies
from opdgeo.naming import layer_index, module_type
from opdgeo.pair import BufferPool, TensorPair
from opdgeo.pairing import Pair, Plan
from opdgeo.readahead import read_ahead
from opdgeo.records import TensorRecord
from opdgeo.scan import jit_for
from opdgeo.threads import apply_threads, sized_threads

Observer = Callable[[int, Pair, TensorPair], None]
"""Called as ``observer(run index, pair, tensor_pair)`` while the pair's tensors are live."""


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


@sized_threads  # small pairs on one thread (threads.py)
def analyze_pair(
    pair: Pair,
    base: torch.Tensor,
    tuned: torch.Tensor,
    settings: Settings,
    pool: BufferPool | None = None,
    shared: BaseShared | None = None,
    observer: Observer | None = None,
    run: int = 0,
) -> tuple[TensorPair, dict[str, float], str | None]:
    """Run every registered metric the tier and the tensor allow on one pair.

    Returns the live :class:`TensorPair` (its ``metric_methods`` say which numerical method
    produced what), every metric column (NaN for metrics that did not run) and why the
    matrix-only metrics did not run (None when they did). ``shared`` shares W0's
    decompositions and mask thresholds between runs with the same base tensor (and with the
    base cache); ``observer(run, pair, tensor_pair)`` sees the live pair after the metrics.
    """
    tp = TensorPair(base, tuned, settings, pool, module=pair.module, shared=shared)
    reason = spectral_skip_reason(pair, tp, settings)
    running = [spec for spec in METRICS.values() if applies(spec, settings.tier, reason is None)]
    tp.w0_k = max((spec.w0_k(tp) for spec in running if spec.w0_k), default=0)
    tp.w1_k = max((spec.w1_k(tp) for spec in running if spec.w1_k), default=0)
    values: dict[str, float] = {}
    for spec in METRICS.values():
        if spec not in running:
            values.update(dict.fromkeys(spec.columns, math.nan))
            if spec.unavailable and reason is None and settings.tier not in spec.tiers:
                tp.metric_methods[spec.name] = {spec.unavailable}
            continue
        tp.active = spec.name
        got = spec.fn(tp)
        if set(got) != set(spec.columns):
            raise RuntimeError(f"metric {spec.name} returned {sorted(got)}, not {spec.columns}")
        values.update(got)
    tp.active = ""
    if observer is not None:
        observer(run, pair, tp)
    return tp, values, reason


def compare(
    base: Checkpoint, tuned: Checkpoint, plan: Plan, settings: Settings
) -> Iterator[TensorRecord]:
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
) -> Iterator[tuple[int, TensorRecord]]:
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

    def position(name: str) -> tuple[int, ...]:
        # the first run's file order (its shards stream in sequence), then the base's
        if name in first:
            return (0, *runs[0].file_position(first[name]))
        return (1, *base.file_position(name))

    order = sorted(todo, key=position)
    mapped = settings.tier in ("scan", "fast") and torch.device(settings.device).type == "cpu"
    base.prepare(order, mapped)
    for i, run in enumerate(runs):
        run.prepare([p.tuned_name for name in order for j, p in todo[name] if j == i], mapped)
    pin = torch.device(settings.device).type == "cuda"

    # bytes each read brings in: a fused expert tensor counts in full with its first slice
    brought = dict(zip(order, base.read_bytes(order), strict=True))
    for i, run in enumerate(runs):
        keys = [(name, p.tuned_name) for name in order for j, p in todo[name] if j == i]
        for (name, _), n in zip(keys, run.read_bytes([t for _, t in keys]), strict=True):
            brought[name] += n

    def size(name: str) -> int:
        return brought[name]

    run_bytes = sum(brought.values())

    def read(name: str) -> tuple[str, torch.Tensor, list[torch.Tensor]]:
        w0 = base.read(name, pin=pin)
        return name, w0, [runs[i].read(p.tuned_name, p.rows, pin=pin) for i, p in todo[name]]

    for name, w0_full, tuned in read_ahead(order, read, size, settings.read_ahead):
        shared = cache.shared(base, name, settings) if cache is not None else BaseShared()
        for (i, pair), w1 in zip(todo[name], tuned, strict=True):
            w0 = w0_full if pair.rows is None else w0_full[: pair.rows]
            spectra = shared if pair.rows is None else BaseShared()
            with jit_for(run_bytes):
                tp, values, reason = analyze_pair(
                    pair, w0, w1, settings, pool, spectra, observer, i
                )
            record = TensorRecord(
                run=runs[i].label,
                base=base.label,
                tensor=pair.name,
                module=pair.module,
                layer=pair.layer,
                shape=pair.shape,
                numel=pair.numel,
                tuned_name=pair.tuned_name if pair.tuned_name != pair.name else "",
                dtype_base=base.tensors[pair.base_name].dtype,
                dtype_tuned=runs[i].tensors[pair.tuned_name].dtype,
                tied=pair.tied,
                added_rows=pair.added_rows,
                spectral_skipped=reason,
                n_nonfinite=tp.n_nonfinite,
                values=values,
                methods=tp.metric_methods,
            )
            del w0, w1, tp
            yield i, record
        if cache is not None:
            cache.keep(shared, tuple(w0_full.shape))
        del w0_full, tuned  # release before the next read is taken (bounded memory)
    for i, plan in enumerate(plans):
        for skip in plan.skipped:
            if (i, skip.name) in done:
                continue
            yield (
                i,
                TensorRecord(
                    run=runs[i].label,
                    base=base.label,
                    tensor=skip.name,
                    module=module_type(skip.name),
                    layer=layer_index(skip.name),
                    shape=skip.base_shape or skip.tuned_shape or (),
                    numel=0,
                    skipped=skip.reason,
                ),
            )
