"""The base cache: W0's spectrum, top-k subspaces and mask thresholds, kept on disk.

Decomposing W0 is the largest single cost of a comparison, and it depends on the base alone,
so repeated comparisons against one base (several runs, trajectories, reruns with other
output options) can skip it. One safetensors file per base matrix holds

* ``s`` - every singular value, float64;
* ``small`` - the top-k singular vectors of W0's smaller side, float64 (the other side is
  recomputed from W0 exactly as a cold run computes it, ``Wᵀ U_k / s_k``), and for the
  ``svd-f64`` method also ``other``, the other side's vectors;
* metadata - the method, the cache key's plain text and the exact mask thresholds.

The key is a SHA-256 of the tensor's identity and everything the stored values depend on:
a local file's resolved path, size, modification and status-change times (nanoseconds),
device and inode plus the tensor's name, dtype, shape and offset (a copy that keeps the
mtime, ``cp -p``, still gets a new ctime and inode); or ``repo@commit`` plus shard and
tensor name for Hub files; and the spectral method, the compute device type and
:data:`CACHE_VERSION`. A changed file gets a new key; an unreadable or inconsistent entry
is ignored and rewritten. Entries are written atomically (temporary file + rename), never
inside a checkpoint directory unless the user points ``cache_dir`` there. Size:
``8 · min(m, n) · k`` bytes per matrix plus the singular values (Gram route), so a
Qwen2-1.5B base takes about 0.3 GB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from opdgeo.config import Settings
from opdgeo.pair import StoredBase
from opdgeo.sources import Checkpoint

CACHE_VERSION = 1
"""Bump when the stored layout or the numerics of a stored value change."""


def default_dir() -> Path:
    """``$OPDGEO_CACHE_DIR``, else ``$XDG_CACHE_HOME/opdgeo``, else ``~/.cache/opdgeo``."""
    env = os.environ.get("OPDGEO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return root / "opdgeo"


def tensor_identity(ckpt: Checkpoint, name: str) -> str | None:
    """A string that changes whenever the stored values of tensor ``name`` may change."""
    info = ckpt.tensors[name]
    where = f"{name}|{info.dtype}|{list(info.shape)}|{info.start}"
    if ckpt.fetcher is not None:
        return f"hub|{ckpt.label}|{info.file}|{where}"
    try:
        st = os.stat(info.file)
    except OSError:
        return None
    stamp = f"{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_dev}|{st.st_ino}"
    return f"file|{Path(info.file).resolve()}|{stamp}|{where}"


class BaseCache:
    """A directory of cached base decompositions (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.writes = 0

    @classmethod
    def for_settings(cls, settings: Settings) -> BaseCache | None:
        """The cache the settings ask for, or None (``cache = false`` or the fast tier)."""
        if not settings.cache or settings.tier == "fast":
            return None
        return cls(Path(settings.cache_dir).expanduser() if settings.cache_dir else default_dir())

    def key(self, identity: str, settings: Settings) -> str:
        device = torch.device(settings.device).type
        text = f"v{CACHE_VERSION}|{settings.spectral_method}|{device}|{identity}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> StoredBase | None:
        """The entry stored under ``key``, or None when absent or unusable."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
            thresholds = {
                k: (float(v[0]), int(v[1])) for k, v in json.loads(meta["thresholds"]).items()
            }
            s, small = tensors["s"], tensors["small"]
            other = tensors.get("other")
            ok = s.dtype == small.dtype == torch.float64 and small.dim() == 2
            ok = ok and small.shape[1] <= s.numel() and meta["key"] == key
            if not ok:
                return None
            self.hits += 1
            return StoredBase(s, small, other, meta["method"], thresholds)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            return None

    def save(self, key: str, entry: StoredBase) -> None:
        """Write ``entry`` under ``key`` atomically; a failure to write is not an error."""
        path = self._path(key)
        tensors = {"s": entry.s.contiguous(), "small": entry.small.contiguous()}
        if entry.other is not None:
            tensors["other"] = entry.other.contiguous()
        meta = {
            "key": key,
            "method": entry.method,
            "thresholds": json.dumps({k: [v[0], v[1]] for k, v in entry.thresholds.items()}),
        }
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
            os.close(fd)
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
            tmp = None
            self.writes += 1
        except OSError:
            pass  # a read-only or full cache only costs speed
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def size(self) -> tuple[int, int]:
        """(entries, bytes) currently in the cache."""
        files = list(self.root.glob("*/*.safetensors")) if self.root.is_dir() else []
        return len(files), sum(f.stat().st_size for f in files)

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        files = list(self.root.glob("*/*.safetensors")) if self.root.is_dir() else []
        for f in files:
            with contextlib.suppress(OSError):
                f.unlink()
        return len(files)
