"""The ``geopose`` typer application; each command lives in its own module of this package.

Command modules import heavy libraries (torch, matplotlib) inside their functions so that
``geopose --help`` stays fast.
"""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="geopose",
    help="Geocentric pose of oblique satellite images: height above ground, flow angle and scale.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)


def progress_bar(console: Console = err_console):
    """The CLI's rich progress bar (description, bar, done/total, time left), on stderr by
    default and cleared when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def fail(message: str, code: int = 1) -> None:
    """Print one red ``error:`` line on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
