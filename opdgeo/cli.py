"""The ``opdgeo`` command line: a thin layer over :mod:`opdgeo.report`.

stdout carries data only (table, CSV or JSON); progress, warnings and errors go to stderr.
Exit codes: 0 ok, 1 error, 2 usage, 3 not comparable, 130 interrupted (see README).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from opdgeo import __version__
from opdgeo.errors import EXIT_ERROR, EXIT_INTERRUPTED, OpdgeoError

app = typer.Typer(
    name="opdgeo",
    help="Compare LLM checkpoints in parameter space: is a fine-tune SFT-, OPD- or RLVR-like?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": os.environ.get("OPDGEO_DEBUG", "") not in ("", "0")}


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class Scope(StrEnum):
    all = "all"
    linear = "linear"
    attention = "attention"


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn OpdgeoError into one 'error: ...' line on stderr and its exit code."""
    try:
        yield
    except OpdgeoError as exc:
        if _state["debug"]:
            raise
        _err().print(f"[red]error:[/] {exc}", markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err().print("interrupted: no report was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _version(value: bool) -> None:
    if value:
        print(f"opdgeo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """opdgeo: parameter-space diagnostics of post-training (SFT / OPD / RLVR)."""
    if debug:
        _state["debug"] = True


@app.command()
def compare(
    base: Annotated[str, typer.Argument(help="Base checkpoint: .safetensors file or directory.")],
    tuned: Annotated[list[str], typer.Argument(help="One or more fine-tuned checkpoints.")],
    fmt: Annotated[
        Format | None,
        typer.Option(
            "--format",
            "-f",
            help="table (default on a terminal), csv (default when piped) or json.",
        ),
    ] = None,  # noqa: E501
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="Write the report here instead of stdout (atomic).",
        ),
    ] = None,  # noqa: E501
    per_tensor: Annotated[
        Path | None,
        typer.Option("--per-tensor", dir_okay=False, help="Also write per-tensor rows (CSV)."),
    ] = None,  # noqa: E501
    per_group: Annotated[
        Path | None,
        typer.Option(
            "--per-group",
            dir_okay=False,
            help="Also write per-module-type and per-layer rows (CSV).",
        ),
    ] = None,  # noqa: E501
    scope: Annotated[
        Scope | None,
        typer.Option(
            help="Tensors to compare: all, linear (2-D weights in blocks) or attention (q/k/v/o)."
        ),
    ] = None,  # noqa: E501
    include: Annotated[
        str | None, typer.Option(help="Regex: compare only matching tensor names.")
    ] = None,
    exclude: Annotated[
        str | None, typer.Option(help="Regex: leave out matching tensor names.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config (see configs/).")
    ] = None,
    exact: Annotated[
        bool,
        typer.Option("--exact", help="Float64 full SVD instead of float64 Gram + eigh (slow)."),
    ] = False,  # noqa: E501
    k: Annotated[
        int | None,
        typer.Option(
            "--k", min=1, help="Top-k for principal angles (default min(m,n)//8, max 512)."
        ),
    ] = None,  # noqa: E501
    alpha: Annotated[
        float | None,
        typer.Option(
            "--alpha", help="Mask fraction for principal / low-magnitude overlap (default 0.3)."
        ),
    ] = None,  # noqa: E501
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda for the linear algebra.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")
    ] = False,
) -> None:
    """Compare each TUNED checkpoint against BASE, tensor by tensor, and name its regime."""
    from opdgeo import engine, render, report
    from opdgeo.config import load_config
    from opdgeo.pairing import plan_pairs
    from opdgeo.sources import open_checkpoint

    with user_errors():
        cfg = load_config(
            config,
            scope=scope.value if scope else None,
            include=include,
            exclude=exclude,
            angle_k=k,
            alpha=alpha,
            device=device,
            spectral_method="svd" if exact else None,
        )
        _check_regex(cfg.settings.include, "--include")
        _check_regex(cfg.settings.exclude, "--exclude")
        engine.check_device(cfg.settings)
        inputs = [base, *tuned]
        targets = [
            render.check_output_path(p, inputs) for p in (output, per_tensor, per_group) if p
        ]
        del targets
        err = _err()
        base_ckpt = open_checkpoint(base)
        runs = []
        for spec in tuned:
            tuned_ckpt = open_checkpoint(spec)
            plan = plan_pairs(base_ckpt, tuned_ckpt, cfg.settings)
            records = engine.compare(base_ckpt, tuned_ckpt, plan, cfg.settings)
            with _progress(
                err, quiet, f"{spec}", plan.n_params + sum(p.numel for p in plan.pairs if p.tied)
            ) as advance:  # noqa: E501
                runs.append(report.build_run(_tracked(records, advance), cfg))
            tuned_ckpt.close()
            if not quiet:
                _notes(err, runs[-1])
        base_ckpt.close()
        report.add_relative_order(runs)

        chosen = fmt or (Format.table if sys.stdout.isatty() and output is None else Format.csv)
        settings_line = (
            f"scope={cfg.settings.scope} alpha={cfg.settings.alpha} atol={cfg.settings.atol:g} "
            f"method={cfg.settings.spectral_method} device={cfg.settings.device}"
        )
        if chosen is Format.table:
            text = _table_text(runs, settings_line, to_file=output is not None)
        elif chosen is Format.csv:
            text = render.csv_text(report.summary_frame(runs))
        else:
            meta = {
                "schema_version": 1,
                "opdgeo_version": __version__,
                "command": shlex.join(["opdgeo", *sys.argv[1:]]),
                "settings": dict(vars(cfg.settings)),
                "thresholds": dict(vars(cfg.thresholds)),
            }
            text = render.json_text(report.to_json(runs, meta))
        if per_tensor:
            render.write_atomic(per_tensor, render.csv_text(report.tensors_frame(runs)))
        if per_group:
            render.write_atomic(per_group, render.csv_text(report.groups_frame(runs)))
        if output:
            render.write_atomic(output, text)
        elif text:
            sys.stdout.write(text)
            sys.stdout.flush()


def _table_text(runs: list[Any], settings_line: str, to_file: bool) -> str:
    from opdgeo import render

    if not to_file and sys.stdout.isatty():
        render.render_table(Console(), runs, settings_line)
        return ""
    console = Console(file=None, record=True, width=160, color_system=None, force_terminal=False)
    with console.capture() as capture:
        render.render_table(console, runs, settings_line)
    return capture.get()


def _check_regex(pattern: str | None, option: str) -> None:
    import re

    from opdgeo.errors import ConfigError

    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{option}: invalid regular expression {pattern!r}: {exc}") from None


@contextlib.contextmanager
def _progress(err: Console, quiet: bool, label: str, total: int) -> Iterator[Any]:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    disable = quiet or not err.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=disable,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with progress:
        task = progress.add_task(label, total=max(total, 1))
        yield lambda n: progress.advance(task, n)


def _tracked(records: Iterator[dict[str, Any]], advance: Any) -> Iterator[dict[str, Any]]:
    for record in records:
        advance(int(record.get("numel") or 0))
        yield record


def _notes(err: Console, run: Any) -> None:
    skipped = run.skipped
    if skipped:
        err.print(
            f"[yellow]note:[/] {run.summary['run']}: {len(skipped)} tensor(s) not compared "
            f"(first: {skipped[0]['tensor']}: {skipped[0]['reason']})"
        )
    if run.summary.get("n_nonfinite"):
        err.print(
            f"[yellow]warning:[/] {run.summary['run']}: {run.summary['n_nonfinite']} NaN/Inf "
            "entries; spectral metrics skipped for those tensors"
        )


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="Checkpoint: .safetensors file or directory.")],
    fmt: Annotated[
        Format | None, typer.Option("--format", "-f", help="table, csv or json.")
    ] = None,
) -> None:
    """List tensors, dtypes, shapes and bytes from the headers only (no weights are read)."""
    import pandas as pd

    from opdgeo import render
    from opdgeo.aggregate import clean
    from opdgeo.naming import layer_index, module_type
    from opdgeo.sources import open_checkpoint

    with user_errors():
        ckpt = open_checkpoint(source)
        names = sorted(ckpt.tensors, key=ckpt.file_position)
        frame = pd.DataFrame(
            [
                {
                    "tensor": n,
                    "dtype": ckpt.tensors[n].dtype,
                    "shape": "x".join(map(str, ckpt.tensors[n].shape)),
                    "numel": ckpt.tensors[n].numel,
                    "nbytes": ckpt.tensors[n].nbytes,
                    "module": module_type(n),
                    "layer": layer_index(n),
                    "file": ckpt.tensors[n].file.name,
                }
                for n in names
            ]
        )
        chosen = fmt or (Format.table if sys.stdout.isatty() else Format.csv)
        if chosen is Format.csv:
            sys.stdout.write(render.csv_text(frame))
        elif chosen is Format.json:
            doc = {
                "source": source,
                "n_tensors": len(names),
                "n_params": ckpt.n_params,
                "nbytes": ckpt.nbytes,
                "dtypes": ckpt.dtypes,
                "files": [f.name for f in ckpt.files],
                "tensors": [
                    {k: clean(v) for k, v in r.items()} for r in frame.to_dict(orient="records")
                ],
            }
            sys.stdout.write(render.json_text(doc))
        else:
            from rich.table import Table

            table = Table(
                title=f"{source}: {len(names)} tensors, {ckpt.n_params:,} params, "
                f"{ckpt.nbytes / 1e6:.1f} MB, {', '.join(ckpt.dtypes)}"
            )
            for col in ("tensor", "dtype", "shape", "numel", "file"):
                table.add_column(col, justify="right" if col == "numel" else "left")
            for row in frame.itertuples():
                table.add_row(
                    *(str(x) for x in (row.tensor, row.dtype, row.shape)),
                    f"{row.numel:,}",
                    str(row.file),
                )
            Console().print(table)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Argument(help="Where to write the synthetic checkpoints.")
    ] = Path("demo"),
    fmt: Annotated[
        Format | None, typer.Option("--format", "-f", help="table, csv or json.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic family.")] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")
    ] = False,
) -> None:
    """Generate a small synthetic base + SFT/OPD/RLVR-like family and compare it."""
    from opdgeo.synthetic import write_family

    with user_errors():
        paths = write_family(directory, seed=seed)
        if not quiet:
            _err().print(f"wrote synthetic checkpoints to {directory}/ (base, sft, opd, rlvr)")
    args = [str(paths["base"]), str(paths["sft"]), str(paths["opd"]), str(paths["rlvr"])]
    compare(
        args[0],
        args[1:],
        fmt=fmt,
        output=None,
        per_tensor=None,
        per_group=None,
        scope=None,
        include=None,
        exclude=None,
        config=None,
        exact=False,
        k=None,
        alpha=None,
        device=None,
        quiet=quiet,
    )


def main() -> None:
    """Console-script entry point. typer maps usage errors to exit 2 and Ctrl-C to 130."""
    try:
        app()
    except Exception as exc:  # an unexpected failure: one line, traceback only with --debug
        if _state["debug"]:
            raise
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        sys.exit(EXIT_ERROR)
