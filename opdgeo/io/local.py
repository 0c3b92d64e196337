"""Local checkpoints: a ``.safetensors`` file or a folder of them, opened header-first.

A folder is resolved in this order: ``model.safetensors.index.json`` (sharded), then
``model.safetensors``, then a PEFT adapter (``adapter_config.json`` +
``adapter_model.safetensors``, see :mod:`opdgeo.io.peft`), then the ``*.safetensors`` files
it holds, then pickle weights (only with the opt-in, see :mod:`opdgeo.io.pickle`). Only
headers are read here; tensor data is read one tensor at a time through
:meth:`opdgeo.io.checkpoint.Checkpoint.read`.
"""

from __future__ import annotations

import warnings
from pathlib import Path, PurePosixPath
from typing import Any

from opdgeo.errors import FormatError, OpdgeoWarning, SourceError
from opdgeo.io.checkpoint import (
    Checkpoint,
    SourceOptions,
    TensorInfo,
    check_weight_map,
    merge_shards,
)
from opdgeo.io.peft import read_adapter_config
from opdgeo.io.pickle import PICKLE_SUFFIXES, open_pickles, pickle_files
from opdgeo.io.safetensors import TensorReader, read_header
from opdgeo.parsing import TooDeepError, json_loads, read_regular

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
ADAPTER = "adapter_model.safetensors"


def open_local(spec: str, path: Path, options: SourceOptions) -> Checkpoint:
    """The checkpoint at ``path`` (a file or a folder); ``spec`` is its label."""
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            return open_pickles(spec, [path], {}, options)
        if path.suffix != ".safetensors":
            raise SourceError(f"{spec}: not a .safetensors file")
        config = read_config(path.parent / "config.json") if path.name == SINGLE else {}
        ckpt = _checkpoint(spec, [path], config)
        if path.name == ADAPTER:
            ckpt.adapter = read_adapter_config(path.parent)
        return ckpt
    if not path.is_dir():
        raise SourceError(f"{spec}: not a file or directory")
    config = read_config(path / "config.json")
    index = path / INDEX
    if index.is_file():
        tensors, files = _from_index(index)
        return Checkpoint(spec, tensors, files, TensorReader(), config)
    single = path / SINGLE
    if single.is_file():
        return _checkpoint(spec, [single], config)
    adapter = read_adapter_config(path)
    if adapter is not None and (path / ADAPTER).is_file():
        ckpt = _checkpoint(spec, [path / ADAPTER], config)
        ckpt.adapter = adapter
        return ckpt
    files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
    if files:
        return _checkpoint(spec, files, config)
    pickles = pickle_files(path)
    if pickles:
        return open_pickles(spec, pickles, config, options)
    raise SourceError(
        f"no safetensors weights in {spec} "
        "(looked for model.safetensors.index.json, model.safetensors, *.safetensors)"
    )


def _checkpoint(spec: str, files: list[Path], config: dict[str, Any]) -> Checkpoint:
    headers = {file.name: read_header(file)[0] for file in files}
    return Checkpoint(spec, merge_shards(spec, headers), files, TensorReader(), config)


MAX_JSON_BYTES = 50_000_000
"""Largest config.json / index read (real ones are well under 1 MB)."""


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` as a dict; {} when absent, unreadable, not a regular file (a FIFO never
    blocks) or not JSON (it is optional; a warning says why it was ignored). A recursion bomb
    (nesting deeper than :data:`opdgeo.parsing.MAX_DEPTH`) is a :class:`FormatError`."""
    try:
        data = json_loads(read_regular(path, MAX_JSON_BYTES))
    except FileNotFoundError:
        return {}
    except TooDeepError as exc:
        raise FormatError(f"{path}: {exc}") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        warnings.warn(f"{path}: ignored ({reason})", OpdgeoWarning, stacklevel=2)
        return {}
    return data if isinstance(data, dict) else {}


def _from_index(index: Path) -> tuple[dict[str, TensorInfo], list[Path]]:
    try:
        data = json_loads(read_regular(index, MAX_JSON_BYTES))
    except OSError as exc:
        raise SourceError(f"cannot read {index}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise FormatError(f"{index}: {exc}") from None
    weight_map = check_weight_map(str(index), data)
    headers: dict[str, dict[str, TensorInfo]] = {}
    files: list[Path] = []
    for shard in sorted(set(weight_map.values())):
        # checked by name, not by resolving links: a Hub cache snapshot's shards are symlinks
        # into the repo's blobs/ folder, and reading them is fine; a name that climbs is not
        rel = PurePosixPath(shard)
        if rel.is_absolute() or ".." in rel.parts or "\\" in shard or not rel.parts:
            raise SourceError(f"{index}: shard {shard!r} points outside the checkpoint directory")
        file = index.parent.joinpath(*rel.parts)
        if not file.is_file():
            raise SourceError(f"{index}: shard {shard} is missing")
        headers[shard], _ = read_header(file)
        files.append(file)
    return merge_shards(str(index), headers, weight_map), files
