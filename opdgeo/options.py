"""The CLI's option groups, declared once and spread into each command by :func:`grouped`.

A group is a dataclass whose fields are typer options (:class:`Analysis` - what is compared
and how; :class:`Outputs` - where the report goes; :class:`Sources` - how checkpoints are
reached). A command takes a group as one parameter; :func:`grouped` gives typer one option per
field and hands the command the filled-in dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect as pyinspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from opdgeo import errors as E
from opdgeo.console import MODE, err
from opdgeo.errors import ConfigError

if TYPE_CHECKING:
    from opdgeo.config import Config
    from opdgeo.io import SourceOptions

STDOUT = "-"
"""The output path that means standard output."""
SOURCE_HELP = ".safetensors file, checkpoint directory, or Hub id org/name[@revision]."


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class Tier(StrEnum):
    scan = "scan"
    fast = "fast"
    standard = "standard"
    exact = "exact"


class Scope(StrEnum):
    all = "all"
    linear = "linear"
    attention = "attention"


SUFFIX_FORMATS = {".csv": Format.csv, ".json": Format.json, ".txt": Format.table,
                  ".table": Format.table}  # fmt: skip
"""The report format an ``-o`` suffix implies."""
NO_WRITER = {".md": "Markdown", ".markdown": "Markdown", ".html": "HTML", ".htm": "HTML"}
"""Report suffixes of formats opdgeo does not write: refused, not silently filled with CSV."""


def report_format(fmt: Format | None, output: Path | None, html: bool = True) -> Format | None:
    """The format of the report written to ``output``: the one its suffix implies. A
    ``--format`` contradicting the suffix, or (without ``--format``) the suffix of a format
    opdgeo does not write, is a usage error."""
    suffix = output.suffix.lower() if output is not None else ""
    implied = SUFFIX_FORMATS.get(suffix)
    if implied is not None and fmt is not None and fmt is not implied:
        raise ConfigError(
            f"--format {fmt.value} contradicts -o {output} (a {suffix} file); "
            "drop one of them or change the suffix"
        )
    if fmt is None and suffix in NO_WRITER:
        hint = (
            "; --html PATH writes the HTML report" if html and suffix in (".html", ".htm") else ""
        )
        raise ConfigError(
            f"-o {output}: opdgeo writes no {NO_WRITER[suffix]} report (name it .csv, .json or "
            f".txt, or choose with --format){hint}"
        )
    return fmt or implied


def csv_only(flag: str, path: Path | None) -> None:
    """Refuse a CSV-only output (``--per-tensor``) whose suffix names another format."""
    suffix = path.suffix.lower() if path is not None else ""
    if suffix != ".csv" and (suffix in SUFFIX_FORMATS or suffix in NO_WRITER):
        raise ConfigError(f"{flag} {path} writes CSV, not {suffix}: name it .csv")


# -- option groups (declared once, spread into each command by @grouped) --------------------


@dataclass
class Analysis:
    """What is compared and how (settings; see configs/default.toml)."""

    scope: Annotated[
        Scope | None,
        typer.Option(help="all tensors, linear (2-D weights in blocks) or attention (q/k/v/o)."),
    ] = None
    include: Annotated[str | None, typer.Option(help="Regex: compare only these names.")] = None
    exclude: Annotated[str | None, typer.Option(help="Regex: leave these names out.")] = None
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config (see configs/).")
    ] = None
    exact: Annotated[
        bool, typer.Option("--exact", help="Same as --tier exact (float64 full SVD).")
    ] = False
    tier: Annotated[
        Tier | None,
        typer.Option(
            help="scan: sparsity, norms, max |dW| only (disk speed); fast: + stable rank; "
            "standard: every metric (float64 Gram, top-k eigenvectors); exact: float64 full SVD."
        ),
    ] = None
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache", help="Reuse / skip the on-disk cache of base decompositions."
        ),
    ] = None
    cache_dir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Base cache directory (default ~/.cache/opdgeo)."),
    ] = None
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads for the linear algebra (default: cores).")
    ] = None
    k: Annotated[
        int | None, typer.Option("--k", min=1, help="Principal-angle k (default min(m,n)//8).")
    ] = None
    alpha: Annotated[
        float | None, typer.Option(help="Mask fraction of the overlap metrics (default 0.3).")
    ] = None
    device: Annotated[str | None, typer.Option(help="cpu or cuda for the linear algebra.")] = None

    def load(self) -> Config:
        """The configuration: the --config file, then these options over it."""
        from opdgeo import engine
        from opdgeo.config import load_config

        cfg = load_config(
            self.config,
            scope=self.scope.value if self.scope else None,
            include=regex(self.include, "--include"),
            exclude=regex(self.exclude, "--exclude"),
            angle_k=self.k,
            alpha=self.alpha,
            device=self.device,
            tier="exact" if self.exact else (self.tier.value if self.tier else None),
            cache=self.cache,
            cache_dir=str(self.cache_dir) if self.cache_dir else None,
            threads=self.threads,
        )
        engine.check_device(cfg.settings)
        return cfg


@dataclass
class Outputs:
    """Where the report goes, in which format, and what else is written."""

    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format", "-f", help="table (default on a terminal), csv (when piped) or json."
        ),
    ] = None
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write the report here (atomic)."),
    ] = None
    per_tensor: Annotated[
        Path | None,
        typer.Option("--per-tensor", dir_okay=False, help="Also write per-tensor rows (CSV)."),
    ] = None
    per_group: Annotated[
        Path | None,
        typer.Option("--per-group", dir_okay=False, help="Also write per-module/layer rows (CSV)."),
    ] = None
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", file_okay=False, help="Write figures (PNG + SVG) here; needs matplotlib."
        ),
    ] = None
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", dir_okay=False, help="Write a self-contained HTML report here (to share)."
        ),
    ] = None
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress, notes or warnings on stderr.")
    ] = False

    def files(self) -> list[Path]:
        """The files this command will write (checked before any comparison runs)."""
        paths = [self.output, self.per_tensor, self.per_group, self.html]
        if self.plot is not None:
            paths.append(self.plot / "regime_map.png")
        return [p for p in paths if p is not None and str(p) != STDOUT]

    def settle(self) -> None:
        """Before any work: ``-o -`` means stdout; the format follows ``-o``'s suffix
        (:func:`report_format`); CSV outputs must not be named otherwise; at most one output
        goes to stdout, and never the figures."""
        if self.output is not None and str(self.output) == STDOUT:
            self.output = None
        self.fmt = report_format(self.fmt, self.output)
        csv_only("--per-tensor", self.per_tensor)
        csv_only("--per-group", self.per_group)
        if self.plot is not None and str(self.plot) == STDOUT:
            raise ConfigError("--plot takes a folder for the figure files, not - (stdout)")
        to_stdout = [name for name, path in (("--per-tensor", self.per_tensor),
                     ("--per-group", self.per_group), ("--html", self.html))
                     if path is not None and str(path) == STDOUT]  # fmt: skip
        names = (["the report"] if self.output is None else []) + to_stdout
        if len(names) > 1:
            raise ConfigError(
                f"{' and '.join(names)} would all go to stdout: give -o FILE for the report, "
                "or a file for the others"
            )


@dataclass
class Sources:
    """How checkpoints are reached (Hub access, pickle opt-in)."""

    token: Annotated[
        str | None,
        typer.Option(
            help="Hub token (default: HF_TOKEN or the stored `hf auth login`); never printed."
        ),
    ] = None
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the local Hub cache only (as HF_HUB_OFFLINE=1).")
    ] = False
    keep: Annotated[
        bool,
        typer.Option(
            "--keep/--no-keep",
            help="Keep downloaded shards in the Hub cache, or delete each once read (~2 on disk).",
        ),
    ] = True
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Read pickle weights (.bin/.pt) with torch.load(weights_only=True, mmap=True). "
            "Refused by default: loading a pickle can run code.",
        ),
    ] = False

    def options(self, quiet: bool) -> SourceOptions:
        from opdgeo.io import SourceOptions

        show = not quiet and err().is_terminal
        if not show:
            from huggingface_hub.utils.tqdm import disable_progress_bars

            disable_progress_bars()
        return SourceOptions(
            token=self.token, offline=self.offline, keep=self.keep, progress=show,
            allow_pickle=self.allow_pickle,
        )  # fmt: skip


GROUPS = (Analysis, Outputs, Sources)
F = TypeVar("F", bound=Callable[..., None])
EXIT_CODES = (
    f"Exit codes: {E.EXIT_OK} success; {E.EXIT_ERROR} an error the message explains; "
    f"{E.EXIT_USAGE} usage error; {E.EXIT_NOT_COMPARABLE} checkpoints not comparable; "
    f"{E.EXIT_HUB} Hub access (not found, gated, 401/403); {E.EXIT_OFFLINE} offline and not in "
    f"the Hub cache; {E.EXIT_INTERRUPTED} interrupted. Shell completion: opdgeo "
    "--install-completion (bash, zsh, fish, PowerShell)."
)
"""The ``--help`` epilog, from the codes in :mod:`opdgeo.errors`."""
APP: dict[str, Any] = {
    "name": "opdgeo",
    "help": "Compare LLM checkpoints in parameter space: is a fine-tune SFT-, OPD- or RLVR-like?",
    "epilog": EXIT_CODES,
    "no_args_is_help": True,
    "add_completion": True,
    "pretty_exceptions_enable": False,
    "context_settings": {"help_option_names": ["-h", "--help"], "max_content_width": 80},
}
"""The settings of the ``opdgeo`` typer app (:mod:`opdgeo.cli`)."""
DEBUG = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
LABELS = Annotated[
    list[str] | None,
    typer.Option("--label", help="NAME=PATH: call the TUNED checkpoint PATH NAME (repeatable)."),
]


def labels(values: list[str], tuned: list[str]) -> dict[str, str]:
    """``--label NAME=PATH`` values as {PATH: NAME}; PATH must be one of ``tuned``, as given
    or as another spelling of the same local path (``./runs/a`` for ``runs/a/``)."""
    from opdgeo.study import same_checkpoint

    out: dict[str, str] = {}
    for value in values:
        name, sep, given = value.partition("=")
        if not sep or not name or not given:
            raise ConfigError(f"--label {value!r}: expected NAME=PATH")
        path = given if given in tuned else next(
            (t for t in tuned if same_checkpoint(t, given)), None
        )  # fmt: skip
        if path is None:
            raise ConfigError(f"--label {value!r}: {given} is not one of the TUNED checkpoints")
        if path in out or name in out.values():
            raise ConfigError(f"--label {value!r}: that checkpoint or name is labelled twice")
        out[path] = name
    return out


def _flags_without_value(option_class: Any) -> None:
    """Show boolean flags in --help as flags, without the ``<bool>`` value column typer
    gives them (typer 0.29 prints a type for every option)."""
    shown = getattr(option_class, "display_type_rich", None)
    if shown is None or getattr(shown, "opdgeo_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return typing.cast("str | None", shown(self, ctx))

    display_type_rich.opdgeo_flags = True  # type: ignore[attr-defined]
    option_class.display_type_rich = display_type_rich


_flags_without_value(getattr(typer.core, "TyperOption", None))


def grouped(fn: F) -> F:
    """Spread each option-group parameter of ``fn`` into its fields (one option each) for
    typer, and gather them back into the group's dataclass when the command runs; add
    ``--debug`` (so that it is accepted after the command too)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params: list[pyinspect.Parameter] = []
    spread: list[pyinspect.Parameter] = []
    groups: dict[str, tuple[type[Any], list[str]]] = {}
    for name, param in pyinspect.signature(fn).parameters.items():
        annotation = hints[name]
        if annotation in GROUPS:
            field_hints = typing.get_type_hints(annotation, include_extras=True)
            fields = dataclasses.fields(annotation)
            groups[name] = (annotation, [f.name for f in fields])
            spread += [
                pyinspect.Parameter(
                    f.name,
                    pyinspect.Parameter.KEYWORD_ONLY,
                    default=f.default,
                    annotation=field_hints[f.name],
                )  # fmt: skip
                for f in fields
            ]
        else:
            params.append(param.replace(annotation=annotation))
    params += spread  # the command's own parameters first, then the groups' options
    own_debug = any(p.name == "debug" for p in params)
    if not own_debug:
        params.append(pyinspect.Parameter("debug", pyinspect.Parameter.KEYWORD_ONLY,
                                          default=False, annotation=DEBUG))  # fmt: skip

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        if not own_debug and kwargs.pop("debug"):
            MODE.debug = True
        for name, (cls, names) in groups.items():
            kwargs[name] = cls(**{n: kwargs.pop(n) for n in names})
        fn(**kwargs)

    command.__signature__ = pyinspect.Signature(params)  # type: ignore[attr-defined]
    return typing.cast(F, command)


def regex(pattern: str | None, option: str) -> str | None:
    """``pattern`` if it compiles, else a usage error naming ``option``."""
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{option}: invalid regular expression {pattern!r}: {exc}") from None
    return pattern
