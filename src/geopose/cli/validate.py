"""``geopose validate PATH``."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import app


@app.command()
def validate(path: Path = typer.Argument(..., help="Data set folder, predictions folder or submission .tar.gz.")) -> None:
    """Check a data set, predictions folder or submission and report every problem."""
    raise NotImplementedError
