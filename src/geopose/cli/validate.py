"""``geopose validate PATH``: check a data set, predictions folder or submission archive."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from geopose.cli.app import app, console, progress_bar


@app.command()
def validate(
    path: Path = typer.Argument(
        ..., help="Data set folder, predictions folder or submission .tar.gz."
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="Predictions/submission: RGB folder (or data set: its test/) each AGL must match "
        "in size and each image must have a prediction for.",
    ),
    truth: Path | None = typer.Option(
        None,
        "--truth",
        help="Predictions/submission: truth folder ({stem}_AGL.tif) to match 1:1 and in size.",
    ),
    workers: int | None = typer.Option(
        None, "--workers", "-j", min=1, help="Decoding threads (default: CPU count, at most 8)."
    ),
) -> None:
    """Check a data set, predictions folder or submission and report every problem at once.

    One line per problem, naming the file; exit 0 when clean, 1 when not. Nothing is modified.
    """

    from geopose.validate import check_path

    labels = {kind: f"checking {kind}" for kind in ("dataset", "predictions", "submission")}
    with progress_bar(labels) as on_progress:
        found = check_path(
            path, images=images, truth=truth, workers=workers, on_progress=on_progress
        )
    kind, problems = found.kind, found.problems

    for p in problems:
        console.print(
            f"[red]✗[/] [bold]{escape(p.path)}[/]: {escape(p.message)}",
            highlight=False,
            soft_wrap=True,
        )
    files = f"{found.files} file(s) decoded"
    if problems:
        files_with = len({p.path for p in problems})
        console.print(
            f"[bold red]{len(problems)} problem(s)[/] in {files_with} file(s); {kind} "
            f"{escape(str(path))}, {files}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(
        f"[bold green]OK[/]: {kind} {escape(str(path))}, {files}, no problems",
        highlight=False,
        soft_wrap=True,
    )
