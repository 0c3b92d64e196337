"""The checkpoint model every source produces: tensor infos from headers, and a reader.

A :class:`Checkpoint` is a header view (name -> :class:`TensorInfo`) plus a
:class:`TensorSource` that reads one tensor at a time, so nothing but headers is read when a
checkpoint is opened. Local safetensors files, Hub repos and pickle weights (``opdgeo.io.local``,
``opdgeo.io.hub``, ``opdgeo.io.pickle``) each build one; this module imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opdgeo.errors import SourceError
from opdgeo.io.decoded import cut_slice
from opdgeo.io.dtypes import DTYPE_BYTES as DTYPE_BYTES  # re-exported: the tables live there
from opdgeo.io.dtypes import FLOAT_DTYPES as FLOAT_DTYPES
from opdgeo.io.dtypes import QUANTIZED_DTYPES as QUANTIZED_DTYPES

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype string, shape and absolute byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    """Absolute offset of the first data byte in ``file``."""
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class SliceInfo(TensorInfo):
    """One expert of a fused MoE tensor (:mod:`opdgeo.io.experts`): ``file``/``start`` are
    the parent's, ``shape``/``nbytes`` the slice's; :meth:`cut` takes ``parent[index]``, every
    ``step``-th of ``count`` entries along ``axis`` from ``offset``, transposed to ``[out, in]``
    (a view; a non-contiguous slice is copied once)."""

    parent: TensorInfo | None = None
    index: int = 0
    axis: int | None = None
    offset: int = 0
    count: int = 0
    step: int = 1
    transpose: bool = False
    order: int = 0  # position among the parent's slices (their reads stay together)

    def cut(self, parent: torch.Tensor) -> torch.Tensor:
        return self.cut_expert(parent[self.index])

    def cut_expert(self, x: torch.Tensor) -> torch.Tensor:
        """The slice from ``parent[index]`` (one expert's part of the fused tensor)."""
        if self.axis is not None:
            where: list[slice] = [slice(None)] * x.dim()
            where[self.axis] = slice(self.offset, self.offset + self.step * self.count, self.step)
            x = x[tuple(where)]
        if self.transpose and x.dim() == 2:
            x = x.t()
        if tuple(x.shape) != self.shape:
            raise SourceError(f"{self.name}: slice has shape {tuple(x.shape)}, not {self.shape}")
        return x if x.is_contiguous() else x.contiguous()


@dataclass(frozen=True)
class SourceOptions:
    """How checkpoints are opened: Hub access and the pickle opt-in."""

    token: str | bool | None = None
    """Hub token; None uses HF_TOKEN or the stored login (``hf auth login``); False sends none."""
    offline: bool = False
    """Work from the Hub cache only (also when HF_HUB_OFFLINE=1)."""
    keep: bool = True
    """Keep downloaded shards in the Hub cache; False deletes each after use."""
    progress: bool = True
    """Show huggingface_hub's download bars (stderr)."""
    allow_pickle: bool = False
    """Read pickle weights (.bin/.pt) with torch.load(weights_only=True, mmap=True)."""


class TensorSource(Protocol):
    """Reads tensor data for a checkpoint (a safetensors reader, mmap'd pickle tensors)."""

    def read(
        self, info: TensorInfo, rows: int | None = None, path: Path | None = None,
        pin: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """Tensor ``info`` (its first ``rows`` rows), from ``path`` if given (a local copy)."""
        ...

    def close(self) -> None: ...


class ShardFetcher(Protocol):
    """Makes remote shards local on demand (see :mod:`opdgeo.io.hub`)."""

    def local(self, shard: str) -> Path:
        """Local path of ``shard``, downloading it (or waiting for its prefetch) if needed."""
        ...

    def prefetch(self, shard: str) -> None:
        """Start fetching ``shard`` in the background."""
        ...

    def release(self, shard: str) -> None:
        """``shard`` is no longer needed by this comparison (may delete it)."""
        ...

    def cached(self, shard: str) -> bool:
        """Whether ``shard`` is already local (no download needed)."""
        ...

    def close(self) -> None: ...


class Decoder(Protocol):
    """Builds one float tensor from stored parts (a dequantiser, a LoRA composition).

    ``parts`` are read in order through the checkpoint (they need not be in its
    ``tensors``); :meth:`decode` turns them into the float32 tensor that is compared. The
    decoders live in :mod:`opdgeo.io.quant` and :mod:`opdgeo.io.peft`.
    """

    @property
    def parts(self) -> tuple[TensorInfo, ...]: ...

    @property
    def method(self) -> str:
        """What the ``method`` column says about the decoding (``fp8-e4m3-block128x128``)."""
        ...

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor: ...


class HeaderCheck(Protocol):
    """Re-reads a downloaded shard's header (the local copy must match the planned one)."""

    def __call__(self, local: Path) -> dict[str, TensorInfo]: ...


@dataclass
class Checkpoint:
    """Header view of one checkpoint plus a streaming reader (one open file at a time).

    For remote checkpoints ``files`` are shard names and ``fetcher`` turns them into local
    paths when a tensor is first read; :meth:`prepare` tells the checkpoint the order of the
    coming reads so the next shard can be prefetched and finished ones released.
    """

    label: str
    tensors: dict[str, TensorInfo]
    files: list[Path]
    source: TensorSource
    config: dict[str, Any] = field(default_factory=dict)
    fetcher: ShardFetcher | None = None
    check_header: HeaderCheck | None = None
    """For remote checkpoints: parses a downloaded shard's header."""
    shard_sizes: dict[Path, int] = field(default_factory=dict)
    """Bytes of each remote shard (empty for local checkpoints)."""
    decoders: dict[str, Decoder] = field(default_factory=dict)
    """Tensors built from stored parts (quantized weights, LoRA modules), by name."""
    consumed: dict[str, str] = field(default_factory=dict)
    """Stored tensors that are not compared themselves (scales read by a decoder, adapter
    factors), with the reason the per-tensor output gives."""
    adapter: dict[str, Any] | None = None
    """``adapter_config.json`` when the checkpoint is a PEFT adapter, else None."""
    _remaining: dict[Path, int] = field(default_factory=dict, repr=False)
    _next: dict[Path, Path] = field(default_factory=dict, repr=False)
    _local: dict[Path, Path] = field(default_factory=dict, repr=False)
    _parents: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    """Parent tensors of slices (fused experts) read and not yet fully sliced."""
    _slices_left: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def n_params(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def dtypes(self) -> list[str]:
        """Distinct dtypes, most parameters first."""
        count: dict[str, int] = {}
        for t in self.tensors.values():
            count[t.dtype] = count.get(t.dtype, 0) + t.numel
        return sorted(count, key=lambda d: -count[d])

    @property
    def tie_word_embeddings(self) -> bool | None:
        value = self.config.get("tie_word_embeddings")
        return value if isinstance(value, bool) else None

    def download_bytes(self) -> tuple[int, int]:
        """(bytes of the remote shards, of which already cached); (0, 0) when local."""
        if self.fetcher is None:
            return 0, 0
        fetcher = self.fetcher
        cached = sum(n for shard, n in self.shard_sizes.items() if fetcher.cached(str(shard)))
        return sum(self.shard_sizes.values()), cached

    def file_position(self, name: str) -> tuple[int, ...]:
        """Sort key that orders tensors as they lie on disk (file, offset; a slice adds its
        position among its parent's slices)."""
        info = self.tensors[name]
        if isinstance(info, SliceInfo):
            return self.files.index(info.file), info.start, info.order
        return self.files.index(info.file), info.start

    def read_bytes(self, names: list[str]) -> list[int]:
        """Bytes each of ``names`` (read in this order) brings into memory: a slice's first
        read brings its whole parent, later slices of that parent nothing."""
        seen: set[str] = set()
        out = []
        for info in (self.tensors[name] for name in names):
            whole = info.parent if isinstance(info, SliceInfo) and info.parent else info
            out.append(0 if whole.name in seen and whole is not info else whole.nbytes)
            seen.add(whole.name)
        return out

    def prepare(self, names: list[str], mapped: bool = False) -> None:
        """Announce the order of the coming reads (enables prefetch and release of shards);
        ``mapped``: map tensors instead of reading them (scan and fast tiers; see
        opdgeo.io.safetensors)."""
        if hasattr(self.source, "mapped"):
            setattr(self.source, "mapped", mapped)  # noqa: B010 - not every source maps
        self._remaining = {}
        self._slices_left = {}
        self._parents = {}
        order: list[Path] = []
        infos: list[TensorInfo] = []
        for name in names:
            info = self.tensors[name]
            if isinstance(info, SliceInfo) and info.parent is not None:
                left = self._slices_left.get(info.parent.name, 0)
                self._slices_left[info.parent.name] = left + 1
                if left:
                    continue  # the parent is read once, with its first slice
                info = info.parent
            decoder = self.decoders.get(info.name)
            infos.extend(decoder.parts if decoder is not None else (info,))
        for info in infos:
            shard = info.file
            if shard not in self._remaining:
                order.append(shard)
            self._remaining[shard] = self._remaining.get(shard, 0) + 1
        self._next = dict(zip(order, order[1:], strict=False))
        if self.fetcher is not None and order:
            self.fetcher.prefetch(str(order[0]))

    def _path(self, shard: Path) -> Path:
        if self.fetcher is None:
            return shard
        local = self._local.get(shard)
        if local is None:
            local = self.fetcher.local(str(shard))
            self._check_local_header(shard, local)
            self._local[shard] = local
            if shard in self._next:
                self.fetcher.prefetch(str(self._next[shard]))
        return local

    def _check_local_header(self, shard: Path, local: Path) -> None:
        if self.check_header is None:
            return
        infos = self.check_header(local)
        for name, expected in self.tensors.items():
            if isinstance(expected, SliceInfo) and expected.parent is not None:
                name, expected = expected.parent.name, expected.parent
            if expected.file != shard:
                continue
            got = infos.get(name)
            if got is None or (got.dtype, got.shape, got.start) != (
                expected.dtype,
                expected.shape,
                expected.start,
            ):
                raise SourceError(
                    f"{self.label}: downloaded {shard} does not match the header read before "
                    f"(tensor {name!r}); the repository changed, rerun"
                )

    def read(self, name: str, rows: int | None = None, pin: bool = False) -> torch.Tensor:
        """Read tensor ``name`` (optionally only its first ``rows`` rows); ``pin`` puts it in
        pinned (page-locked) host memory so that a GPU copy can run asynchronously."""
        info = self.tensors[name]
        if isinstance(info, SliceInfo) and info.parent is not None:
            parent = self._parent(info.parent, pin)
            piece = info.cut(parent)
            return cut_slice(piece, parent, info.index, info.cut_expert)  # a decoder's facts too
        decoder = self.decoders.get(name)
        if decoder is not None:
            tensor = decoder.decode([self.read_info(p) for p in decoder.parts])
            return tensor if rows is None else tensor[:rows]
        return self.read_info(info, rows, pin)

    def _parent(self, parent: TensorInfo, pin: bool) -> torch.Tensor:
        """The parent of a slice: read once (through its decoder when it is decoded, as
        dequantised MXFP4 experts are), kept until :meth:`prepare`'s count of its slices is
        used up (without :meth:`prepare`, only the latest parent is kept)."""
        tensor = self._parents.get(parent.name)
        if tensor is None:
            if parent.name not in self._slices_left:
                self._parents.clear()
            decoder = self.decoders.get(parent.name)
            if decoder is not None:
                tensor = decoder.decode([self.read_info(p) for p in decoder.parts])
            else:
                tensor = self.read_info(parent, None, pin)
            self._parents[parent.name] = tensor
        left = self._slices_left.get(parent.name)
        if left is not None:
            self._slices_left[parent.name] = left - 1
            if left <= 1:
                del self._parents[parent.name], self._slices_left[parent.name]
        return tensor

    def read_info(
        self, info: TensorInfo, rows: int | None = None, pin: bool = False
    ) -> torch.Tensor:
        """Read the stored tensor ``info`` of this checkpoint (see :meth:`read`)."""
        tensor = self.source.read(info, rows, path=self._path(info.file), pin=pin)
        left = self._remaining.get(info.file)
        if left is not None:
            self._remaining[info.file] = left - 1
            if left == 1 and self.fetcher is not None:
                self.source.close()
                self._local.pop(info.file, None)
                self.fetcher.release(str(info.file))
        return tensor

    def close(self) -> None:
        self.source.close()
        if self.fetcher is not None:
            self.fetcher.close()


def check_weight_map(where: str, data: object) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file) of a parsed index document."""
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise SourceError(f"{where}: no weight_map of tensor name -> shard file")
    return weight_map


def merge_shards(
    where: str,
    headers: dict[str, dict[str, TensorInfo]],
    weight_map: dict[str, str] | None = None,
) -> dict[str, TensorInfo]:
    """One name -> info map from the shards' headers (shard name -> its tensors).

    With an index, each tensor is taken from the shard the index names and must be there
    (a tensor the index does not list is ignored, as loaders ignore it); a tensor found in
    two shards is an error naming both. One place for the rules every source (local
    folders, Hub repos, pickle shards) follows.
    """
    tensors: dict[str, TensorInfo] = {}
    found_in: dict[str, str] = {}
    for shard, infos in headers.items():
        for name, info in infos.items():
            listed = weight_map.get(name) if weight_map is not None else shard
            if listed is None:
                continue
            if listed != shard:
                if name in headers.get(listed, {}):
                    raise SourceError(
                        f"{where}: tensor {name!r} appears in both {listed} and {shard}"
                    )
                raise SourceError(
                    f"{where}: tensor {name!r} is not in its shard {listed} (found in {shard})"
                )
            if name in tensors:
                raise SourceError(
                    f"{where}: tensor {name!r} appears in both {found_in[name]} and {shard}"
                )
            tensors[name] = info
            found_in[name] = shard
    if weight_map is not None:
        for name, shard in weight_map.items():
            if name not in tensors:
                raise SourceError(f"{where}: tensor {name!r} is not in its shard {shard}")
    return tensors
