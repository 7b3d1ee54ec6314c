"""``geopose report``: one self-contained HTML page about a predictions folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from geopose.cli.app import app, console, err_console, fail, progress_bar


@app.command()
def report(
    pred_dir: Path = typer.Argument(..., help="Folder of {stem}_AGL.tif + {stem}_VFLOW.json."),
    truth: Path | None = typer.Option(
        None, "--truth", help="Folder of true {stem}_AGL.tif + _VFLOW.json: scores and ranking."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Folder of the {stem}_RGB.* images (figures show the RGB)."
    ),
    out: Path = typer.Option(..., "--out", help="The HTML file to write."),
    n_show: int = typer.Option(3, "--show", help="Worst and best images shown with figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report."),
) -> None:
    """Write one HTML page (embedded PNGs, inline CSS): the score table, per-city bars, the
    worst and best images with their figures, and a table of every image. Unreadable files are
    left out, listed on the page and at the end, and make the exit status 1."""
    from geopose.viz.report import write_report

    failed: list[tuple[str, str]] = []
    with progress_bar({"read": "reading"}) as on_progress:
        path = write_report(
            out,
            pred_dir,
            truth,
            images,
            n_show=n_show,
            overwrite=overwrite,
            on_progress=on_progress,
            failed=failed,
        )
    console.print(f"report: {escape(str(path))}", highlight=False, soft_wrap=True)
    if failed:
        for _stem, reason in failed:
            line = escape(" ".join(reason.split()))
            err_console.print(f"[red]failed:[/] {line}", highlight=False, soft_wrap=True)
        fail(f"{len(failed)} file(s) could not be read (listed above and in the report)")
