"""The ``opdgeo`` command line: a thin layer over :mod:`opdgeo.report`.

stdout carries data only (table, CSV or JSON); progress, plans, notes and errors go to
stderr. Exit codes: 0 ok, 1 error, 2 usage, 3 not comparable, 4 Hub access, 5 offline cache
miss, 130 interrupted (see README).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import warnings
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from opdgeo import __version__
from opdgeo.errors import EXIT_ERROR, EXIT_INTERRUPTED, ConfigError, OpdgeoError
from opdgeo.text import markup_safe, printable

if TYPE_CHECKING:
    from opdgeo.config import Config
    from opdgeo.io import Checkpoint, SourceOptions
    from opdgeo.report import RunResult

app = typer.Typer(
    name="opdgeo",
    help="Compare LLM checkpoints in parameter space: is a fine-tune SFT-, OPD- or RLVR-like?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": os.environ.get("OPDGEO_DEBUG", "") not in ("", "0"), "quiet": False}


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class Tier(StrEnum):
    fast = "fast"
    standard = "standard"
    exact = "exact"


class Scope(StrEnum):
    all = "all"
    linear = "linear"
    attention = "attention"


SOURCE_HELP = ".safetensors file, checkpoint directory, or Hub id org/name[@revision]."
FormatOpt = Annotated[
    Format | None,
    typer.Option("--format", "-f", help="table (default on a terminal), csv (when piped) or json."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        help="Hub token (default: HF_TOKEN or the stored `hf auth login`); never printed."
    ),
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Use the local Hub cache only (as HF_HUB_OFFLINE=1).")
]
KeepOpt = Annotated[
    bool,
    typer.Option(
        "--keep/--no-keep",
        help="Keep downloaded shards in the Hub cache, or delete each once read (~2 on disk).",
    ),
]
PickleOpt = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Read pickle weights (.bin/.pt) with torch.load(weights_only=True, mmap=True). "
        "Refused by default: loading a pickle can run code.",
    ),
]


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
        from rich.markup import escape

        _err().print(f"[red]error:[/] {escape(str(exc))}", markup=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _err().print("interrupted: no report was written")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _show_warning(
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
        if not _state["quiet"]:
            _err().print(f"[yellow]warning:[/] {markup_safe(message)}")
    elif _state["debug"]:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _version(value: bool) -> None:
    if value:
        print(f"opdgeo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """opdgeo: parameter-space diagnostics of post-training (SFT / OPD / RLVR)."""
    if debug:
        _state["debug"] = True
    warnings.showwarning = _show_warning


def _source_options(
    token: str | None, offline: bool, keep: bool, quiet: bool, allow_pickle: bool = False
) -> SourceOptions:
    from opdgeo.io import SourceOptions

    show = not quiet and _err().is_terminal
    if not show:
        from huggingface_hub.utils.tqdm import disable_progress_bars

        disable_progress_bars()
    return SourceOptions(
        token=token, offline=offline, keep=keep, progress=show, allow_pickle=allow_pickle
    )


OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", dir_okay=False, help="Write the report here (atomic)."),
]
PerTensorOpt = Annotated[
    Path | None,
    typer.Option("--per-tensor", dir_okay=False, help="Also write per-tensor rows (CSV)."),
]
PerGroupOpt = Annotated[
    Path | None,
    typer.Option("--per-group", dir_okay=False, help="Also write per-module/layer rows (CSV)."),
]
ScopeOpt = Annotated[
    Scope | None,
    typer.Option(help="all tensors, linear (2-D weights in blocks) or attention (q/k/v/o)."),
]
IncludeOpt = Annotated[str | None, typer.Option(help="Regex: compare only these names.")]
ExcludeOpt = Annotated[str | None, typer.Option(help="Regex: leave these names out.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config (see configs/).")
]
ExactOpt = Annotated[bool, typer.Option("--exact", help="Same as --tier exact (float64 full SVD).")]
TierOpt = Annotated[
    Tier | None,
    typer.Option(
        help="fast: sparsity, norms, stable rank only (I/O speed); standard: every metric "
        "(float64 Gram + eigh); exact: float64 full SVD."
    ),
]
CacheOpt = Annotated[
    bool | None,
    typer.Option(
        "--cache/--no-cache", help="Reuse / skip the on-disk cache of base decompositions."
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(file_okay=False, help="Base cache directory (default ~/.cache/opdgeo)."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option(min=1, help="CPU threads for the linear algebra (default: cores).")
]
KOpt = Annotated[
    int | None, typer.Option("--k", min=1, help="Principal-angle k (default min(m,n)//8).")
]
AlphaOpt = Annotated[
    float | None, typer.Option(help="Mask fraction of the overlap metrics (default 0.3).")
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot", file_okay=False, help="Write figures (PNG + SVG) here; needs matplotlib."
    ),
]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu or cuda for the linear algebra.")]


def _load(
    config: Path | None,
    scope: Scope | None,
    include: str | None,
    exclude: str | None,
    k: int | None,
    alpha: float | None,
    device: str | None,
    exact: bool,
    tier: Tier | None = None,
    cache: bool | None = None,
    cache_dir: Path | None = None,
    threads: int | None = None,
) -> Config:
    from opdgeo import engine
    from opdgeo.config import load_config

    cfg = load_config(
        config,
        scope=scope.value if scope else None,
        include=_regex(include, "--include"),
        exclude=_regex(exclude, "--exclude"),
        angle_k=k,
        alpha=alpha,
        device=device,
        tier="exact" if exact else (tier.value if tier else None),
        cache=cache,
        cache_dir=str(cache_dir) if cache_dir else None,
        threads=threads,
    )
    engine.check_device(cfg.settings)
    return cfg


@app.command()
def compare(
    base: Annotated[str, typer.Argument(help=f"Base checkpoint: {SOURCE_HELP}")],
    tuned: Annotated[list[str], typer.Argument(help="One or more fine-tuned checkpoints.")],
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    per_tensor: PerTensorOpt = None,
    per_group: PerGroupOpt = None,
    scope: ScopeOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    config: ConfigOpt = None,
    exact: ExactOpt = False,
    tier: TierOpt = None,
    cache: CacheOpt = None,
    cache_dir: CacheDirOpt = None,
    threads: ThreadsOpt = None,
    k: KOpt = None,
    alpha: AlphaOpt = None,
    device: DeviceOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    keep: KeepOpt = True,
    allow_pickle: PickleOpt = False,
    plot: PlotOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compare each TUNED checkpoint against BASE, tensor by tensor, and name its regime."""
    from opdgeo import outputs

    _state["quiet"] = quiet
    with user_errors():
        cfg = _load(
            config,
            scope,
            include,
            exclude,
            k,
            alpha,
            device,
            exact,
            tier,
            cache,
            cache_dir,
            threads,
        )
        for path in (output, per_tensor, per_group, plot and plot / "regime_map.png"):
            if path:
                outputs.check_output_path(path, [base, *tuned])
        sources = _source_options(token, offline, keep, quiet, allow_pickle)
        runs = _run_compare(base, tuned, cfg, sources, quiet)
        _emit(runs, cfg, fmt, output, per_tensor, per_group)
        _plots(runs, plot, [base, *tuned], quiet)


