"""Reading small structured files from untrusted places: regular files only, bounded nesting.

Checkpoint folders, configs and state files come from strangers. :func:`read_regular` opens
only regular files (``stat`` first, then a non-blocking open, then ``fstat`` again), so a FIFO
named ``config.json`` or a device never blocks or streams forever. :func:`json_loads` and
:func:`toml_loads` bound the nesting depth *before* parsing (a deep document would otherwise
exhaust the interpreter's recursion limit) and the JSON one can refuse duplicate keys.
Errors are plain ``OSError`` / ``ValueError`` with a one-line reason; callers wrap them in
their own :class:`~opdgeo.errors.OpdgeoError` naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of arrays/objects accepted (real headers, indexes and configs use < 10)."""

# Strings (and TOML comments) are cut out before brackets are counted. Every string that
# opens matches, up to its closing quote or the end (of the line, for TOML basic strings), so
# the scan is linear even on unterminated strings full of escaped quotes (which make the
# textbook pattern quadratic: minutes for 100 kB).
_JSON_SKIP = re.compile(rb'"(?:[^"\\]|\\[\s\S]|\\\Z)*(?:"|\Z)')
_TOML_SKIP = re.compile(
    rb'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\[^\n]|\\(?=\n|\Z))*(?:"|(?=\n)|\Z)'
    rb"|'[^'\n]*'|#[^\n]*"
)
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


class TooDeepError(ValueError):
    """A document nests arrays/objects deeper than the limit (a recursion bomb)."""


def _not_regular(mode: int) -> OSError:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    return OSError(errno.EINVAL, f"not a regular file ({kind})")


def read_regular(path: Path | str, limit: int | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file (symlinks to one are followed).

    Raises ``OSError`` (``strerror`` says why) for a missing, unreadable or special file, or
    one larger than ``limit`` bytes."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            raise _not_regular(st.st_mode)
        data = fh.read() if limit is None else fh.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise OSError(errno.EFBIG, f"file is over the {limit}-byte limit")
    return data


def nesting_depth(raw: bytes, skip: re.Pattern[bytes] = _JSON_SKIP) -> int:
    """Deepest ``[``/``{`` nesting in ``raw`` outside strings (and comments, for TOML)."""
    import numpy as np

    text = skip.sub(b"", raw)
    codes = np.frombuffer(text, dtype=np.uint8)
    step = np.zeros(codes.shape, dtype=np.int64)
    step[(codes == ord("[")) | (codes == ord("{"))] = 1
    step[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(step).max()) if step.size else 0


def _check_depth(raw: bytes, skip: re.Pattern[bytes], max_depth: int) -> None:
    depth = nesting_depth(raw, skip)
    if depth > max_depth:
        raise TooDeepError(f"nested {depth} levels deep (the limit is {max_depth})")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def json_loads(raw: bytes | str, max_depth: int = MAX_DEPTH, unique: bool = False) -> Any:
    """Parse JSON after bounding its nesting; ``unique`` refuses duplicate object keys.

    ValueError (with a one-line reason) for anything malformed, too deep or duplicated."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    _check_depth(data, _JSON_SKIP, max_depth)
    try:
        text = data.decode("utf-8")
        if unique:
            return json.loads(text, object_pairs_hook=_unique)
        return json.loads(text)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise TooDeepError("nested too deeply") from None


def toml_loads(raw: bytes, max_depth: int = MAX_DEPTH // 2) -> dict[str, Any]:
    """Parse TOML after bounding its nesting (arrays and inline tables)."""
    _check_depth(raw, _TOML_SKIP, max_depth)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None
    except RecursionError:
        raise TooDeepError("nested too deeply") from None
