"""``geopose rectify``: oblique image + AGL + VFLOW -> nadir RGB, nadir AGL, occlusion mask."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import (
    SCENE_BANDS,
    SCENE_NODATA,
    SCENE_STRETCH,
    app,
    console,
    err_console,
    fail,
    progress_bar,
    scene_options,
)


def _one(
    rgb: Path | None,
    agl: Path | None,
    vflow: Path | None,
    out: Path,
    overwrite: bool,
    fill: bool,
    scene: dict,
) -> None:
    from geopose.rectify import rectify_files

    if agl is None or vflow is None:
        fail("one image needs --agl AGL.tif and --vflow VFLOW.json (or use --images/--pred)")
    paths = rectify_files(rgb, agl, vflow, out, overwrite=overwrite, fill_holes=fill, **scene)
    for kind, p in paths.items():
        console.print(f"{kind:9s} {p}", highlight=False)


def _folder(
    images: Path | None, pred: Path, out: Path, overwrite: bool, fill: bool, scene: dict
) -> None:
    from rich.markup import escape

    from geopose.rectify import rectify_folder

    with progress_bar({"rectify": "rectifying"}) as on_progress:
        summary = rectify_folder(
            pred,
            out,
            images,
            overwrite=overwrite,
            fill_holes=fill,
            on_progress=on_progress,
            **scene,
        )
    done = f", {len(summary.skipped)} already done" if summary.skipped else ""
    console.print(
        f"rectified {len(summary.written)} image(s) into {escape(str(out))}{done}"
        + (f", {len(summary.failed)} failed" if summary.failed else ""),
        highlight=False,
        soft_wrap=True,
    )
    if summary.failed:
        for _stem, reason in summary.failed:
            line = escape(" ".join(reason.split()))
            err_console.print(f"[red]failed:[/] {line}", highlight=False, soft_wrap=True)
        fail(
            f"{len(summary.failed)} image(s) could not be rectified (listed above); fix them and "
            "run again: finished images are skipped"
        )


@app.command("rectify")
def rectify_cmd(
    rgb: Path | None = typer.Argument(
        None, help="One oblique image (.j2k/.tif/.png/.jp2/.vrt); omit for heights only."
    ),
    agl: Path | None = typer.Option(None, "--agl", help="AGL tif of the one image (m or cm)."),
    vflow: Path | None = typer.Option(None, "--vflow", help="VFLOW json of the one image."),
    images: Path | None = typer.Option(
        None, "--images", help="Folder of {stem}_RGB.* images (folder mode)."
    ),
    pred: Path | None = typer.Option(
        None,
        "--pred",
        help="Folder of {stem}_AGL.tif + {stem}_VFLOW.json, predicted or true (folder mode).",
    ),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    no_fill: bool = typer.Option(False, "--no-fill", help="Leave one-pixel sampling gaps empty."),
    bands: str | None = SCENE_BANDS,
    stretch: str | None = SCENE_STRETCH,
    nodata: float | None = SCENE_NODATA,
) -> None:
    """Rectify oblique images to nadir: every pixel moves by its flow to its ground footprint.

    Writes {stem}_NADIR_RGB.png, {stem}_NADIR_AGL.tif (uint16 cm, 65535 = occluded) and
    {stem}_OCCLUDED.png (255 = no pixel landed there); GeoTIFFs (.tif, same CRS and transform)
    when the input is georeferenced. Scenes (larger than 2048 px, multi-band or 16-bit images,
    .vrt, --bands/--stretch) are rectified window by window into Cloud-Optimized GeoTIFFs
    (NADIR_AGL float32 metres, NaN = occluded).
    """
    band_list, stretch = scene_options(bands, stretch)
    scene = {"bands": band_list, "stretch": stretch, "nodata": nodata}
    if pred is not None:
        if rgb is not None or agl is not None or vflow is not None:
            fail("use either RGB --agl --vflow (one image) or --pred [--images] (a folder)")
        _folder(images, pred, out, overwrite, not no_fill, scene)
    elif images is not None:
        fail("--images needs --pred PRED_DIR (the AGL and VFLOW of each image)")
    else:
        _one(rgb, agl, vflow, out, overwrite, not no_fill, scene)
