"""A strict, streaming reader for the safetensors format.

Layout: 8-byte little-endian header length N, an N-byte JSON object
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
data; offsets count from the first byte after the header.

Only the header is read up front. Tensor bytes are read on demand with ``readinto`` into a
fresh buffer, so resident memory holds the tensors in flight and nothing else. The ``scan``
and ``fast`` tiers map each tensor instead (:attr:`TensorReader.mapped`): a private,
copy-on-write mapping of the tensor's own byte range, faulted in on the read-ahead thread and
unmapped when the tensor is freed (so memory stays bounded the same way). From the page
cache this is ~4x faster than ``readinto`` into fresh pages (no copy, no page zeroing). The one
risk mapping brings, as for every mmap reader (safetensors' ``safe_open``): a file truncated
by another process *while* opdgeo reads it ends the process with SIGBUS, not an error line.
Every header field is validated before use: a malformed file raises :class:`FormatError`
naming the file and the problem, never a crash or a huge allocation.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from opdgeo.errors import FormatError, MemoryLimitError, SourceError
from opdgeo.io.checkpoint import TensorInfo
from opdgeo.io.dtypes import DTYPE_BYTES as DTYPE_BYTES  # re-exported (tests, older imports)
from opdgeo.io.dtypes import FLOAT_DTYPES
from opdgeo.parsing import json_loads

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100_000_000
"""Refuse headers above 100 MB (huggingface_hub refuses above 25 MB; real ones are < 1 MB)."""


MAX_DIM = 2**63 - 1
"""Largest dimension a tensor may have (torch sizes are int64; the format's are usize)."""


def _fail(path: Path, problem: str) -> FormatError:
    return FormatError(f"{path}: not a valid safetensors file: {problem}")


def _truncated(path: Path, info: TensorInfo, nbytes: int, got: int) -> FormatError:
    return _fail(
        path, f"truncated: tensor {info.name!r} needs {nbytes} bytes, file ends after {got}"
    )


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (header values can be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_length(path: Path, head: bytes, size: int) -> int:
    """Validate the 8-byte little-endian header length ``head`` of a ``size``-byte file."""
    if len(head) < 8:
        raise _fail(path, f"file is {size} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if n > size - 8:
        raise _fail(path, f"header length {n} is larger than the file ({size} bytes)")
    return int(n)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of ``path``; return tensor infos and ``__metadata__``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = header_length(path, fh.read(8), size)
            raw = fh.read(n)
    except FormatError:
        raise
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_header(path, raw, size)


def parse_header(path: Path, raw: bytes, size: int) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate the JSON header ``raw`` of a ``size``-byte file (from disk or a range read)."""
    n = len(raw)
    try:
        header = json_loads(raw, unique=True)
    except ValueError as exc:
        text = str(exc)
        bad = text.startswith(("not valid JSON", "not UTF-8"))
        raise _fail(path, f"header is not JSON ({text})" if bad else f"header: {text}") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    data_start = 8 + n
    data_size = size - data_start
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__ is not an object of strings")
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        infos[name] = _parse_entry(path, name, entry, data_start, data_size)
    _check_overlaps(path, infos)
    return infos, dict(metadata)


def _parse_entry(
    path: Path, name: str, entry: object, data_start: int, data_size: int
) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _fail(path, f"entry for {name!r} is not an object")
    dtype = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise _fail(path, f"tensor {name!r} has unknown dtype {_short(dtype)}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
    ):
        raise _fail(path, f"tensor {name!r} has an invalid shape {_short(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise _fail(path, f"tensor {name!r} has invalid data_offsets {_short(offsets)}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise _fail(
            path, f"tensor {name!r} data_offsets [{begin}, {end}] outside the {data_size}-byte data"
        )
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != expected:
        raise _fail(
            path,
            f"tensor {name!r} spans {end - begin} bytes but shape {shape} x {dtype} "
            f"needs {expected}",
        )
    return TensorInfo(name, dtype, tuple(shape), path, data_start + begin, end - begin)


def _check_overlaps(path: Path, infos: dict[str, TensorInfo]) -> None:
    spans = sorted((i.start, i.start + i.nbytes, i.name) for i in infos.values() if i.nbytes)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:], strict=False):
        if start_b < end_a:
            raise _fail(path, f"tensors {name_a!r} and {name_b!r} overlap")


def available_memory() -> int | None:
    """Bytes this process can still allocate: the smaller of the address-space limit's
    headroom (``ulimit -v``) and MemAvailable + SwapFree; None when neither is known."""
    import resource

    limits: list[int] = []
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    fields: dict[str, int] = {}
    for name in ("/proc/self/status", "/proc/meminfo"):
        try:
            with open(name, encoding="ascii") as fh:
                for line in fh:
                    key, _, rest = line.partition(":")
                    if rest.strip().endswith("kB"):
                        fields[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError):
            continue
    if soft != resource.RLIM_INFINITY and "VmSize" in fields:
        limits.append(soft - fields["VmSize"])
    if "MemAvailable" in fields:
        limits.append(fields["MemAvailable"] + fields.get("SwapFree", 0))
    return max(0, min(limits)) if limits else None


def _allocate(path: Path, info: TensorInfo, nbytes: int, pin: bool) -> torch.Tensor:
    """A buffer of ``nbytes``, refused with one line (before allocating) when it cannot fit."""
    free = available_memory() if nbytes > 2**28 else None
    if free is not None and nbytes > free:
        raise MemoryLimitError(
            f"{path}: tensor {info.name!r} needs {nbytes / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB of memory is available (free memory, or raise ulimit -v)"
        )
    import torch  # here, not at import: reading headers needs no torch

    try:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    except (MemoryError, RuntimeError) as exc:
        raise MemoryLimitError(
            f"{path}: cannot allocate {nbytes / 2**30:.1f} GiB for tensor {info.name!r} "
            f"({str(exc).splitlines()[0][:120]})"
        ) from None


MAP_MIN_BYTES = 1 << 20
"""Tensors below 1 MB are read, not mapped, even in mapped mode (a mapping costs a system call
and a page-table entry each)."""


class TensorReader:
    """Reads tensors from safetensors files, keeping at most one file open at a time (a
    :class:`opdgeo.io.checkpoint.TensorSource`)."""

    mapped: bool = False
    """Map tensors of at least :data:`MAP_MIN_BYTES` instead of reading them (module doc)."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._fh: io.BufferedReader | None = None

    def _handle(self, path: Path) -> io.BufferedReader:
        if self._path != path or self._fh is None:
            self.close()
            try:
                self._fh = open(path, "rb")  # noqa: SIM115 - kept open across reads
            except OSError as exc:
                raise SourceError(f"cannot open {path}: {exc.strerror or exc}") from None
            self._path = path
        return self._fh

    def read(
        self,
        info: TensorInfo,
        rows: int | None = None,
        path: Path | None = None,
        pin: bool = False,
    ) -> torch.Tensor:
        """Read ``info`` (or only its first ``rows`` rows) as a CPU tensor of its own dtype.

        ``path`` overrides ``info.file`` (a downloaded copy of a remote shard). Non-float
        dtypes come back as raw uint8 bytes; callers skip them anyway. ``pin`` reads straight
        into pinned host memory (for asynchronous copies to a GPU).
        """
        path = path or info.file
        shape = info.shape
        nbytes = info.nbytes
        if rows is not None:
            if not shape or rows > shape[0]:
                raise ValueError(f"cannot take {rows} rows of {info.name} {shape}")
            shape = (rows, *shape[1:])
            nbytes = math.prod(shape) * DTYPE_BYTES[info.dtype]
        if self.mapped and not pin and nbytes >= MAP_MIN_BYTES:
            buf = self._map(path, info, nbytes)
        else:
            buf = self._read(path, info, nbytes, pin)
        dtype = FLOAT_DTYPES.get(info.dtype)
        if dtype is None:
            return buf
        return buf.view(dtype).reshape(shape)

    def _read(self, path: Path, info: TensorInfo, nbytes: int, pin: bool) -> torch.Tensor:
        buf = _allocate(path, info, nbytes, pin)
        if nbytes:
            fh = self._handle(path)
            fh.seek(info.start)
            got = fh.readinto(buf.numpy().data)
            if got != nbytes:
                raise _truncated(path, info, nbytes, got)
        return buf

    def _map(self, path: Path, info: TensorInfo, nbytes: int) -> torch.Tensor:
        """The tensor's bytes in a private mapping (writes stay in this process), every page
        touched once here so that the read-ahead thread, not the analysis, waits for the disk."""
        import torch

        fh = self._handle(path)
        size = os.fstat(fh.fileno()).st_size
        if size < info.start + nbytes:
            raise _truncated(path, info, nbytes, max(0, size - info.start))
        skip = info.start % mmap.ALLOCATIONGRANULARITY
        try:
            view = mmap.mmap(
                fh.fileno(), nbytes + skip, offset=info.start - skip, access=mmap.ACCESS_COPY
            )
        except (OSError, ValueError):  # a file system without mmap: read it
            return self._read(path, info, nbytes, False)
        for advice in ("MADV_SEQUENTIAL", "MADV_WILLNEED"):
            if hasattr(mmap, advice):
                view.madvise(getattr(mmap, advice))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buf = torch.frombuffer(view, dtype=torch.uint8, offset=skip, count=nbytes)
        int(buf[:: mmap.PAGESIZE].sum())  # fault every page in (reads it from disk if cold)
        return buf

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._path = None
