"""The ``rapids-hpo`` app and what its commands share: the consoles and reading a spec or exiting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from shared.spec import ExperimentSpec

HELP = "``rapids-hpo``: run an experiment here, serve the API, or talk to a running API (local or Azure)."
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)


@app.callback(help=HELP)
def _at_the_edge() -> None:
    # Every command prices with the catalogue the environment names, read once here (the CLI is an edge).
    from shared.config import env
    from shared.cost.catalogue import PRICES_FILE_SETTING, use_prices_file

    use_prices_file(env(PRICES_FILE_SETTING))


PIPE_WIDTH = 250
"""Columns when the output is a pipe, a file or a CI log: rich would take 80 and cut or wrap tables there."""


def make_console(*, stderr: bool = False) -> Console:
    """A console as wide as the terminal it writes to; into anything else (no terminal to measure) as wide
    as ``COLUMNS`` says, else :data:`PIPE_WIDTH`, so that no table is cut or wrapped for want of room."""
    made = Console(stderr=stderr)
    if not made.is_terminal and not os.environ.get("COLUMNS"):
        made.width = PIPE_WIDTH
    return made


console = make_console()
err = make_console(stderr=True)


def load_spec_or_exit(path: Path) -> ExperimentSpec:
    from shared.spec import SpecError, load_spec

    try:
        return load_spec(path)
    except SpecError as exc:
        err.print(f"[red]error:[/red] {path} is not a valid experiment spec")
        for item in exc.errors or [{"loc": "", "msg": str(exc)}]:
            err.print(f"  {item['loc'] or '<document>'}: {item['msg']}")
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {path}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
