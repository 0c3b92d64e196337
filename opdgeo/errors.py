"""Typed, user-facing errors. Each carries the exit code the CLI returns (see README, "Exit codes").

Messages are one line, name the object at fault and say what to do next; the CLI prints them
as ``error: <message>`` on stderr without a traceback (``--debug`` shows one).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_COMPARABLE = 3
EXIT_HUB = 4
EXIT_OFFLINE = 5
EXIT_INTERRUPTED = 130


class OpdgeoError(Exception):
    """Base class: an error whose message is meant for the user."""

    exit_code: int = EXIT_ERROR


class SourceError(OpdgeoError):
    """A checkpoint path is missing, unreadable, or not a safetensors checkpoint."""


class FormatError(SourceError):
    """A safetensors file is malformed (bad header, offsets, dtype, truncated data)."""


class AdapterError(FormatError):
    """A LoRA adapter that cannot be composed (:mod:`opdgeo.io.peft`: no config, r not
    matching its tensors, a PEFT method or variant not supported); one line naming the module."""


class QuantizationError(FormatError):
    """A quantized checkpoint that cannot be decoded as asked (:mod:`opdgeo.io.quant`: bad
    scale shape, unknown method); one line naming the tensor or the method."""


class HubAccessError(OpdgeoError):
    """A Hub repo, revision or file cannot be reached: missing, gated, private or forbidden."""

    exit_code = EXIT_HUB


class OfflineMissError(OpdgeoError):
    """Offline mode is on and what is needed is not in the local Hub cache."""

    exit_code = EXIT_OFFLINE


class MemoryLimitError(OpdgeoError):
    """A tensor does not fit in the memory this process may use (checked before allocating)."""


class OutputError(OpdgeoError):
    """A report, figure or state file cannot (or must not) be written where asked."""


class ConfigError(OpdgeoError):
    """A configuration file or option value is invalid."""

    exit_code = EXIT_USAGE


class NotComparableError(OpdgeoError):
    """The two checkpoints share no tensor that can be compared."""

    exit_code = EXIT_NOT_COMPARABLE


class OpdgeoWarning(UserWarning):
    """Something the user should know that does not stop the run (a cache that cannot be
    written, a comparison of a checkpoint with itself). The CLI prints each as one
    ``warning: ...`` line on stderr; library users see them through :mod:`warnings`."""
