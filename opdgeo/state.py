"""The state file of a resumable batch: a locked, append-only JSON-lines log.

Line 1 is a header, ``{"opdgeo_state": 1, "settings": {...}, "inputs": {...}}``: the settings
that shape per-tensor numbers and each input's identity (for a local path, the size and
modification time of each file in it; for a Hub id, the id itself). Every further line is one
(run, tensor) record. ``--resume`` refuses a state file written under other settings or
inputs, naming the first difference, so a resumed report never mixes two computations; it
de-duplicates records by (base, run, tensor), reports a damaged line by its number, and drops a
last line cut by the interruption. The file is locked (``flock``) while a batch uses it: a
second batch on the same state file is refused with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from opdgeo.config import Settings
from opdgeo.errors import ConfigError, OutputError
from opdgeo.outputs import check_folder, check_output_path
from opdgeo.records import TensorRecord

VERSION = 1
_MAGIC = b'{"opdgeo_state":'
_MAGIC_RE = re.compile(rb'\{\s*"opdgeo_state"\s*:')
"""How every state file opdgeo writes begins (its header line, ``json.dumps`` of a dict whose
first key is ``opdgeo_state``)."""
OPERATIONAL = ("threads", "read_ahead", "cache", "cache_dir")
"""Settings that change how fast a batch runs, never its numbers (a resume may change them)."""


def input_identity(spec: str) -> dict[str, list[int]] | str:
    """What identifies an input: ``{file name: [size, mtime_ns]}`` for the files of a local
    path (the file itself, or the regular files directly inside a folder), else ``spec``."""
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            st = path.stat()
            return {path.name: [st.st_size, st.st_mtime_ns]}
        if path.is_dir():
            out: dict[str, list[int]] = {}
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.is_file():
                        continue
                    st = entry.stat()
                    out[entry.name] = [st.st_size, st.st_mtime_ns]
            return dict(sorted(out.items()))
    except OSError:
        return "unreadable"
    return spec


def fingerprint(settings: Settings, inputs: Sequence[str]) -> dict[str, Any]:
    """The header of a state file: the numeric settings and the identity of every input."""
    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k not in OPERATIONAL}
    data = {"settings": kept, "inputs": {spec: input_identity(spec) for spec in inputs}}
    normal: dict[str, Any] = json.loads(json.dumps(data))  # tuples as lists, as read back
    return normal


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first difference between two fingerprints, in words (None when equal)."""
    olds, news = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(olds) | set(news)):
        if olds.get(key) != news.get(key):
            return f"setting {key} was {olds.get(key)!r}, now {news.get(key)!r}"
    oldi, newi = old.get("inputs", {}), new.get("inputs", {})
    for spec in sorted(set(oldi) | set(newi)):
        if spec not in newi:
            return f"input {spec} was part of the interrupted batch and is not now"
        if spec not in oldi:
            return f"input {spec} was not part of the interrupted batch"
        if oldi[spec] != newi[spec]:
            a, b = oldi[spec], newi[spec]
            files = sorted(set(a) ^ set(b)) if isinstance(a, dict) and isinstance(b, dict) else []
            changed = files or (
                sorted(k for k in a if a[k] != b.get(k)) if isinstance(a, dict) else []
            )
            what = f" ({', '.join(changed[:3])})" if changed else ""
            return f"input {spec} changed since the state file was written{what}"
    return None


