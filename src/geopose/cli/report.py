"""``geopose report``: one self-contained HTML page about a predictions folder."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import app, console


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
    worst and best images with their figures, and a table of every image."""
    from rich.progress import track

    from geopose.viz.report import write_report

    def progress(items):
        return track(items, description="reading", console=console, transient=True)

    path = write_report(
        out, pred_dir, truth, images, n_show=n_show, overwrite=overwrite, progress=progress
    )
    console.print(f"report: {path}", highlight=False)
