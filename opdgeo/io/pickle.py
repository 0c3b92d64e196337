"""Pickle-based PyTorch weights (``.bin``, ``.pt``, ``.pth``), read only on explicit opt-in.

A pickle can run arbitrary code when it is loaded, so opdgeo refuses these files unless the
user passes ``--allow-pickle``. Even then they are loaded only with
``torch.load(..., weights_only=True, mmap=True)``: the restricted unpickler accepts tensors and
plain containers and refuses any other callable, and ``mmap`` maps storages lazily instead of
reading the whole file into memory. A file that needs anything beyond plain weights is
refused with a one-line error; its code is never executed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opdgeo.errors import FormatError, SourceError
from opdgeo.io.checkpoint import (
    Checkpoint,
    SourceOptions,
    TensorInfo,
    check_weight_map,
    merge_shards,
)
from opdgeo.io.dtypes import safetensors_name
from opdgeo.parsing import json_loads, read_regular

if TYPE_CHECKING:
    import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_INDEX = "pytorch_model.bin.index.json"
OPT_IN = "--allow-pickle"


def refusal(path: Path | str) -> SourceError:
    """The error for pickle weights without the opt-in."""
    return SourceError(
        f"{path}: pickle-based weights are not read by default, because loading a pickle can "
        f"run code; convert to safetensors, or pass {OPT_IN} to load them with "
        "torch.load(weights_only=True, mmap=True)"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load one pickle file as a flat ``{name: tensor}`` dict, safely (see module docstring)."""
    import torch  # only when pickle weights are read

    try:
        if not zipfile.is_zipfile(path):
            raise FormatError(
                f"{path}: legacy (non-zip) torch pickle; re-save it with torch >= 1.6 or convert "
                "to safetensors (only the zip format can be memory-mapped)"
            )
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FormatError:
        raise
    except pickle.UnpicklingError:
        raise FormatError(
            f"{path}: refused: the pickle references code or objects other than tensors "
            "(rejected by torch's weights-only unpickler; nothing in it was executed)"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: cannot load torch weights: {type(exc).__name__}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise FormatError(f"{path}: no tensors found")
    return tensors


def tensor_info(name: str, tensor: torch.Tensor, path: Path) -> TensorInfo:
    """A TensorInfo describing an in-memory (mmap) tensor; offsets are not used for reading."""
    dtype = safetensors_name(tensor.dtype)
    nbytes = tensor.numel() * tensor.element_size()
    return TensorInfo(name, dtype, tuple(tensor.shape), path, 0, nbytes)


def pickle_files(folder: Path) -> list[Path]:
    """The pickle weight files of a directory, via its index when there is one."""
    index = folder / PICKLE_INDEX
    if index.is_file():
        try:
            data = json_loads(read_regular(index))
        except (OSError, ValueError):
            raise SourceError(f"{index}: no weight_map of tensor name -> shard file") from None
        names = sorted(set(check_weight_map(str(index), data).values()))
        files = [folder / n for n in names]
        for f in files:
            if folder.resolve() not in f.resolve().parents or not f.is_file():
                raise SourceError(f"{index}: shard {f.name} is missing")
        return files
    return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


class PickleSource:
    """A :class:`opdgeo.io.checkpoint.TensorSource` over mmap'd tensors: each read is a
    contiguous copy (of the leading ``rows`` when asked), so mapped pages are released."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def read(
        self, info: TensorInfo, rows: int | None = None, path: Path | None = None,
        pin: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        t = self.tensors[info.name]
        if rows is not None:
            t = t[:rows]
        out = t.contiguous().clone()
        return out.pin_memory() if pin else out

    def close(self) -> None:
        pass


def open_pickles(
    label: str, files: list[Path], config: dict[str, Any], options: SourceOptions
) -> Checkpoint:
    """A checkpoint over pickle weight files, only with the opt-in (see the module docstring)."""
    if not options.allow_pickle:
        raise refusal(files[0] if len(files) == 1 else label)
    headers: dict[str, dict[str, TensorInfo]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        loaded = load_state_dict(path)
        headers[path.name] = {n: tensor_info(n, t, path) for n, t in loaded.items()}
        for name, tensor in loaded.items():
            tensors.setdefault(name, tensor)
    infos = merge_shards(label, headers)
    return Checkpoint(label, infos, files, PickleSource(tensors), config)
