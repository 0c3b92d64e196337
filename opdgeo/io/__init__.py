"""Reading checkpoints, header first.

Layers (each imports only the ones above it, so there is no cycle):

* :mod:`opdgeo.io.dtypes` - dtypes by their safetensors names; torch's resolved only when
  tensors are read, so that reading headers (``inspect``) never imports torch;
* :mod:`opdgeo.io.checkpoint` - the model every source produces: :class:`TensorInfo`,
  :class:`Checkpoint`, :class:`SourceOptions`, and the shard rules (:func:`merge_shards`);
* formats - :mod:`opdgeo.io.safetensors` (strict header parser and streaming reader) and
  :mod:`opdgeo.io.pickle` (pickle weights, only on opt-in);
* locations - :mod:`opdgeo.io.local` (files and folders) and :mod:`opdgeo.io.hub` (Hub
  repos pinned to a commit); neither imports the other;
* :func:`open_checkpoint` - the one entry point: a local path if one exists, else a Hub id;
  :func:`open_base` / :func:`open_run` - a comparison's base (an adapter refused) and a tuned
  run (an adapter composed with its base, :mod:`opdgeo.io.peft`), quantized weights decoded
  (:mod:`opdgeo.io.quant`).
"""

from __future__ import annotations

import os
from pathlib import Path

from opdgeo.errors import OpdgeoError, SourceError
from opdgeo.io.checkpoint import Checkpoint, SourceOptions, TensorInfo

__all__ = ["Checkpoint", "SourceOptions", "TensorInfo", "open_base", "open_checkpoint", "open_run"]


def open_checkpoint(spec: str, options: SourceOptions | None = None) -> Checkpoint:
    """Open a checkpoint (headers only): a local path, else a Hub id ``org/name[@rev]``.

    A spec that is neither an existing path nor a Hub repo that can be opened fails with one
    line saying both: first that no local path of that name exists (the likely mistake when
    ``demo/base`` is run from the wrong folder), then what the Hub (or its cache) answered.
    """
    options = options or SourceOptions()
    path = Path(spec).expanduser()
    try:
        if _exists(path):
            from opdgeo.io.local import open_local

            if _unsearchable_folder(path):  # before config.json warns about it
                raise SourceError(f"cannot read folder {spec}: permission denied")

            return open_local(spec, path, options)
    except PermissionError as exc:
        where = f"folder {spec}" if _unreadable_folder(path) else exc.filename or spec
        raise SourceError(f"cannot read {where}: permission denied") from None
    from opdgeo.io.hub import HubRepo, open_hub, parse_spec

    parsed = parse_spec(spec)
    if parsed is None:
        from opdgeo.io.hub_names import hub_id_problem

        problem = hub_id_problem(spec)
        raise SourceError(
            f"no such file or directory: {_shown(spec)}" + (f" ({problem})" if problem else "")
        )
    try:
        repo = HubRepo(parsed[0], parsed[1], options)
    except OpdgeoError as exc:
        raise type(exc)(f"no local path {_shown(spec)} exists; tried as a Hub id: {exc}") from None
    return open_hub(repo)


def open_run(spec: str, base: Checkpoint, options: SourceOptions) -> Checkpoint:
    """A checkpoint to compare against ``base``: an adapter composed with it, else the
    checkpoint itself with its quantized weights decoded."""
    from opdgeo.io.peft import is_adapter, open_adapter
    from opdgeo.io.quant import dequantized

    ckpt = open_checkpoint(spec, options)
    if is_adapter(ckpt):
        return open_adapter(ckpt, base)
    return dequantized(ckpt)


def open_base(spec: str, options: SourceOptions) -> Checkpoint:
    """The base of a comparison, its quantized weights decoded; an adapter is refused (it
    has no weights of its own to compare against)."""
    from opdgeo.io.peft import is_adapter
    from opdgeo.io.quant import dequantized

    ckpt = open_checkpoint(spec, options)
    if is_adapter(ckpt):
        ckpt.close()
        raise SourceError(
            f"{ckpt.label}: is a LoRA adapter, not a base model (give the base model first: "
            "opdgeo compare BASE ADAPTER)"
        )
    return dequantized(ckpt)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name longer than the file system allows (ENAMETOOLONG) cannot exist
        return False


def _shown(spec: str, limit: int = 120) -> str:
    return spec if len(spec) <= limit else f"{spec[:limit]}... ({len(spec)} characters)"


def _unsearchable_folder(path: Path) -> bool:
    """Whether ``path`` is a folder whose files cannot be reached (no search permission)."""
    try:
        os.stat(os.path.join(path, "."))
    except PermissionError:
        return True
    except OSError:
        return False
    return False


def _unreadable_folder(path: Path) -> bool:
    """Whether ``path`` is a folder this process may not list (then the error names the
    folder, not the first file looked for inside it)."""
    try:
        if not path.is_dir():
            return False
        os.listdir(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return False