def _run_compare(
    base: str, tuned: list[str], cfg: Config, sources: SourceOptions, quiet: bool
) -> list[RunResult]:
    """:func:`opdgeo.report.compare_checkpoints` with the plan, progress and notes on stderr."""
    from opdgeo import report

    err = _err()

    def on_plan(base_ckpt: Checkpoint, runs: list[Checkpoint], plans: list[Any]) -> None:
        if not quiet:
            _print_plan(err, base_ckpt, runs, plans)

    def track(label: str, total: int) -> Any:
        return _progress(err, quiet, label, total)

    runs = report.compare_checkpoints(base, tuned, cfg, sources, on_plan, track)
    if not quiet:
        for run in runs:
            _notes(err, run)
    return runs


def _print_plan(err: Console, base: Checkpoint, tuned: list[Checkpoint], plans: list[Any]) -> None:
    """Before any download: what will be compared, skipped and fetched."""
    remote = [c for c in (base, *tuned) if c.fetcher is not None]
    for ckpt, plan in zip(tuned, plans, strict=True):
        if remote or plan.skipped:
            err.print(
                f"plan: {ckpt.label}: {len(plan.pairs)} tensor pairs to compare, "
                f"{len(plan.skipped)} skipped"
            )
    for ckpt in remote:
        total, cached = ckpt.download_bytes()
        err.print(
            f"plan: {ckpt.label}: {len(ckpt.files)} shard(s), {total / 1e9:.2f} GB of weights, "
            f"{cached / 1e9:.2f} GB already cached, {(total - cached) / 1e9:.2f} GB to download"
        )


