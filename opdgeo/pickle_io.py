"""Pickle-based PyTorch weights (``.bin``, ``.pt``, ``.pth``), read only on explicit opt-in.

A pickle can run arbitrary code when it is loaded, so opdgeo refuses these files unless the
user passes ``--allow-pickle``. Even then they are loaded only with
``torch.load(..., weights_only=True, mmap=True)``: the restricted unpickler accepts tensors and
plain containers and refuses any other callable, and ``mmap`` maps storages lazily instead of
reading the whole file into memory. A file that needs anything beyond plain weights is
refused with a one-line error; its code is never executed.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from opdgeo.errors import FormatError, SourceError
from opdgeo.safetensors_io import TensorInfo

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PICKLE_INDEX = "pytorch_model.bin.index.json"
OPT_IN = "--allow-pickle"

_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip


def refusal(path: Path | str) -> SourceError:
    """The error for pickle weights without the opt-in."""
    return SourceError(
        f"{path}: pickle-based weights are not read by default, because loading a pickle can "
        f"run code; convert to safetensors, or pass {OPT_IN} to load them with "
        "torch.load(weights_only=True, mmap=True)"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load one pickle file as a flat ``{name: tensor}`` dict, safely (see module docstring)."""
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
    dtype = _DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype).removeprefix("torch."))
    nbytes = tensor.numel() * tensor.element_size()
    return TensorInfo(name, dtype, tuple(tensor.shape), path, 0, nbytes)


def pickle_files(folder: Path) -> list[Path]:
    """The pickle weight files of a directory, via its index when there is one."""
    index = folder / PICKLE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise SourceError(f"{index}: no weight_map of tensor name -> shard file") from None
        files = [folder / n for n in names]
        for f in files:
            if folder.resolve() not in f.resolve().parents or not f.is_file():
                raise SourceError(f"{index}: shard {f.name} is missing")
        return files
    return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())


def load_files(files: list[Path]) -> tuple[dict[str, TensorInfo], dict[str, torch.Tensor]]:
    """Infos and mmap'd tensors of several pickle shards (duplicate names are an error)."""
    infos: dict[str, TensorInfo] = {}
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        for name, tensor in load_state_dict(path).items():
            if name in tensors:
                raise SourceError(f"tensor {name!r} appears in two pickle shards ({path.name})")
            tensors[name] = tensor
            infos[name] = tensor_info(name, tensor, path)
    return infos, tensors


def loader(tensors: dict[str, torch.Tensor]) -> Any:
    """``read(name, rows)`` over mmap'd tensors: contiguous copies, so pages are released."""

    def read(name: str, rows: int | None = None) -> torch.Tensor:
        t = tensors[name]
        if rows is not None:
            t = t[:rows]
        return t.contiguous().clone()

    return read
