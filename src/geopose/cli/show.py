"""``geopose show``: figures of predictions, scores and training curves (PNG files)."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import (
    SCENE_BANDS,
    SCENE_NODATA,
    SCENE_STRETCH,
    app,
    console,
    progress_bar,
    scene_options,
)


@app.command()
def show(
    rgb: Path | None = typer.Argument(None, help="One oblique RGB image (optional)."),
    agl: Path | None = typer.Option(None, "--agl", help="AGL tif of the one image."),
    vflow: Path | None = typer.Option(None, "--vflow", help="VFLOW json of the one image."),
    images: Path | None = typer.Option(None, "--images", help="Folder of {stem}_RGB.* images."),
    pred: Path | None = typer.Option(
        None, "--pred", help="Folder of {stem}_AGL.tif + {stem}_VFLOW.json (predictions)."
    ),
    truth: Path | None = typer.Option(
        None, "--truth", help="Folder of true {stem}_AGL.tif + _VFLOW.json: adds error panels."
    ),
    scores: Path | None = typer.Option(
        None, "--scores", help="JSON of geopose evaluate --json: per-city score bars."
    ),
    log: Path | None = typer.Option(
        None, "--log", help="Lightning metrics.csv (or a run folder): training curves."
    ),
    limit: int = typer.Option(0, "--limit", help="At most this many image figures (0 = all)."),
    out: Path = typer.Option(..., "--out", help="Output folder for the PNG figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing figures."),
    bands: str | None = SCENE_BANDS,
    stretch: str | None = SCENE_STRETCH,
    nodata: float | None = SCENE_NODATA,
) -> None:
    """Draw figures: per image RGB | AGL | MAG | flow arrows | rectified RGB | rectified AGL
    (with --truth also error maps and a predicted-vs-true height hexbin), per-city score bars,
    training curves. Writes OUT/{stem}_figure.png, OUT/scores.png, OUT/training.png.
    Scenes (large, multi-band, 16-bit, .vrt) are read decimated from their overviews."""
    from geopose.viz.show import write_figures

    band_list, stretch = scene_options(bands, stretch)
    with progress_bar() as on_progress:
        shown = write_figures(
            out,
            rgb=rgb,
            agl=agl,
            vflow=vflow,
            images=images,
            pred=pred,
            truth=truth,
            scores=scores,
            log=log,
            limit=limit,
            overwrite=overwrite,
            bands=band_list,
            stretch=stretch,
            nodata=nodata,
            on_progress=on_progress,
        )
    if shown.figures:
        console.print(f"{len(shown.figures)} image figure(s) in {out}", highlight=False)
    for path in (shown.scores, shown.training):
        if path is not None:
            console.print(f"{path}", highlight=False)
