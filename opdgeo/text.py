"""Text that came from files or paths, made safe for a terminal.

Tensor names, folder names and metadata are data: they may hold rich markup (``[bold]``,
``[/]``), ANSI escape sequences or newlines. Before such a string reaches rich or a terminal,
:func:`printable` replaces control characters with visible escapes (``\\x1b``, ``\\n``) and
:func:`markup_safe` also escapes rich markup. CSV and JSON output keep the exact bytes.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``text`` with every control character (C0, DEL, C1, line/paragraph separators and
    bidirectional overrides) shown as an escape, so it prints on one line as it is."""
    return _CONTROL.sub(
        lambda m: _NAMED.get(
            m.group(),
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
        ),
        str(text),
    )


def markup_safe(text: object) -> str:
    """:func:`printable`, with rich markup escaped too (for strings inside markup)."""
    from rich.markup import escape

    return escape(printable(text))