def _emit(
    runs: list[RunResult],
    cfg: Config,
    fmt: Format | None,
    output: Path | None,
    per_tensor: Path | None,
    per_group: Path | None,
    trajectory: bool = False,
) -> None:
    """Write the report (stdout or -o) and the optional per-tensor / per-group CSVs."""
    from opdgeo import outputs, render, report

    chosen = fmt or (Format.table if sys.stdout.isatty() and output is None else Format.csv)
    s = cfg.settings
    settings_line = (
        f"scope={s.scope} alpha={s.alpha} atol={s.atol:g} tier={s.tier} "
        f"method={s.spectral_method} device={s.device}"
    )
    if chosen is Format.table:
        text = _table_text(runs, settings_line, to_file=output is not None, trajectory=trajectory)
    elif chosen is Format.csv:
        text = render.csv_text(report.summary_frame(runs))
    else:
        meta = {
            "schema_version": 1,
            "opdgeo_version": __version__,
            "command": shlex.join(["opdgeo", *_redacted(sys.argv[1:])]),
            "settings": dict(vars(cfg.settings)),
            "thresholds": dict(vars(cfg.thresholds)),
        }
        text = render.json_text(report.to_json(runs, meta))
    if per_tensor:
        outputs.write_output(per_tensor, render.csv_text(report.tensors_frame(runs)))
    if per_group:
        outputs.write_output(per_group, render.csv_text(report.groups_frame(runs)))
    if output:
        outputs.write_output(output, text)
    elif text:
        sys.stdout.write(text)
        sys.stdout.flush()


def _plots(
    runs: list[RunResult],
    folder: Path | None,
    inputs: list[str],
    quiet: bool,
    trajectory: bool = False,
) -> None:
    if folder is None:
        return
    from opdgeo import outputs, plots

    outputs.check_output_path(folder / "regime_map.png", inputs)
    paths = plots.write_plots(runs, folder, trajectory)
    if not quiet:
        _err().print(f"wrote {len(paths)} figure files to {folder}/")


def _redacted(argv: list[str]) -> list[str]:
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


def _table_text(
    runs: list[RunResult], settings_line: str, to_file: bool, trajectory: bool = False
) -> str:
    from opdgeo import render

    def draw(console: Console) -> None:
        render.render_table(console, runs, settings_line)
        if trajectory:
            render.render_trajectory(console, runs)

    if not to_file and sys.stdout.isatty():
        draw(Console())
        return ""
    console = Console(width=160, color_system=None, force_terminal=False)
    with console.capture() as capture:
        draw(console)
    return capture.get()


def _regex(pattern: str | None, option: str) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{option}: invalid regular expression {pattern!r}: {exc}") from None
    return pattern


@contextlib.contextmanager
def _progress(err: Console, quiet: bool, label: str, total: int) -> Iterator[Any]:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=quiet or not err.is_terminal,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with progress:
        task = progress.add_task(label, total=total if total > 0 else None)
        yield lambda n: progress.advance(task, n)


