"""The ``opdgeo`` command line: commands only, over :mod:`opdgeo.api`.

stdout carries data only (table, CSV or JSON); progress, plans, notes and errors go to
stderr (:mod:`opdgeo.console`). Options shared by several commands are declared once, in
option groups (:class:`Analysis`, :class:`Outputs`, :class:`Sources`) that :func:`grouped`
spreads into each command's signature (:mod:`opdgeo.options`). Errors map to exit codes in one place
(:func:`opdgeo.console.user_errors`; codes in :mod:`opdgeo.errors`).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from opdgeo import options
from opdgeo.cli_config import config_app
from opdgeo.console import MODE, err, show_warning, user_errors
from opdgeo.errors import EXIT_ERROR, ConfigError
from opdgeo.options import SOURCE_HELP, Analysis, Format, Outputs, Sources, grouped, regex
from opdgeo.text import markup_safe, printable
from opdgeo.version import __version__

app = typer.Typer(**options.APP)
app.add_typer(config_app)
MODE.debug = os.environ.get("OPDGEO_DEBUG", "") not in ("", "0")


# -- root -----------------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        print(f"opdgeo {__version__}")
        raise typer.Exit()


@app.callback()
@grouped
def _root(
    debug: options.DEBUG = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """opdgeo: parameter-space diagnostics of post-training (SFT / OPD / RLVR)."""
    if debug:
        MODE.debug = True
    warnings.showwarning = show_warning


def _start(out: Outputs, inputs: list[str]) -> None:
    """Before any work: quiet mode, and refuse outputs that would land in a checkpoint."""
    from opdgeo.outputs import check_folder, check_output_path

    MODE.quiet = out.quiet
    out.settle()
    for path in out.files():
        check_output_path(path, inputs)
        check_folder(path.parent if out.plot and path.parent == out.plot else path)


# -- commands -------------------------------------------------------------------------------


@app.command()
@grouped
def compare(
    base: Annotated[str, typer.Argument(help=f"Base checkpoint: {SOURCE_HELP}")],
    tuned: Annotated[list[str], typer.Argument(help="One or more fine-tuned checkpoints.")],
    analysis: Analysis,
    out: Outputs,
    src: Sources,
    label: options.LABELS = None,
) -> None:
    """Compare each TUNED checkpoint against BASE, tensor by tensor, and name its regime."""
    from opdgeo import api, console

    with user_errors():
        cfg = analysis.load()
        _start(out, [base, *tuned])
        runs = api.compare(
            base, tuned, config=cfg, sources=src.options(out.quiet), on_plan=console.print_plan,
            track=console.progress, labels=options.labels(label or [], tuned),
        )  # fmt: skip
        console.print_notes(runs)
        console.deliver(runs, cfg, out, [base, *tuned])


@app.command()
@grouped
def batch(
    analysis: Analysis,
    out: Outputs,
    src: Sources,
    base: Annotated[str | None, typer.Argument(help=f"Base checkpoint: {SOURCE_HELP}")] = None,
    directory: Annotated[
        Path | None, typer.Argument(help="Directory of runs / step checkpoints.")
    ] = None,
    study: Annotated[
        Path | None,
        typer.Option(help="TOML study file: base, runs with labels and per-run origins."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted batch from its state file.")
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="State file (default: OUTPUT.state.jsonl with -o)."),
    ] = None,
) -> None:
    """Compare every checkpoint in DIRECTORY (or a --study file) against BASE, in one pass."""
    from opdgeo import api, console
    from opdgeo import study as studies
    from opdgeo.state import check_state_path

    with user_errors():
        cfg = analysis.load()
        if study is not None:
            base_spec, runs = studies.load_study(study)
        elif base is None or directory is None:
            raise ConfigError("give BASE and DIRECTORY, or --study FILE")
        else:
            base_spec, runs = base, studies.discover(directory)
        inputs = [base_spec, *(r.path for r in runs), *(r.origin for r in runs if r.origin)]
        _start(out, inputs)
        runs = api.without_base(base_spec, runs)  # counted below; after _start (-q hides it)
        output = out.output
        state_path = state or (output.with_name(output.name + ".state.jsonl") if output else None)
        if state_path is not None:
            check_state_path(state_path, inputs, out.files())
        if resume and state_path is None:
            raise ConfigError("--resume needs --state PATH (or -o, whose state file it uses)")
        with console.resumable(state_path, resume, cfg.settings, inputs) as log:
            if not out.quiet:
                err().print(f"batch: {len(runs)} run(s) against {markup_safe(base_spec)}")
            results = api.batch(
                base_spec, runs, config=cfg, sources=src.options(out.quiet), state=log,
                on_plan=console.print_plan, track=console.progress,
            )  # fmt: skip
            console.print_notes(results)
            console.deliver(results, cfg, out, inputs)


@app.command()
@grouped
def trajectory(
    base: Annotated[str, typer.Argument(help=f"Origin checkpoint W0: {SOURCE_HELP}")],
    checkpoints: Annotated[
        list[str],
        typer.Argument(help="Checkpoints in training order, or one directory of step checkpoints."),
    ],
    analysis: Analysis,
    out: Outputs,
    src: Sources,
    matrices: Annotated[
        str | None,
        typer.Option(help="Regex of the trajectory matrices (default: attention q/k/v/o)."),
    ] = None,
    sim_k: Annotated[int, typer.Option("--sim-k", min=1, help="K of Sim_K (OPDG: 16).")] = 16,
    hill_k: Annotated[int, typer.Option(min=2, help="Top-k of the Hill estimator.")] = 10,
) -> None:
    """Follow one run's checkpoints from BASE: cumulative updates and subspace locking."""
    from opdgeo import api, console

    with user_errors():
        cfg = analysis.load()
        regex(matrices, "--matrices")
        _start(out, [base, *checkpoints])
        result = api.trajectory(
            base, checkpoints, matrices=matrices, sim_k=sim_k, hill_k=hill_k, config=cfg,
            sources=src.options(out.quiet), on_plan=console.print_plan, track=console.progress,
        )  # fmt: skip
        if not out.quiet:
            err().print(f"locking: {result.locking}")
            for fact in result.facts:
                err().print(f"  - {fact}")
        console.deliver(result.runs, cfg, out, [base, *checkpoints], trajectory=True)


