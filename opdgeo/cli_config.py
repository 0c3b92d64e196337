"""``opdgeo config show``: the configuration in use, as TOML that ``--config`` reads back.

The defaults live in :mod:`opdgeo.config` (``configs/default.toml`` in the repository is the
commented copy); this prints them from an installed package too, with a ``--config`` file
applied over them when one is given.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from opdgeo.config import Config
from opdgeo.options import grouped

config_app = typer.Typer(
    name="config", help="Show the configuration (defaults, or a --config file over them).",
    no_args_is_help=True,
)  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def config_toml(config: Config) -> str:
    """``[settings]``, ``[thresholds]`` and ``[calibration]`` of ``config`` as TOML (unset
    regexes commented)."""
    lines = ["# opdgeo configuration (opdgeo config show); pass a copy with --config FILE", ""]
    lines.append("[settings]")
    for f in dataclasses.fields(config.settings):
        value = getattr(config.settings, f.name)
        if f.name == "metric_params":  # every registered metric's setting (default: commented)
            from opdgeo.metrics import params

            given = dict(value)
            lines += [f"{k} = {_toml_value(given[k])}   # {p.doc}" if k in given else
                      f"# {k} = {_toml_value(p.default)}   (default) {p.doc}"
                      for k, p in params().items()]  # fmt: skip
        elif value is None:
            lines.append(f'# {f.name} = ""   (not set)')
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    lines += ["", "[thresholds]"]
    lines += [f"{f.name} = {_toml_value(getattr(config.thresholds, f.name))}"
              for f in dataclasses.fields(config.thresholds)]  # fmt: skip
    calibration = getattr(config, "calibration", None)
    if calibration is not None:  # rule = [right, total] of the confidence's calibration
        lines += ["", f"[calibration]  # {calibration.source}"]
        lines += [f"{json.dumps(rule)} = [{right}, {total}]"
                  for rule, (right, total) in calibration.rules.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


@config_app.command("show")
@grouped
def show(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config to apply over the defaults.")
    ] = None,
) -> None:
    """Print the default configuration as TOML (with --config, that file over the defaults)."""
    from opdgeo.config import load_config
    from opdgeo.console import user_errors

    with user_errors():
        print(config_toml(load_config(config)), end="")
