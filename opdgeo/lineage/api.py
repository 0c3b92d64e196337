"""Library entry points: :func:`lineage` (all pairs) and :func:`lineage_pair`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opdgeo.errors import ConfigError, NotComparableError
from opdgeo.lineage.access import Source, SourceOptions, open_source
from opdgeo.lineage.engine import analyse_pair
from opdgeo.lineage.plan import LineageSettings
from opdgeo.lineage.records import LineageResult, PairResult


def lineage(
    specs: Sequence[str | Source],
    settings: LineageSettings | None = None,
    sources: SourceOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> LineageResult:
    """Lineage of every pair (i < j) among ``specs`` (paths, Hub ids, or opened sources).

    With two checkpoints a pair that cannot be compared raises
    :class:`~opdgeo.errors.NotComparableError` (exit code 3); with more, such pairs are
    listed in ``LineageResult.errors`` and the others are compared (all failing raises).
    """
    if len(specs) < 2:
        raise ConfigError("lineage needs at least two checkpoints")
    settings = settings or LineageSettings()
    opened: list[Source] = []
    owned = []
    try:
        for spec in specs:
            if isinstance(spec, str):
                ckpt = open_source(spec, sources)
                owned.append(ckpt)
                opened.append(ckpt)
            else:
                opened.append(spec)
        labels = [s.label for s in opened]
        if len(set(labels)) != len(labels):
            raise ConfigError("the same checkpoint is given twice")
        pairs: list[PairResult] = []
        errors: dict[tuple[int, int], str] = {}
        for i in range(len(opened)):
            for j in range(i + 1, len(opened)):
                if progress:
                    progress(f"{labels[i]} vs {labels[j]}")
                try:
                    pairs.append(analyse_pair(opened[i], opened[j], settings, progress))
                except NotComparableError as exc:
                    if len(opened) == 2:
                        raise
                    errors[(i, j)] = str(exc)
        if not pairs:
            raise NotComparableError(next(iter(errors.values())))
        return LineageResult(labels, pairs, settings.as_dict(), errors)
    finally:
        for ckpt in owned:
            ckpt.close()


def lineage_pair(
    a: str | Source,
    b: str | Source,
    settings: LineageSettings | None = None,
    sources: SourceOptions | None = None,
) -> PairResult:
    """Lineage of ``b`` relative to ``a`` (one pair)."""
    return lineage([a, b], settings, sources).pairs[0]
