"""The base cache's folder: what opdgeo wrote there, and the only things it may remove.

The folder holds ``CACHEDIR.TAG`` and two-hex-digit subfolders of ``<64 hex>.safetensors``
entries (and ``.tmp-*.safetensors`` leftovers of interrupted writes). An entry is recognised by
its name AND its header (its metadata ``key`` equals its name). Symlinks are never followed.
A folder holding anything else is never used as a cache and never cleared: pointed at a
checkpoint by mistake, it loses nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from opdgeo.errors import OpdgeoError, SourceError
from opdgeo.io.safetensors import read_header

TAG_NAME = "CACHEDIR.TAG"
TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by opdgeo (base-matrix cache).\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_SUBDIR_RE = re.compile(r"^[0-9a-f]{2}$")
_ENTRY_RE = re.compile(r"^([0-9a-f]{64})\.safetensors$")
_TMP_RE = re.compile(r"^\.tmp-[A-Za-z0-9_]+\.safetensors$")
_TENSORS = frozenset({"s", "small", "other"})


@dataclass
class Scan:
    """What a cache folder holds: entries opdgeo wrote, its leftovers, and anything else."""

    entries: list[Path] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    """Temporary files of interrupted writes (ours by name, inside our subfolders)."""
    subdirs: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)
    """Files, folders and symlinks that opdgeo did not write (never touched)."""

    @property
    def nbytes(self) -> int:
        total = 0
        for p in self.entries:
            with contextlib.suppress(OSError):
                total += p.lstat().st_size
        return total


def is_entry(path: Path, subdir: str) -> bool:
    """An entry by name (``<key>.safetensors`` in the ``key[:2]`` subfolder) and by header."""
    match = _ENTRY_RE.match(path.name)
    if not match or match.group(1)[:2] != subdir:
        return False
    try:
        infos, meta = read_header(path)
    except (OpdgeoError, OSError):
        return False
    return meta.get("key") == match.group(1) and set(infos) <= _TENSORS and "s" in infos


def foreign_top_level(root: Path) -> str | None:
    """Why the cache folder cannot be ours, judged from its top level (cheap), or None."""
    try:
        if not root.exists() and not root.is_symlink():
            return None
        if not root.is_dir():
            return "it is not a folder"
        names = os.listdir(root)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    for name in sorted(names):
        path = root / name
        if name == TAG_NAME and path.is_file() and not path.is_symlink():
            continue
        if _SUBDIR_RE.match(name) and path.is_dir() and not path.is_symlink():
            continue
        return f"it holds {name!r}, which opdgeo did not write"
    return None


def make_folders(root: Path, subdir: Path) -> None:
    """Create the cache folder (tagged) and ``subdir``; refuse symlinked subfolders."""
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            (root / TAG_NAME).write_text(TAG_TEXT, encoding="utf-8")
    if subdir.is_symlink():
        raise OpdgeoError(f"{subdir} is a symlink")
    subdir.mkdir(exist_ok=True)


def scan(root: Path) -> Scan:
    """Classify everything under the cache folder, following no symlink."""
    found = Scan()
    if not root.is_dir():
        return found
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise SourceError(f"cannot read {root}: {exc.strerror or exc}") from None
    for entry in top:
        path = Path(entry.path)
        if entry.name == TAG_NAME and entry.is_file(follow_symlinks=False):
            continue
        if not (_SUBDIR_RE.match(entry.name) and entry.is_dir(follow_symlinks=False)):
            found.foreign.append(path)
            continue
        found.subdirs.append(path)
        try:
            inner = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            found.foreign.append(path)
            continue
        for item in inner:
            file = Path(item.path)
            if not item.is_file(follow_symlinks=False):
                found.foreign.append(file)
            elif is_entry(file, entry.name):
                found.entries.append(file)
            elif _TMP_RE.match(item.name):
                found.leftovers.append(file)
            else:
                found.foreign.append(file)
    return found


def clear(root: Path, dry_run: bool = False) -> list[Path]:
    """Delete every entry (and leftover temporary file) opdgeo wrote; return them.

    Refuses (:class:`OpdgeoError`, nothing deleted) when the folder holds anything else,
    so a cache folder pointed at a checkpoint never loses a file. ``dry_run`` only lists.
    """
    if root.is_symlink():
        raise OpdgeoError(
            f"refusing to clear {root}: it is a symlink (pass the folder it points to)"
        )
    found = scan(root)
    if found.foreign:
        first = found.foreign[0]
        raise OpdgeoError(
            f"refusing to clear {root}: {first} was not written by opdgeo "
            f"({len(found.foreign)} such item(s)); remove the cache entries by hand "
            "or point --cache-dir at the cache folder itself"
        )
    doomed = [*found.entries, *found.leftovers]
    if dry_run:
        return doomed
    removed = []
    for path in doomed:
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise OpdgeoError(f"cannot remove {path}: {exc.strerror or exc}") from None
    for subdir in found.subdirs:
        with contextlib.suppress(OSError):
            subdir.rmdir()  # only when empty
    return removed
