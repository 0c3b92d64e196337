"""The CLI's terminal side: stderr messages, progress bars, plans, notes, and writing reports.

stdout carries data only (table, CSV or JSON); everything else goes to stderr through
:func:`err`. Strings from files and paths are made terminal-safe (:mod:`opdgeo.text`).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from opdgeo.errors import EXIT_INTERRUPTED, OpdgeoError
from opdgeo.text import markup_safe
from opdgeo.version import __version__

if TYPE_CHECKING:
    from opdgeo.config import Config, Settings
    from opdgeo.io import Checkpoint
    from opdgeo.lineage.records import LineageResult
    from opdgeo.options import Outputs
    from opdgeo.pairing import Plan
    from opdgeo.report import RunResult
    from opdgeo.state import StateFile


@dataclass
class Mode:
    """Process-wide switches of the CLI (set by the root callback and each command)."""

    debug: bool = False
    quiet: bool = False


MODE = Mode()


def err() -> Console:
    """A console on stderr (no highlighting, long lines kept whole)."""
    return Console(stderr=True, soft_wrap=True, highlight=False)


def note(message: str) -> None:
    """A ``note:`` line (hidden by -q); ``message`` is rich markup, already escaped."""
    if not MODE.quiet:
        err().print(f"[yellow]note:[/] {message}")


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """opdgeo's warnings as one ``warning:`` line on stderr (hidden by -q); other libraries'
    warnings only with --debug."""
    from opdgeo.errors import OpdgeoWarning

    if issubclass(category, OpdgeoWarning):
        if not MODE.quiet:
            err().print(f"[yellow]warning:[/] {markup_safe(message)}")
    elif MODE.debug:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr (only on a terminal, never with -q)."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = err()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=MODE.quiet or not console.is_terminal,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with bar:
        task = bar.add_task(markup_safe(label), total=total if total > 0 else None)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def resumable(
    path: Path | None, resume: bool, settings: Settings, inputs: Sequence[str]
) -> Iterator[StateFile | None]:
    """The state file of a batch (None without one): locked, checked against ``settings`` and
    ``inputs`` on ``resume``, removed when the block completes, kept (and named in the
    Ctrl-C message, with ``--resume``) when it does not."""
    if path is None:
        yield None
        return
    from opdgeo.state import StateFile, fingerprint

    log = StateFile(path, resume, fingerprint(settings, inputs))
    for line in log.notes:
        note(markup_safe(line))
    try:
        yield log
    except KeyboardInterrupt:
        log.close(finished=False)
        raise KeyboardInterrupt(
            f"interrupted: no report was written; progress is kept in {markup_safe(path)}: "
            "rerun the same command with --resume to continue"
        ) from None
    except BaseException:
        log.close(finished=False)
        raise
    log.close(finished=True)


def print_plan(base: Checkpoint, tuned: list[Checkpoint], plans: list[Plan]) -> None:
    """Before any download: what will be compared, skipped and fetched."""
    if MODE.quiet:
        return
    console = err()
    remote = [c for c in (base, *tuned) if c.fetcher is not None]
    for ckpt, plan in zip(tuned, plans, strict=True):
        if remote or plan.skipped:
            console.print(
                f"plan: {markup_safe(ckpt.label)}: {len(plan.pairs)} tensor pairs to compare, "
                f"{len(plan.skipped)} skipped"
            )
    for ckpt in remote:
        total, cached = ckpt.download_bytes()
        console.print(
            f"plan: {markup_safe(ckpt.label)}: {len(ckpt.files)} shard(s), "
            f"{total / 1e9:.2f} GB of weights, {cached / 1e9:.2f} GB already cached, "
            f"{(total - cached) / 1e9:.2f} GB to download"
        )


def print_notes(runs: Sequence[RunResult]) -> None:
    """Per run: tensors not compared, and non-finite entries."""
    for run in runs:
        label = markup_safe(run.summary["run"])
        skipped = run.skipped
        if skipped:
            note(
                f"{label}: {len(skipped)} tensor(s) not compared "
                f"(first: {markup_safe(skipped[0]['tensor'])}: "
                f"{markup_safe(skipped[0]['reason'])})"
            )
        if run.summary.get("n_nonfinite") and not MODE.quiet:
            err().print(
                f"[yellow]warning:[/] {label}: {run.summary['n_nonfinite']} NaN/Inf "
                "entries; spectral metrics skipped for those tensors"
            )


def redacted(argv: Sequence[str]) -> list[str]:
    """The command line with any token value replaced by REDACTED."""
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append("REDACTED")
            hide = False
        elif arg == "--token":
            out.append(arg)
            hide = True
        elif arg.startswith("--token="):
            out.append("--token=REDACTED")
        else:
            out.append(arg)
    return out


def command_line() -> str:
    """This invocation, shell-quoted, token redacted (the JSON ``command`` field)."""
    import shlex

    return shlex.join(["opdgeo", *redacted(sys.argv[1:])])


def settings_line(config: Config) -> str:
    s = config.settings
    return (
        f"scope={s.scope} alpha={s.alpha} atol={s.atol:g} tier={s.tier} "
        f"method={s.spectral_method} device={s.device}"
    )


def emit(
    runs: Sequence[RunResult],
    config: Config,
    fmt: str | None,
    output: Path | None,
    per_tensor: Path | None,
    per_group: Path | None,
    trajectory: bool = False,
) -> None:
    """Write the report (stdout or ``-o``) and the optional per-tensor / per-group CSVs."""
    from opdgeo import outputs, render, report

    chosen = fmt or ("table" if sys.stdout.isatty() and output is None else "csv")
    if chosen == "table":
        text = _table_text(runs, settings_line(config), output is not None, trajectory)
    elif chosen == "csv":
        text = render.csv_text(report.summary_frame(runs))
    else:
        text = render.json_text(report.document(runs, config, command_line()))
    if per_tensor:
        wrote(outputs.write_output(per_tensor, render.csv_text(report.tensors_frame(runs))))
    if per_group:
        wrote(outputs.write_output(per_group, render.csv_text(report.groups_frame(runs))))
    if output:
        wrote(outputs.write_output(output, text))
    elif text:
        outputs.write_descriptor(outputs.STDOUT_FD, text.encode("utf-8"))


def wrote(path: Path) -> None:
    """``wrote PATH`` on stderr (not for stdout, not with -q)."""
    if not MODE.quiet and str(path) != "-":
        err().print(f"wrote {markup_safe(path)}")


def deliver(
    runs: Sequence[RunResult],
    config: Config,
    out: Outputs,
    inputs: list[str],
    trajectory: bool = False,
) -> None:
    """Everything compare / batch / trajectory write: the report, the per-tensor and
    per-group CSVs, the HTML report and the figures."""
    emit(runs, config, out.fmt, out.output, out.per_tensor, out.per_group, trajectory)
    write_html(runs, config, out.html)
    write_plots(runs, out.plot, inputs, trajectory)


def write_html(runs: Sequence[RunResult], config: Config, path: Path | None) -> None:
    """The self-contained HTML report (:mod:`opdgeo.html`) into ``path`` (``-``: stdout)."""
    if path is None:
        return
    import dataclasses

    from opdgeo import outputs, report
    from opdgeo.html import html_report

    thresholds = {f.name: getattr(config.thresholds, f.name)
                  for f in dataclasses.fields(config.thresholds)}  # fmt: skip
    page = html_report(runs, settings=report.settings_dict(config), thresholds=thresholds,
                       command=command_line(), version=__version__)  # fmt: skip
    wrote(outputs.write_output(path, page))


def _table_text(
    runs: Sequence[RunResult], line: str, to_file: bool, trajectory: bool = False
) -> str:
    from opdgeo import render

    def draw(console: Console) -> None:
        render.render_table(console, runs, line)
        if trajectory:
            render.render_trajectory(console, runs)

    if not to_file and sys.stdout.isatty():
        draw(Console())
        return ""
    console = Console(width=160, color_system=None, force_terminal=False)
    with console.capture() as capture:
        draw(console)
    return capture.get()


def write_plots(
    runs: Sequence[RunResult], folder: Path | None, inputs: list[str], trajectory: bool = False
) -> None:
    """Figures (PNG + SVG) into ``folder``, never inside a checkpoint folder."""
    if folder is None:
        return
    from opdgeo import outputs, plots

    outputs.check_output_path(folder / "regime_map.png", inputs)
    paths = plots.write_plots(runs, folder, trajectory)
    if not MODE.quiet:
        err().print(f"wrote {len(paths)} figure files to {markup_safe(folder)}/")


def emit_lineage(
    result: LineageResult,
    fmt: str | None,
    output: Path | None,
    matrix: Path | None,
    plot: Path | None,
) -> None:
    """Write a lineage report (stdout or ``-o``), its all-pairs matrix and its heatmap."""
    from opdgeo import outputs, render
    from opdgeo.lineage.output import lineage_frame, lineage_json, lineage_matrix, render_lineage

    chosen = fmt or ("table" if sys.stdout.isatty() and output is None else "csv")
    text = ""
    if chosen == "table" and output is None:
        render_lineage(Console(), result)
    elif chosen == "table":
        capture_console = Console(width=160, color_system=None, force_terminal=False)
        with capture_console.capture() as captured:
            render_lineage(capture_console, result)
        text = captured.get()
    elif chosen == "csv":
        text = render.csv_text(lineage_frame(result))
    else:
        meta = {"opdgeo_version": __version__, "command": command_line()}
        text = render.json_text(lineage_json(result, meta))
    if matrix is not None:
        outputs.write_output(matrix, lineage_matrix(result).to_csv(index_label="checkpoint"))
    if plot is not None:
        from opdgeo.lineage.plot import lineage_heatmap

        lineage_heatmap(result, plot)
    if output is not None:
        outputs.write_output(output, text)
    elif text:
        outputs.write_descriptor(outputs.STDOUT_FD, text.encode("utf-8"))


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The one error-to-exit-code table: :class:`OpdgeoError` -> its ``exit_code`` (one
    ``error:`` line), Ctrl-C -> 130; anything else is handled by :func:`opdgeo.cli.main`."""
    try:
        yield
    except OpdgeoError as exc:
        if MODE.debug:
            raise
        err().print(f"[red]error:[/] {markup_safe(exc)}", markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # a message (already escaped) says what was kept
        err().print(str(exc) or "interrupted: no report was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None
