"""Tensor dtypes by their safetensors names, with torch resolved only when tensors are read.

Headers name dtypes as strings (``"BF16"``, ``"F8_E4M3"``). Everything that only reads
headers (``inspect``, planning, lineage layouts) works with those strings and these tables,
so it never imports torch (about two seconds of start-up). :data:`TORCH_DTYPES` maps a
name to its ``torch.dtype`` and imports torch on the first lookup of a value; membership
tests (``name in FLOAT_DTYPES``) and iteration never do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
"""Bytes per element of every safetensors dtype string (the names every source uses)."""
QUANTIZED_DTYPES = frozenset({"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"})

_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip
"""safetensors dtype -> attribute of :mod:`torch` (the dtypes torch can view bytes as)."""


class LazyDtypes(Mapping[str, "torch.dtype"]):
    """A read-only ``safetensors name -> torch.dtype`` map over a fixed set of names; torch is
    imported on the first value looked up, not before."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = dict(names)

    def __getitem__(self, key: str) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self._names[key])
        return dtype

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


TORCH_DTYPES = LazyDtypes(_TORCH_NAMES)
"""Every safetensors dtype torch can hold -> its ``torch.dtype``."""
FLOAT_DTYPES = LazyDtypes({k: _TORCH_NAMES[k] for k in ("F64", "F32", "F16", "BF16")})
"""The float dtypes compared as they are (the reader returns them typed)."""


def safetensors_name(dtype: torch.dtype) -> str:
    """The safetensors name of a torch dtype (``torch.bfloat16`` -> ``"BF16"``); dtypes the
    format has no name for keep torch's (``"complex64"``)."""
    name = str(dtype).removeprefix("torch.")
    return next((k for k, v in _TORCH_NAMES.items() if v == name), name)