def _notes(err: Console, run: RunResult) -> None:
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
def batch(
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
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    per_tensor: PerTensorOpt = None,
    per_group: PerGroupOpt = None,
    scope: ScopeOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    config: ConfigOpt = None,
    exact: ExactOpt = False,
    tier: TierOpt = None,
    cache: CacheOpt = None,
    cache_dir: CacheDirOpt = None,
    threads: ThreadsOpt = None,
    k: KOpt = None,
    alpha: AlphaOpt = None,
    device: DeviceOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    keep: KeepOpt = True,
    allow_pickle: PickleOpt = False,
    plot: PlotOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compare every checkpoint in DIRECTORY (or a --study file) against BASE, in one pass."""
    from opdgeo import outputs
    from opdgeo import study as studies

    _state["quiet"] = quiet
    with user_errors():
        cfg = _load(
            config,
            scope,
            include,
            exclude,
            k,
            alpha,
            device,
            exact,
            tier,
            cache,
            cache_dir,
            threads,
        )
        if study is not None:
            base_spec, runs = studies.load_study(study)
        elif base is None or directory is None:
            raise ConfigError("give BASE and DIRECTORY, or --study FILE")
        else:
            base_spec, runs = base, studies.discover(directory)
        if len({r.label for r in runs}) != len(runs):
            raise ConfigError("run labels must be unique")
        inputs = [base_spec, *(r.path for r in runs), *(r.origin for r in runs if r.origin)]
        for path in (output, per_tensor, per_group, state):
            if path:
                outputs.check_output_path(path, inputs)
        state_path = state or (output.with_name(output.name + ".state.jsonl") if output else None)
        if resume and state_path is None:
            raise ConfigError("--resume needs --state PATH (or -o, whose state file it uses)")
        log = studies.StateFile(state_path, resume) if state_path else None
        err = _err()
        if not quiet:
            err.print(f"batch: {len(runs)} run(s) against {base_spec}")
        sources = _source_options(token, offline, keep, quiet, allow_pickle)
        with _progress(err, quiet, "batch", 0) as advance:
            results = studies.run_batch(base_spec, runs, cfg, sources, log, advance)
        if log is not None:
            log.close(finished=True)
        if not quiet:
            for result in results:
                _notes(err, result)
        _emit(results, cfg, fmt, output, per_tensor, per_group)
        _plots(results, plot, inputs, quiet)


@app.command()
def trajectory(
    base: Annotated[str, typer.Argument(help=f"Origin checkpoint W0: {SOURCE_HELP}")],
    checkpoints: Annotated[
        list[str],
        typer.Argument(help="Checkpoints in training order, or one directory of step checkpoints."),
    ],
    matrices: Annotated[
        str | None,
        typer.Option(help="Regex of the trajectory matrices (default: attention q/k/v/o)."),
    ] = None,
    sim_k: Annotated[int, typer.Option("--sim-k", min=1, help="K of Sim_K (OPDG: 16).")] = 16,
    hill_k: Annotated[int, typer.Option(min=2, help="Top-k of the Hill estimator.")] = 10,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    per_tensor: PerTensorOpt = None,
    scope: ScopeOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    config: ConfigOpt = None,
    exact: ExactOpt = False,
    tier: TierOpt = None,
    cache: CacheOpt = None,
    cache_dir: CacheDirOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    keep: KeepOpt = True,
    allow_pickle: PickleOpt = False,
    plot: PlotOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Follow one run's checkpoints from BASE: cumulative updates and subspace locking."""
    from opdgeo import outputs
    from opdgeo import study as studies
    from opdgeo import trajectory as traj

    _state["quiet"] = quiet
    with user_errors():
        cfg = _load(
            config,
            scope,
            include,
            exclude,
            None,
            None,
            device,
            exact,
            tier,
            cache,
            cache_dir,
            threads,
        )
        only = Path(checkpoints[0])
        if len(checkpoints) == 1 and only.is_dir() and not studies.is_checkpoint_dir(only):
            specs = studies.discover(only)
        else:
            specs = [studies.RunSpec(c, c, step=studies.parse_step(c)) for c in checkpoints]
        for path in (output, per_tensor):
            if path:
                outputs.check_output_path(path, [base, *(s.path for s in specs)])
        _regex(matrices, "--matrices")
        observer = traj.TrajectoryObserver(
            len(specs), matrices or traj.DEFAULT_MATRICES, sim_k, hill_k,
            cfg.settings.spectral_method,
        )  # fmt: skip
        sources = _source_options(token, offline, keep, quiet, allow_pickle)
        with _progress(_err(), quiet, "trajectory", 0) as advance:
            runs = studies.run_batch(base, specs, cfg, sources, None, advance, observer)
        rows = observer.rows()
        verdict, facts = traj.locking_verdict(rows, cfg.thresholds)
        for i, (run, row, spec) in enumerate(zip(runs, rows, specs, strict=True)):
            run.summary.update(row)
            run.summary["step"] = spec.step if spec.step is not None else i
            run.summary["locking"] = verdict if i == len(runs) - 1 else ""
            run.summary["locking_reasons"] = "; ".join(facts) if i == len(runs) - 1 else ""
        if not quiet:
            _err().print(f"locking: {verdict}")
            for fact in facts:
                _err().print(f"  - {fact}")
        _emit(runs, cfg, fmt, output, per_tensor, None, trajectory=True)
        _plots(runs, plot, [base, *(s.path for s in specs)], quiet, trajectory=True)


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help=f"Checkpoint: {SOURCE_HELP}")],
    fmt: FormatOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """List tensors, dtypes, shapes and bytes from the headers only (no weights are read)."""
    from opdgeo import render
    from opdgeo.io import open_checkpoint

    with user_errors():
        ckpt = open_checkpoint(
            source, _source_options(token, offline, True, quiet=True, allow_pickle=allow_pickle)
        )
        frame = _inspect_frame(ckpt)
        chosen = fmt or (Format.table if sys.stdout.isatty() else Format.csv)
        if chosen is Format.csv:
            sys.stdout.write(render.csv_text(frame))
        elif chosen is Format.json:
            from opdgeo.aggregate import clean

            total, cached = ckpt.download_bytes()
            doc = {
                "source": ckpt.label,
                "n_tensors": len(frame),
                "n_params": ckpt.n_params,
                "nbytes": ckpt.nbytes,
                "dtypes": ckpt.dtypes,
                "files": [str(f) for f in ckpt.files],
                "remote_bytes": total,
                "cached_bytes": cached,
                "tensors": [
                    {k: clean(v) for k, v in r.items()} for r in frame.to_dict(orient="records")
                ],
            }
            sys.stdout.write(render.json_text(doc))
        else:
            render.render_inspect(Console(), ckpt, frame)
        ckpt.close()