class StateFile:
    """Append-only, locked JSON-lines log of per-tensor records, keyed by (origin label, run
    label). ``fingerprint`` (see :func:`fingerprint`) is checked on resume and written on a
    fresh start; ``notes`` says what a resume did (for the CLI to print)."""

    def __init__(self, path: Path, resume: bool, identity: dict[str, Any] | None = None) -> None:
        self.path = path
        self.fingerprint = identity or {}
        self.done: dict[tuple[str, str], dict[str, TensorRecord]] = {}
        self.notes: list[str] = []
        self.skipped = 0
        """(run, tensor) records a resumed batch took from the file instead of computing."""
        existed = _regular_or_missing(path)
        try:
            self._fh: IO[bytes] = open(path, "a+b")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OutputError(f"cannot open state file {path}: {exc.strerror or exc}") from None
        try:
            self._lock()
            self._check_ours()
            if resume and existed and os.fstat(self._fh.fileno()).st_size > 0:
                self._load()
            else:
                if resume:
                    self.notes.append(f"--resume: no state file at {path}; starting fresh")
                elif existed and os.fstat(self._fh.fileno()).st_size > 0:
                    self.notes.append(
                        f"starting over: the state file {path} of an earlier batch is replaced "
                        "(--resume continues it instead)"
                    )
                self._fh.truncate(0)
                self._write({"opdgeo_state": VERSION, **self.fingerprint})
        except BaseException:
            self._fh.close()
            raise

    def _lock(self) -> None:
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"state file {self.path} is in use by another opdgeo batch (wait for it to "
                "finish, or give this one another --state)"
            ) from None

    def _check_ours(self) -> None:
        """Refuse a non-empty file that opdgeo did not write (before anything truncates it):
        ``--state notes.txt`` must never replace or remove the user's file."""
        self._fh.seek(0)
        head = self._fh.read(len(_MAGIC) + 8)
        if head and not _MAGIC_RE.match(head):
            raise OutputError(
                f"refusing to use {self.path} as the state file: it holds something opdgeo did "
                "not write (give --state another path)"
            )

    def _load(self) -> None:
        self._fh.seek(0)
        raw = self._fh.read()
        cut = raw.rfind(b"\n") + 1
        if cut < len(raw):  # the last line, cut by the interruption: drop it before appending
            self._fh.truncate(cut)
        try:
            lines = raw[:cut].decode("utf-8").split("\n")[:-1]
        except UnicodeDecodeError:
            raise ConfigError(f"{self.path}: not an opdgeo state file (not UTF-8)") from None
        if not lines:
            raise ConfigError(f"{self.path}: empty state file (rerun without --resume)")
        self._check_header(lines[0])
        duplicates = 0
        for n, line in enumerate(lines[1:], 2):
            base, label, record = self._parse(n, line)
            runs = self.done.setdefault((base, label), {})
            if record.tensor in runs:
                duplicates += 1
                continue
            runs[record.tensor] = record
        total = sum(len(r) for r in self.done.values())
        extra = f" ({duplicates} duplicated line(s) ignored)" if duplicates else ""
        self.notes.append(
            f"resuming from {self.path}: {total} (run, tensor) record(s) already done{extra}"
        )

    def _check_header(self, line: str) -> None:
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("opdgeo_state") != VERSION:
            raise ConfigError(
                f"{self.path}:1: not an opdgeo state file of this version "
                "(rerun without --resume to start over)"
            )
        difference = _difference(header, self.fingerprint)
        if difference is not None:
            raise ConfigError(
                f"--resume: {difference} (state file {self.path}); rerun with the same "
                "settings and inputs, or without --resume to start over"
            )

    def _parse(self, n: int, line: str) -> tuple[str, str, TensorRecord]:
        where = f"{self.path}:{n}"
        try:
            entry = json.loads(line)
        except ValueError:
            raise ConfigError(f"{where}: not JSON (a damaged state file)") from None
        try:
            if not isinstance(entry, dict):
                raise TypeError("not an object")
            return str(entry["base"]), str(entry["label"]), TensorRecord.from_json(entry["record"])
        except KeyError as exc:
            raise ConfigError(f"{where}: state record is missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: not an opdgeo state record ({exc})") from None

    def _write(self, entry: dict[str, Any]) -> None:
        self._fh.write((json.dumps(entry) + "\n").encode("utf-8"))
        self._fh.flush()

    def records(self, base: str, label: str) -> list[TensorRecord]:
        """The records a resumed batch already has for run ``label`` against ``base``."""
        found = list(self.done.get((base, label), {}).values())
        self.skipped += len(found)
        return found

    def append(self, base: str, label: str, record: TensorRecord) -> None:
        self._write({"base": base, "label": label, "record": record.to_json()})

    def close(self, finished: bool) -> None:
        """Close (and unlock); a finished batch removes its state file first."""
        if finished:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._fh.close()


def check_state_path(path: Path, inputs: Sequence[str], outputs: Sequence[Path]) -> None:
    """Before any work: the state file is not in a checkpoint folder, its folder exists, and
    it is none of the command's outputs (a finished batch removes its state file, which would
    remove that report too)."""
    check_output_path(path, inputs)
    check_folder(path)
    real = os.path.realpath(path)
    for output in outputs:
        if os.path.realpath(output) == real:
            raise ConfigError(
                f"the state file {path} is also an output of this batch ({output}); a finished "
                "batch removes its state file: give each its own path (--state)"
            )


def _regular_or_missing(path: Path) -> bool:
    """Whether a state file exists at ``path``; refuses anything but a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OutputError(f"cannot use state file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(f"cannot use state file {path}: not a regular file")
    return True
