"""The one place where the lineage package touches opdgeo's checkpoint readers.

At the merge of issue 12 these imports move to ``opdgeo.io``; nothing else in
``opdgeo/lineage`` imports ``opdgeo.io``.

:class:`RowReader` reads row ranges of tensors and counts the bytes it reads, so a result can
state bytes read beside the pair's size. A prefix of rows goes through
``Checkpoint.read(name, rows=...)`` (a contiguous byte range: a range request on the Hub);
another row range of a local safetensors file is read directly from ``TensorInfo`` (file,
start, dtype, shape); a row range of a Hub checkpoint is one HTTP range request for exactly
those bytes (or a read of the cached shard), never a whole-shard download; for other sources
the prefix up to the range's end is read and sliced (and counted as read).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from opdgeo.io import Checkpoint, SourceOptions, TensorInfo, open_checkpoint
from opdgeo.io.checkpoint import DTYPE_BYTES, FLOAT_DTYPES
from opdgeo.io.hub import HubFetcher
from opdgeo.io.safetensors import TensorReader

__all__ = [
    "DTYPE_BYTES",
    "FLOAT_DTYPES",
    "Checkpoint",
    "RowReader",
    "Source",
    "SourceOptions",
    "TensorInfo",
    "open_checkpoint",
    "open_source",
]


class Source(Protocol):
    """What the lineage tests need from a checkpoint: headers, config, prefix reads."""

    label: str
    tensors: dict[str, TensorInfo]
    config: dict[str, Any]

    def read(self, name: str, rows: int | None = None, pin: bool = False) -> torch.Tensor: ...


def open_source(spec: str, options: SourceOptions | None = None) -> Checkpoint:
    """Open a checkpoint header-first (local path or Hub id), as ``compare`` does."""
    return open_checkpoint(spec, options)


def row_bytes(info: TensorInfo) -> int:
    """Bytes of one row (leading-dimension slice) of ``info``."""
    return math.prod(info.shape[1:]) * DTYPE_BYTES[info.dtype]


class RowReader:
    """Reads row ranges of one source's tensors as float tensors; counts bytes read."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.bytes_read = 0

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` of tensor ``name`` in its stored dtype."""
        info = self.source.tensors[name]
        if not 0 <= start < stop <= info.shape[0]:
            raise ValueError(f"rows [{start}, {stop}) outside {name} {info.shape}")
        fetcher = getattr(self.source, "fetcher", None)
        if isinstance(fetcher, HubFetcher) and info.dtype in FLOAT_DTYPES:
            per_row = row_bytes(info)
            data = fetcher.read_range(
                str(info.file), info.start + start * per_row, (stop - start) * per_row
            )
            self.bytes_read += len(data)
            flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return flat.view(FLOAT_DTYPES[info.dtype]).reshape(stop - start, *info.shape[1:])
        if start == 0 or not self._direct(info):
            full = self.source.read(name, rows=stop)
            self.bytes_read += stop * row_bytes(info)
            return full[start:stop]
        self.bytes_read += (stop - start) * row_bytes(info)
        return _read_range(info, start, stop)

    def _direct(self, info: TensorInfo) -> bool:
        src = self.source
        return (
            isinstance(src, Checkpoint)
            and src.fetcher is None
            and isinstance(src.source, TensorReader)
            and info.dtype in FLOAT_DTYPES
        )


def _read_range(info: TensorInfo, start: int, stop: int) -> torch.Tensor:
    per_row = row_bytes(info)
    buf = torch.empty((stop - start) * per_row, dtype=torch.uint8)
    with open(info.file, "rb") as fh:
        fh.seek(info.start + start * per_row)
        got = fh.readinto(buf.numpy().data)
    if got != buf.numel():
        from opdgeo.errors import FormatError

        raise FormatError(f"{info.file}: truncated: tensor {info.name!r} ends early")
    return buf.view(FLOAT_DTYPES[info.dtype]).reshape(stop - start, *info.shape[1:])