def _inspect_frame(ckpt: Checkpoint) -> Any:
    import pandas as pd

    from opdgeo.naming import layer_index, module_type

    names = sorted(ckpt.tensors, key=ckpt.file_position)
    return pd.DataFrame(
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
        ],
        columns=["tensor", "dtype", "shape", "numel", "nbytes", "module", "layer", "file"],
    )


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to write the checkpoints.")] = Path(
        "demo"
    ),
    fmt: FormatOpt = None,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic family.")] = 0,
    plot: PlotOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Generate a small synthetic base + SFT/OPD/RLVR-like family and compare it."""
    from opdgeo.config import load_config
    from opdgeo.synthetic import write_family

    _state["quiet"] = quiet
    with user_errors():
        paths = write_family(directory, seed=seed)
        if not quiet:
            _err().print(f"wrote synthetic checkpoints to {directory}/ (base, sft, opd, rlvr)")
        tuned = [str(paths[k]) for k in ("sft", "opd", "rlvr")]
        cfg = load_config()
        runs = _run_compare(
            str(paths["base"]), tuned, cfg, _source_options(None, True, True, True), quiet
        )
        _emit(runs, cfg, fmt, None, None, None)
        _plots(runs, plot, [str(p) for p in paths.values()], quiet)


@app.command("cache")
def cache_command(
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete every entry opdgeo wrote in the cache.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --clear: list what would be removed.")
    ] = False,
    cache_dir: CacheDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show where the base cache is and how big it is (or empty it with --clear).

    --clear removes only files opdgeo wrote (recognised by name and header), follows no
    symlink, and refuses a folder that holds anything else.
    """
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
                root = markup_safe(store.root)
                _err().print(f"would remove {len(removed)} file(s) from {root}")
                return
            _err().print(
                f"removed {len(removed)} cached base matrices from {markup_safe(store.root)}"
            )
        found = store.scan()
        if found.foreign:
            _err().print(
                f"[yellow]warning:[/] {markup_safe(store.root)} also holds "
                f"{len(found.foreign)} item(s) opdgeo did not write "
                f"(first: {markup_safe(found.foreign[0])})"
            )
        print(f"path\t{store.root}\nentries\t{len(found.entries)}\nbytes\t{found.nbytes}")


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
