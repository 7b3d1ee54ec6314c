"""Entry point of the ``geopose`` console script."""

from __future__ import annotations

import sys

import typer

from geopose import __version__
from geopose.cli.app import app, err_console
from geopose.errors import GeoposeError

# Each import registers its command(s) on ``app``.
from geopose.cli import validate  # noqa: E402, F401  isort: skip
from geopose.cli import prepare, train  # noqa: E402, F401  isort: skip
from geopose.cli import export  # noqa: E402, F401  isort: skip
from geopose.cli import evaluate  # noqa: E402, F401  isort: skip
from geopose.cli import rectify  # noqa: E402, F401  isort: skip
from geopose.cli import report, show  # noqa: E402, F401  isort: skip
from geopose.cli import predict  # noqa: E402, F401  isort: skip
from geopose.cli import synth  # noqa: E402, F401  isort: skip
from geopose.cli import demo  # noqa: E402, F401  isort: skip
from geopose.cli import models  # noqa: E402, F401  isort: skip


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Also show the libraries' warnings and info lines (Lightning, torch).",
    ),
) -> None:
    """Geocentric pose of oblique satellite images: height above ground, flow angle and scale."""
    from geopose import logs

    logs.configure(verbose)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a :class:`GeoposeError` becomes one ``error:`` line and its exit code (1,
    or 2 for an output that cannot be written). Without ``-v`` only geopose's own messages
    reach the terminal (:mod:`geopose.logs`), for this command only."""
    from geopose import logs

    try:
        with logs.cli_scope():
            app(args=argv, prog_name="geopose")
    except GeoposeError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
