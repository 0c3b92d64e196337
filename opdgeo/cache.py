"""The base cache: W0's spectrum, top-k subspaces and mask thresholds, kept on disk.

Decomposing W0 is the largest single cost of a comparison, and it depends on the base alone,
so repeated comparisons against one base (several runs, trajectories, reruns with other
output options) can skip it. One safetensors file per base matrix holds

* ``s`` - every singular value, float64;
* ``small`` - the top-k singular vectors of W0's smaller side, float64 (the other side is
  recomputed from W0 exactly as a cold run computes it, ``Wᵀ U_k / s_k``), and for the
  ``svd-f64`` method also ``other``, the other side's vectors;
* metadata - the method, the cache key, the exact mask thresholds and a SHA-256 of all of it.

The key is a SHA-256 of the tensor's identity and everything the stored values depend on:
a local file's resolved path, size, modification and status-change times (nanoseconds),
device and inode plus the tensor's name, dtype, shape and offset (a copy that keeps the
mtime, ``cp -p``, still gets a new ctime and inode); or ``repo@commit`` plus shard and
tensor name for Hub files; and the spectral method, the compute device type and
:data:`CACHE_VERSION`.

What is trusted: nothing. An entry is used only when its checksum matches its content and it
fits the matrix it claims to describe (:func:`check_entry`: shapes, finite values, singular
values non-negative and descending, ``Σ s² = ‖W0‖_F²`` and ``‖W0ᵀ u₁‖ = s₁`` to 1e-6, unit
vectors); anything else is recomputed and rewritten, so a damaged or poisoned cache gives the
numbers of ``--no-cache``.

What is touched: the cache folder holds ``CACHEDIR.TAG`` and two-hex-digit subfolders of
``<64 hex>.safetensors`` entries. A folder holding anything else (a checkpoint, say) is never
used as a cache and never cleared; symlinks inside it are never followed. Writes go through a
temporary file and a rename; a failed write (full disk, read-only folder) warns once and the
run goes on without caching. Size: ``8 · min(m, n) · k`` bytes per matrix plus the singular
values (Gram route), so a Qwen2-1.5B base takes about 0.3 GB.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from opdgeo import cache_folder as folder
from opdgeo.errors import OpdgeoError, OpdgeoWarning
from opdgeo.io import Checkpoint
from opdgeo.linalg import Spectrum, project_left, spectrum_from_vectors
from opdgeo.outputs import replace_atomically

if TYPE_CHECKING:  # a type only: config imports the metric registry, which imports this
    from opdgeo.config import Settings

CACHE_VERSION = 4
"""Bump when the stored layout or the numerics of a stored value change (2: checksums; 3: the
Gram route's top-k eigensolver, ``gram-mrrr-f64``; 4: its tridiagonal solved by divide and
conquer, ``gram-dc-f64``)."""
_TENSORS = frozenset({"s", "small", "other"})
_REL_TOL = 1e-6


METHODS = {"gram": ("gram-dc-f64", "gram-eigh-f64"), "svd": ("svd-f64",)}
"""The decomposition method labels each ``Settings.spectral_method`` produces (the Gram route
says ``gram-eigh-f64`` where the full ``eigh`` did the work: Grams of order < 224)."""


@dataclass
class StoredBase:
    """What the base cache keeps for one matrix: all singular values (float64), the top-k
    singular vectors of W0's smaller side (float64; both sides for ``svd-f64``), the method
    that produced them, and the mask thresholds."""

    s: torch.Tensor
    small: torch.Tensor
    other: torch.Tensor | None
    method: str
    thresholds: dict[str, tuple[float, int]] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.small.shape[1])

    def serves(self, k: int, spectral_method: str) -> bool:
        """True when this entry holds at least ``k`` vectors made by ``spectral_method``."""
        return self.k >= k and self.method in METHODS.get(spectral_method, ())

    def spectrum(self, w0: torch.Tensor, k: int) -> Spectrum:
        """W0's :class:`~opdgeo.linalg.Spectrum` with ``k`` vectors, rebuilt from this entry
        exactly as a cold run computes it (so warm results are bit-identical)."""
        device = w0.device
        if self.other is not None:  # svd: both sides were stored
            m, n = w0.shape
            small, other = self.small.to(device), self.other.to(device)
            u, v = (small, other) if m <= n else (other, small)
            return Spectrum(self.s.to(device), u, v, self.method)
        return spectrum_from_vectors(w0, self.s, self.small, k, self.method)


@dataclass
class BaseShared:
    """W0-only results shared by every run compared against one base tensor.

    ``spectra`` holds W0's decompositions by k; ``thresholds`` the exact mask thresholds
    (``(threshold, ties to take)``, see :func:`opdgeo.linalg.fraction_threshold`) by mask.
    ``stored`` is what the on-disk cache held (loaded lazily by ``load`` the first time W0's
    spectrum is needed); ``dirty`` says that something new was computed and should be saved.
    """

    spectra: dict[int, Spectrum] = field(default_factory=dict)
    thresholds: dict[str, tuple[float, int]] = field(default_factory=dict)
    load: Callable[[torch.Tensor], StoredBase | None] | None = None
    """Reads the cached entry of this tensor, checked against W0 (passed in)."""
    key: str = ""
    """The base-cache key of this tensor ("" when it is not cached)."""
    stored: StoredBase | None = None
    loaded: bool = False
    dirty: bool = False
    memo: dict[str, Any] = field(default_factory=dict)
    """Other W0-only results a metric computes once per base tensor and shares across runs
    (kept in memory only, never written to the cache)."""

    def from_store(self, w0: torch.Tensor) -> StoredBase | None:
        """The cached entry for this base tensor ``w0``, loading (and checking it against
        ``w0``) on first use."""
        if not self.loaded:
            self.loaded = True
            self.stored = self.load(w0) if self.load is not None else None
            if self.stored is not None:
                self.thresholds = {**self.stored.thresholds, **self.thresholds}
        return self.stored

    def entry(self, shape: tuple[int, ...]) -> StoredBase | None:
        """What to write to the base cache for this W0 (None when it was never decomposed)."""
        if not self.spectra:
            return None
        sp = self.spectra[max(self.spectra)]
        kept = self.stored
        if kept is not None and kept.k >= sp.u.shape[1] and kept.method == sp.method:
            # a new threshold only: keep the stored (possibly larger-k) vectors
            return StoredBase(kept.s, kept.small, kept.other, kept.method, dict(self.thresholds))
        m, n = shape
        small, other = (sp.u, sp.v) if m <= n else (sp.v, sp.u)
        keep_other = sp.method == "svd-f64"
        return StoredBase(
            sp.s.cpu(), small.cpu(), other.cpu() if keep_other else None, sp.method,
            dict(self.thresholds),
        )  # fmt: skip


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


def _checksum(tensors: dict[str, torch.Tensor], thresholds: str, method: str, key: str) -> str:
    h = hashlib.sha256(f"{key}|{method}|{thresholds}".encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        if t.dim() and t.stride(-1) != 1:  # "contiguous" with a size-1 last dim, any stride
            t = torch.empty(t.shape, dtype=t.dtype).copy_(t)
        h.update(f"|{name}|{t.dtype}|{list(t.shape)}|".encode())
        # reshape first: a contiguous [n, 1] tensor may have stride (1, n), which view() refuses
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def entry_is_sound(entry: StoredBase) -> bool:
    """Checks that need no matrix: float64 tensors of consistent shapes, finite values,
    singular values non-negative and descending, unit vectors, valid thresholds."""
    s, small, other = entry.s, entry.small, entry.other
    if s.dtype != torch.float64 or small.dtype != torch.float64 or s.dim() != 1:
        return False
    if small.dim() != 2 or small.shape[0] != s.numel() or not 1 <= small.shape[1] <= s.numel():
        return False
    if other is not None and (other.dtype != torch.float64 or other.dim() != 2):
        return False
    if other is not None and other.shape[1] != small.shape[1]:
        return False
    tensors = [s, small] if other is None else [s, small, other]
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        return False
    if bool((s < 0).any()) or bool((s[1:] > s[:-1] * (1 + 1e-12)).any()):
        return False
    norms = torch.linalg.vector_norm(small, dim=0)
    if bool(((norms - 1).abs() > _REL_TOL).any()):
        return False
    return all(not math.isnan(thr) and need >= 0 for thr, need in entry.thresholds.values())


def max_entry_bytes(shape: tuple[int, ...] | torch.Size) -> int:
    """The largest file an entry for a matrix of ``shape`` can be: ``s`` (min side), ``small``
    and ``other`` (at most min side x min side and max side x min side, float64), plus 1 MiB
    of header; a bigger file is not an entry for it and is rejected before it is read."""
    if len(shape) != 2:
        return 0
    r, big = min(shape), max(shape)
    return 8 * (r + r * r + big * r) + 2**20


def check_entry(entry: StoredBase, w0: torch.Tensor) -> bool:
    """True when ``entry`` is sound and describes the matrix ``w0``: shapes match it,
    ``Σ s² = ‖W0‖_F²`` and ``‖W0ᵀ u₁‖ = s₁`` (``‖W0 v₁‖`` on the tall side) to 1e-6."""
    if w0.dim() != 2 or not entry_is_sound(entry):
        return False
    m, n = w0.shape
    s, small, other = entry.s, entry.small, entry.other
    if s.numel() != min(m, n):
        return False
    if other is not None and other.shape[0] != max(m, n):
        return False
    if any(need > m * n for _, need in entry.thresholds.values()):
        return False
    fro2 = float(torch.linalg.vector_norm(w0, dtype=torch.float64)) ** 2
    total = float((s * s).sum())
    if abs(total - fro2) > _REL_TOL * max(fro2, 1e-300):
        return False
    if float(s[0]) == 0.0:
        return fro2 == 0.0
    image = project_left(w0, small[:, :1]) if m <= n else project_left(w0.T, small[:, :1])
    top = float(torch.linalg.vector_norm(image))
    return abs(top - float(s[0])) <= _REL_TOL * float(s[0])


class BaseCache:
    """A directory of cached base decompositions (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.writes = 0
        self.rejected = 0
        """Entries found but not used (bad checksum, not fitting their matrix)."""
        self.failed = False
        """A write failed; no more writes are tried in this run."""

    @classmethod
    def for_settings(cls, settings: Settings) -> BaseCache | None:
        """The cache the settings ask for, or None (``cache = false``, the scan and fast tiers,
        which decompose nothing, or a folder that is not an opdgeo cache: then a warning says
        so)."""
        if not settings.cache or settings.tier in ("scan", "fast"):
            return None
        root = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_dir()
        cache = cls(root)
        problem = cache.foreign_top_level()
        if problem is not None:
            warnings.warn(
                f"not using {root} as the base cache: {problem}; caching is off for this run",
                OpdgeoWarning,
                stacklevel=2,
            )
            return None
        return cache

    def shared(self, base: Checkpoint, name: str, settings: Settings) -> BaseShared:
        """A fresh :class:`BaseShared` for base matrix ``name``, backed by its cache entry."""
        if len(base.tensors[name].shape) != 2:
            return BaseShared()
        identity = tensor_identity(base, name)
        if identity is None:
            return BaseShared()
        key = self.key(identity, settings)
        return BaseShared(load=partial(self.load, key), key=key)

    def keep(self, shared: BaseShared, shape: tuple[int, ...]) -> None:
        """Write what was newly computed for one base matrix (nothing when nothing was)."""
        if shared.dirty and shared.key:
            entry = shared.entry(shape)
            if entry is not None:
                self.save(shared.key, entry)

    def key(self, identity: str, settings: Settings) -> str:
        device = torch.device(settings.device).type
        text = f"v{CACHE_VERSION}|{settings.spectral_method}|{device}|{identity}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str, w0: torch.Tensor | None = None) -> StoredBase | None:
        """The entry stored under ``key`` if it is intact and (given ``w0``) fits that
        matrix; None otherwise (the caller recomputes)."""
        path = self._path(key)
        if path.is_symlink() or path.parent.is_symlink() or not path.is_file():
            return None
        try:
            if w0 is not None and path.stat().st_size > max_entry_bytes(w0.shape):
                return self._reject()  # sized before reading: never allocate what cannot fit
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
            if meta.get("key") != key or set(tensors) - _TENSORS:
                return self._reject()
            text = meta["thresholds"]
            if meta.get("checksum") != _checksum(tensors, text, meta["method"], key):
                return self._reject()
            thresholds = {k: (float(v[0]), int(v[1])) for k, v in json.loads(text).items()}
            entry = StoredBase(
                tensors["s"], tensors["small"], tensors.get("other"), meta["method"], thresholds
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError, SafetensorError):
            return self._reject()
        if not (entry_is_sound(entry) if w0 is None else check_entry(entry, w0)):
            return self._reject()
        self.hits += 1
        return entry

    def _reject(self) -> StoredBase | None:
        """Count an unusable entry; the caller recomputes."""
        self.rejected += 1
        return None

    def save(self, key: str, entry: StoredBase) -> None:
        """Write ``entry`` under ``key`` atomically. A failure warns once and turns writing
        off for the rest of the run; it never fails the comparison."""
        if self.failed:
            return
        path = self._path(key)
        tensors = {"s": entry.s.contiguous(), "small": entry.small.contiguous()}
        if entry.other is not None:
            tensors["other"] = entry.other.contiguous()
        text = json.dumps({k: [v[0], v[1]] for k, v in entry.thresholds.items()})
        meta = {
            "key": key,
            "method": entry.method,
            "thresholds": text,
            "checksum": _checksum(tensors, text, entry.method, key),
        }

        def fill(fd: int, tmp: str) -> None:
            os.close(fd)
            save_file(tensors, tmp, metadata=meta)

        try:
            folder.make_folders(self.root, path.parent)
            # the leftover name cache --clear recognises (cache_folder._TMP_RE)
            replace_atomically(path, fill, prefix=".tmp-", suffix=".safetensors")
            self.writes += 1
        except (OSError, SafetensorError, OpdgeoError) as exc:
            self.failed = True
            why = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            warnings.warn(
                f"cannot write the base cache in {self.root} ({why}); going on without caching",
                OpdgeoWarning,
                stacklevel=2,
            )

    def foreign_top_level(self) -> str | None:
        """Why the cache folder cannot be ours, judged from its top level (cheap), or None."""
        return folder.foreign_top_level(self.root)

    def scan(self) -> folder.Scan:
        """Classify everything under the cache folder, following no symlink."""
        return folder.scan(self.root)

    def size(self) -> tuple[int, int]:
        """(entries, bytes) currently in the cache."""
        found = self.scan()
        return len(found.entries), found.nbytes

    def clear(self, dry_run: bool = False) -> list[Path]:
        """Delete every entry (and leftover temporary file) opdgeo wrote; return them.
        Refuses when the folder holds anything else (see :func:`opdgeo.cache_folder.clear`)."""
        return folder.clear(self.root, dry_run)
