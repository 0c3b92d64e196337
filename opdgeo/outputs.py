"""Where opdgeo may write, and the one way it writes a file.

Guarantees (README, "Safety"):

* nothing is written inside a checkpoint folder: a directory given as an input, or the folder
  holding an input file (:func:`check_output_path`);
* a regular file (or a missing one) is written through a temporary file in the same folder and
  renamed over it, so a reader never sees half a report and an interrupted run leaves the old
  file; the temporary file is removed on every failure (full disk, read-only folder, Ctrl-C);
* a symlink is followed: its target is written and the link is kept;
* a special file (``/dev/full``, a FIFO, a terminal) is written in place, as the shell's
  ``>`` does, and never replaced by a regular file; ``/dev/stdout``, ``/dev/stderr`` and
  ``/dev/fd/N`` write to the descriptor itself (:func:`own_descriptor`), so ``-o /dev/stdout
  >> log`` appends to log and a pipe works;
* a missing folder is not created (as ``cp`` does not): the write is refused;
* new files get the permissions ``0666 & ~umask`` (0644 under the usual umask), a replaced
  file keeps its own;
* every failure is one :class:`OutputError` line (exit 1) naming the path and the cause, a
  full disk behind standard output too (:func:`write_descriptor`);
* ``-`` is standard output (``-o -``, ``--per-tensor -``), as for every Unix tool.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from opdgeo.errors import OutputError

STDOUT = "-"
"""The path that means standard output (``-o -``)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def checkpoint_folders(inputs: Sequence[str]) -> list[Path]:
    """Resolved folders that belong to the local inputs: each input directory, and the folder
    holding each input file."""
    folders = []
    for spec in inputs:
        src = Path(spec).expanduser()
        try:
            if not src.exists():
                continue  # a Hub id, or a path that the comparison itself will report
            src = src.resolve()
        except OSError:
            continue
        folders.append(src if src.is_dir() else src.parent)
    return folders


def check_output_path(path: Path | str, inputs: Sequence[str]) -> Path:
    """Refuse to write ``path`` when it is an input or lies inside a checkpoint folder.

    Symlinks are resolved first, so a link that points into a checkpoint is refused too.
    Returns the resolved target. ``-`` (standard output) is always allowed.
    """
    if str(path) == STDOUT:
        return Path(STDOUT)
    target = Path(os.path.realpath(Path(path).expanduser()))
    for folder in checkpoint_folders(inputs):
        if target == folder or folder in target.parents:
            raise OutputError(
                f"refusing to write {path}: it is inside the checkpoint folder {folder} "
                "(opdgeo never writes into a checkpoint; choose another folder)"
            )
    return target


def write_output(path: Path | str, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` with the guarantees of the module docstring; returns the path
    actually written (a symlink's target)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    given = Path(path).expanduser()
    fd = STDOUT_FD if str(path) == STDOUT else own_descriptor(given)
    if fd is not None:  # /dev/stdout, /dev/fd/N: the descriptor as it is (>> appends)
        write_descriptor(fd, raw, str(path))
        return Path(STDOUT) if fd == STDOUT_FD else given
    target = Path(os.path.realpath(given))
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_why(exc)}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write {path}: it is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        _write_in_place(given, target, raw)
        return target
    folder = check_folder(path, target)
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()

    def fill(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(raw)

    try:
        replace_atomically(target, fill, folder=folder)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_why(exc)}") from None
    return target


def replace_atomically(
    target: Path,
    fill: Callable[[int, str], None],
    folder: Path | None = None,
    prefix: str = "",
    suffix: str = ".tmp",
) -> None:
    """Write ``target`` atomically: ``fill(fd, tmp)`` writes a temporary file
    ``<prefix><random><suffix>`` (prefix ``.<target name>.`` by default) in ``folder``
    (``target``'s own by default; ``fill`` owns the descriptor ``fd``), which is then renamed
    over ``target``, so a reader sees the old file or the new one, never part of one. On any
    failure the temporary file is removed and the error propagates. The one atomic write:
    reports, figures and state files (:func:`write_output`) and base-cache entries."""
    where = folder or target.parent
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{target.name}.", suffix=suffix, dir=where)
    try:
        fill(fd, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_folder(path: Path | str, target: Path | None = None) -> Path:
    """The folder that will hold ``path`` (or its resolved ``target``); a missing one is an
    :class:`OutputError`, as ``cp`` refuses: opdgeo does not create folders for a file."""
    if str(path) == STDOUT:
        return Path(".")
    folder = (target or Path(os.path.realpath(Path(path).expanduser()))).parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist (create it first)")
    return folder


STDOUT_FD = 1

_FD_LINK = re.compile(rf"/proc/(?:self|thread-self|{os.getpid()})(?:/task/\d+)?/fd/(\d+)")


def own_descriptor(path: Path) -> int | None:
    """The number N when ``path`` names one of this process's open descriptors through
    ``/proc/self/fd/N`` (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``); else None.

    Such a path is the descriptor the shell opened (``> file``, ``>> log``, a pipe): it is
    written as it is, never resolved to the file behind it and replaced, which would drop
    what ``>>`` appends to (a pipe's ``pipe:[...]`` is no path at all)."""
    current = os.path.abspath(path)
    for _ in range(40):  # links followed one at a time, as the kernel would
        folder = os.path.realpath(os.path.dirname(current))
        current = os.path.join(folder, os.path.basename(current))
        match = _FD_LINK.fullmatch(current)
        if match:
            return int(match.group(1))
        if not os.path.islink(current):
            return None
        current = os.path.join(folder, os.readlink(current))
    return None


def write_descriptor(fd: int, raw: bytes, name: str = STDOUT) -> None:
    """``raw`` on descriptor ``fd`` (standard output through ``sys.stdout``); a failure (a full
    disk behind ``>``) is one :class:`OutputError` line. A closed pipe (EPIPE) is left to the
    caller, which exits quietly as every Unix filter does."""
    try:
        if fd == STDOUT_FD:
            sys.stdout.flush()
            buffer = getattr(sys.stdout, "buffer", None)
            if buffer is not None:
                buffer.write(raw)
                buffer.flush()
            else:
                sys.stdout.write(raw.decode("utf-8"))
                sys.stdout.flush()
            return
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        raise
    except OSError as exc:
        where = "standard output" if name in (STDOUT, "") else name
        raise OutputError(f"cannot write {where}: {_why(exc)}") from None


def _write_in_place(given: Path, target: Path, raw: bytes) -> None:
    """Write a special file (device, FIFO) as ``>`` does: open, truncate, write."""
    try:
        with open(target, "wb") as fh:
            fh.write(raw)
            fh.flush()
    except OSError as exc:
        raise OutputError(f"cannot write {given}: {_why(exc)}") from None


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (one level: its parent must exist, as ``mkdir`` without ``-p``)."""
    if folder.is_dir():
        return folder
    try:
        folder.mkdir()
    except FileNotFoundError:
        raise OutputError(
            f"cannot create {folder}: folder {folder.parent} does not exist (create it first)"
        ) from None
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {_why(exc)}") from None
    return folder
