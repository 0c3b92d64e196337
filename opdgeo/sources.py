"""Checkpoints: a ``.safetensors`` file or a directory of them, opened header-first.

A directory is resolved in this order: ``model.safetensors.index.json`` (sharded), then
``model.safetensors``, then the ``*.safetensors`` files it holds. Only headers are read
when a checkpoint is opened; tensor data is read one tensor at a time through :meth:`read`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from opdgeo.errors import SourceError
from opdgeo.pickle_io import PICKLE_SUFFIXES, load_files, loader, pickle_files, refusal
from opdgeo.safetensors_io import TensorInfo, TensorReader, read_header


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


class ShardFetcher(Protocol):
    """Makes remote shards local on demand (see :mod:`opdgeo.hub`)."""

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
    config: dict[str, Any] = field(default_factory=dict)
    fetcher: ShardFetcher | None = None
    shard_sizes: dict[Path, int] = field(default_factory=dict)
    """Bytes of each remote shard (empty for local checkpoints)."""
    loader: Callable[[str, int | None], torch.Tensor] | None = None
    """Reads a tensor by name instead of the safetensors reader (pickle weights)."""
    _reader: TensorReader = field(default_factory=TensorReader, repr=False)
    _remaining: dict[Path, int] = field(default_factory=dict, repr=False)
    _next: dict[Path, Path] = field(default_factory=dict, repr=False)
    _local: dict[Path, Path] = field(default_factory=dict, repr=False)

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

    def file_position(self, name: str) -> tuple[int, int]:
        """Sort key that orders tensors as they lie on disk (file, then offset)."""
        info = self.tensors[name]
        return self.files.index(info.file), info.start

    def prepare(self, names: list[str]) -> None:
        """Announce the order of the coming reads (enables prefetch and release of shards)."""
        self._remaining = {}
        order: list[Path] = []
        for name in names:
            shard = self.tensors[name].file
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
        infos, _ = read_header(local)
        for name, expected in self.tensors.items():
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
        if self.loader is not None:
            loaded = self.loader(name, rows)
            return loaded.pin_memory() if pin else loaded
        tensor = self._reader.read(info, rows, path=self._path(info.file), pin=pin)
        left = self._remaining.get(info.file)
        if left is not None:
            self._remaining[info.file] = left - 1
            if left == 1 and self.fetcher is not None:
                self._reader.close()
                self._local.pop(info.file, None)
                self.fetcher.release(str(info.file))
        return tensor

    def close(self) -> None:
        self._reader.close()
        if self.fetcher is not None:
            self.fetcher.close()


def open_checkpoint(spec: str, options: SourceOptions | None = None) -> Checkpoint:
    """Open a checkpoint (headers only): a local path, else a Hub id ``org/name[@rev]``."""
    options = options or SourceOptions()
    path = Path(spec).expanduser()
    if not path.exists():
        from opdgeo.hub import open_hub, parse_spec

        parsed = parse_spec(spec)
        if parsed is None:
            raise SourceError(f"no such file or directory: {spec}")
        return open_hub(parsed[0], parsed[1], options)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            return open_pickles(spec, [path], {}, options)
        if path.suffix != ".safetensors":
            raise SourceError(f"{spec}: not a .safetensors file")
        files = [path]
        config = (
            _read_config(path.parent / "config.json") if path.name == "model.safetensors" else {}
        )
        tensors = _merge_headers(files)
        return Checkpoint(spec, tensors, files, config)
    if not path.is_dir():
        raise SourceError(f"{spec}: not a file or directory")
    config = _read_config(path / "config.json")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        tensors, files = _from_index(index)
        return Checkpoint(spec, tensors, files, config)
    single = path / "model.safetensors"
    if single.is_file():
        return Checkpoint(spec, _merge_headers([single]), [single], config)
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if files:
        return Checkpoint(spec, _merge_headers(files), files, config)
    pickles = pickle_files(path)
    if pickles:
        return open_pickles(spec, pickles, config, options)
    raise SourceError(
        f"no safetensors weights in {spec} "
        "(looked for model.safetensors.index.json, model.safetensors, *.safetensors)"
    )


def open_pickles(
    label: str, files: list[Path], config: dict[str, Any], options: SourceOptions
) -> Checkpoint:
    """A checkpoint over pickle weight files, only with the opt-in (see :mod:`opdgeo.pickle_io`)."""
    if not options.allow_pickle:
        raise refusal(files[0] if len(files) == 1 else label)
    infos, tensors = load_files(files)
    return Checkpoint(label, infos, files, config, loader=loader(tensors))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _merge_headers(files: list[Path]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        infos, _ = read_header(file)
        for name, info in infos.items():
            if name in tensors:
                raise SourceError(
                    f"tensor {name!r} appears in both {tensors[name].file.name} and {file.name}"
                )
            tensors[name] = info
    return tensors


def _from_index(index: Path) -> tuple[dict[str, TensorInfo], list[Path]]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SourceError(f"cannot read {index}: {exc.strerror or exc}") from None
    except ValueError:
        raise SourceError(f"{index}: not valid JSON") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise SourceError(f"{index}: no weight_map of tensor name -> shard file")
    shard_names = sorted(set(weight_map.values()))
    headers: dict[str, dict[str, TensorInfo]] = {}
    files: list[Path] = []
    for shard in shard_names:
        file = (index.parent / shard).resolve()
        if index.parent.resolve() not in file.parents:
            raise SourceError(f"{index}: shard {shard!r} points outside the checkpoint directory")
        if not file.is_file():
            raise SourceError(f"{index}: shard {shard} is missing")
        headers[shard], _ = read_header(file)
        files.append(file)
    tensors: dict[str, TensorInfo] = {}
    for name, shard in weight_map.items():
        info = headers[shard].get(name)
        if info is None:
            raise SourceError(f"{index}: tensor {name!r} is not in its shard {shard}")
        tensors[name] = info
    return tensors, files
