"""Typed per-tensor records: what the engine yields for each (run, tensor).

A :class:`TensorRecord` holds the tensor's identity, its metric values (by registry column)
and, per metric, the numerical methods that produced them. It becomes one row of the
per-tensor CSV (:meth:`TensorRecord.row`) and one line of a batch state file
(:meth:`TensorRecord.to_json`). No torch here: reports and state files import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IDENTITY_COLUMNS = (
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
"""Identity columns of the per-tensor CSV, in order; the registry's metric columns follow."""

ELEMENTWISE = "elementwise"
"""The ``method`` of a tensor whose metrics used no linear algebra (exact counts and sums)."""


def method_text(methods: Mapping[str, Iterable[str]]) -> str:
    """The ``method`` column: ``metric=method[+method];...`` for every metric that ran linear
    algebra, sorted ("" when none did)."""
    return ";".join(f"{m}={'+'.join(sorted(set(v)))}" for m, v in sorted(methods.items()))


def merge_methods(parts: Iterable[Mapping[str, Iterable[str]]]) -> dict[str, set[str]]:
    """The union, per metric, of several records' methods."""
    merged: dict[str, set[str]] = {}
    for methods in parts:
        for metric, used in methods.items():
            merged.setdefault(metric, set()).update(used)
    return merged


@dataclass
class TensorRecord:
    """One tensor of one run: identity, metric values and the methods behind them."""

    run: str
    base: str
    tensor: str
    module: str
    layer: int | None
    shape: tuple[int, ...]
    numel: int
    tuned_name: str | None = None
    """The tuned checkpoint's name when it differs from ``tensor`` (canonical pairing)."""
    dtype_base: str | None = None
    dtype_tuned: str | None = None
    tied: bool = False
    added_rows: int | None = None
    skipped: str = ""
    """Why the tensor was not compared ("" when it was)."""
    spectral_skipped: str | None = None
    """Why the matrix-only metrics did not run (None when they did)."""
    n_nonfinite: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    methods: dict[str, set[str]] = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        if self.skipped:
            return None
        return method_text(self.methods) or ELEMENTWISE

    def row(self) -> dict[str, Any]:
        """The per-tensor CSV row (identity columns, then the metric values)."""
        return {
            "run": self.run,
            "base": self.base,
            "tensor": self.tensor,
            "tuned_name": self.tuned_name,
            "module": self.module,
            "layer": self.layer,
            "shape": "x".join(map(str, self.shape)),
            "numel": self.numel,
            "dtype_base": self.dtype_base,
            "dtype_tuned": self.dtype_tuned,
            "tied": self.tied,
            "added_rows": self.added_rows,
            "skipped": self.skipped,
            "spectral_skipped": self.spectral_skipped,
            "method": self.method,
            "n_nonfinite": self.n_nonfinite,
            **self.values,
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN as null) that :meth:`from_json` reads back."""
        out = {k: v for k, v in vars(self).items() if k not in ("values", "methods")}
        out["shape"] = list(self.shape)
        out["values"] = {k: None if _nan(v) else v for k, v in self.values.items()}
        out["methods"] = {k: sorted(v) for k, v in self.methods.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorRecord:
        """The record :meth:`to_json` wrote; KeyError/TypeError/ValueError when malformed."""
        fields = {k: data[k] for k in ("run", "base", "tensor", "module", "layer", "numel")}
        if not isinstance(data["shape"], list) or not all(
            isinstance(d, int) for d in data["shape"]
        ):
            raise ValueError("shape")
        optional = ("tuned_name", "dtype_base", "dtype_tuned", "tied", "added_rows", "skipped",
                    "spectral_skipped", "n_nonfinite")  # fmt: skip
        values = data["values"]
        methods = data["methods"]
        if not isinstance(values, dict) or not isinstance(methods, dict):
            raise TypeError("values and methods must be objects")
        return cls(
            **fields,
            shape=tuple(data["shape"]),
            **{k: data[k] for k in optional if k in data},
            values={str(k): math.nan if v is None else float(v) for k, v in values.items()},
            methods={str(k): set(map(str, v)) for k, v in methods.items()},
        )


def _nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def clean(value: Any) -> Any:
    """JSON-safe scalar: numpy types to Python, NaN/inf to None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