@app.command()
@grouped
def inspect(
    source: Annotated[str, typer.Argument(help=f"Checkpoint: {SOURCE_HELP}")],
    src: Sources,
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format", "-f", help="table (default on a terminal), csv (when piped) or json."
        ),
    ] = None,
) -> None:
    """List tensors, dtypes, shapes and bytes from the headers only (no weights are read)."""
    from rich.console import Console

    from opdgeo import api, render

    with user_errors():
        info = api.inspect(source, sources=src.options(quiet=True))
        chosen = fmt or (Format.table if sys.stdout.isatty() else Format.csv)
        if chosen is Format.csv:
            sys.stdout.write(render.csv_text(info.frame))
        elif chosen is Format.json:
            sys.stdout.write(render.json_text(info.document))
        else:
            render.render_inspect(Console(), info)


@app.command()
@grouped
def lineage(
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            help="Two or more checkpoints (paths or Hub ids), or one folder of checkpoints: "
            "every pair is tested."
        ),
    ],
    src: Sources,
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format", "-f", help="table (default on a terminal), csv (when piped) or json."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write the report here (atomic)."),
    ] = None,
    matrix: Annotated[
        Path | None,
        typer.Option(dir_okay=False, help="Also write the all-pairs -log10 p matrix (CSV)."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Write a clustered heatmap (PNG + SVG) here."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes.")] = False,
) -> None:
    """Is B derived from A? A calibrated answer from the weights alone, for every pair."""
    from opdgeo import console, outputs
    from opdgeo import study as studies
    from opdgeo.lineage import lineage as run_lineage

    MODE.quiet = quiet
    with user_errors():
        fmt = options.report_format(fmt, output, html=False)
        options.csv_only("--matrix", matrix)
        specs = list(checkpoints)
        only = Path(specs[0])
        if len(specs) == 1 and only.is_dir() and not studies.is_checkpoint_dir(only):
            specs = [r.path for r in studies.discover(only)]
        for path in (output, matrix, plot and plot / "lineage.png"):
            if path is not None:
                outputs.check_output_path(path, specs)

        def say(message: str) -> None:  # one line per pair (the block-by-block steps are noise)
            if not quiet and " vs " in message:
                err().print(f"lineage: {markup_safe(message)}")

        result = run_lineage(specs, sources=src.options(quiet), progress=say)
        for (i, j), why in sorted(result.errors.items()):
            console.note(
                f"{markup_safe(result.labels[i])} vs {markup_safe(result.labels[j])}: "
                f"not compared ({markup_safe(why)})"
            )
        console.emit_lineage(result, fmt, output, matrix, plot)


@app.command()
@grouped
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoints.")] = Path(
        "demo"
    ),
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format", "-f", help="table (default on a terminal), csv (when piped) or json."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic family.")] = 0,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", file_okay=False, help="Write figures (PNG + SVG) here; needs matplotlib."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes.")] = False,
) -> None:
    """Generate a small synthetic base + SFT/OPD/RLVR-like family and compare it."""
    from opdgeo import api, console
    from opdgeo.config import load_config
    from opdgeo.io import SourceOptions
    from opdgeo.synthetic import write_family

    MODE.quiet = quiet
    with user_errors():
        paths = write_family(directory, seed=seed)
        if not quiet:
            err().print(
                f"wrote synthetic checkpoints to {markup_safe(directory)}/ (base, sft, opd, rlvr)"
            )
        tuned = [str(paths[k]) for k in ("sft", "opd", "rlvr")]
        cfg = load_config()
        runs = api.compare(
            str(paths["base"]), tuned, config=cfg,
            sources=SourceOptions(offline=True, progress=False), on_plan=console.print_plan,
            track=console.progress,
        )  # fmt: skip
        console.print_notes(runs)
        console.emit(runs, cfg, fmt, None, None, None)
        console.write_plots(runs, plot, [str(p) for p in paths.values()])


@app.command("cache")
@grouped
def cache_command(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete every entry opdgeo wrote in the cache.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --clear: list what would be removed.")
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Base cache directory (default ~/.cache/opdgeo)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config (see configs/).")
    ] = None,
) -> None:
    """Show where the base cache is and its size; --clear removes only what opdgeo wrote."""
    from opdgeo.cache import BaseCache, default_dir
    from opdgeo.config import load_config

    with user_errors():
        configured = load_config(config).settings.cache_dir if config else ""
        store = BaseCache(cache_dir or (Path(configured) if configured else default_dir()))
        if clear:
            removed = store.clear(dry_run=dry_run)
            if dry_run:
                for path in removed:
                    print(printable(path))
                err().print(f"would remove {len(removed)} file(s) from {markup_safe(store.root)}")
                return
            err().print(
                f"removed {len(removed)} cached base matrices from {markup_safe(store.root)}"
            )
        found = store.scan()
        if found.foreign:
            err().print(
                f"[yellow]warning:[/] {markup_safe(store.root)} also holds "
                f"{len(found.foreign)} item(s) opdgeo did not write "
                f"(first: {markup_safe(found.foreign[0])})"
            )
        print(f"path\t{store.root}\nentries\t{len(found.entries)}\nbytes\t{found.nbytes}")


def main() -> None:
    """Console-script entry point. typer maps usage errors to exit 2 and Ctrl-C to 130; any
    other failure is one line (a traceback only with --debug)."""
    try:
        app()
    except Exception as exc:
        if MODE.debug:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {printable(exc)} "
            "(rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)
