"""``geopose rectify``: oblique image + AGL + VFLOW -> nadir RGB, nadir AGL, occlusion mask."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import app, console, fail


def _one(
    rgb: Path | None, agl: Path | None, vflow: Path | None, out: Path, overwrite: bool, fill: bool
) -> None:
    from geopose.rectify import rectify_files

    if agl is None or vflow is None:
        fail("one image needs --agl AGL.tif and --vflow VFLOW.json (or use --images/--pred)")
    paths = rectify_files(rgb, agl, vflow, out, overwrite=overwrite, fill_holes=fill)
    for kind, p in paths.items():
        console.print(f"{kind:9s} {p}", highlight=False)


def _folder(images: Path | None, pred: Path, out: Path, overwrite: bool, fill: bool) -> None:
    from rich.progress import Progress

    from geopose.errors import OutputExistsError
    from geopose.io import agl_name, find_rgb, prediction_stems, read_georef, vflow_name
    from geopose.rectify import output_paths, rectify_files

    stems = prediction_stems(pred)
    if not stems:
        fail(f"{pred}: no complete prediction ({{stem}}_AGL.tif + {{stem}}_VFLOW.json)")
    rgbs = {s: find_rgb(images, s) if images is not None else None for s in stems}
    if not overwrite:
        for s in stems:
            ref = rgbs[s] if rgbs[s] is not None else pred / agl_name(s)
            for p in output_paths(out, s, read_georef(ref) is not None).values():
                if p.exists():
                    raise OutputExistsError(p)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("rectifying", total=len(stems))
        for s in stems:
            rectify_files(
                rgbs[s],
                pred / agl_name(s),
                pred / vflow_name(s),
                out,
                stem=s,
                overwrite=overwrite,
                fill_holes=fill,
            )
            bar.advance(task)
    console.print(f"rectified {len(stems)} image(s) into {out}", highlight=False)


@app.command("rectify")
def rectify_cmd(
    rgb: Path | None = typer.Argument(
        None, help="One oblique RGB image (.j2k/.tif/.png); omit for heights only."
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
) -> None:
    """Rectify oblique images to nadir: every pixel moves by its flow to its ground footprint.

    Writes {stem}_NADIR_RGB.png, {stem}_NADIR_AGL.tif (uint16 cm, 65535 = occluded) and
    {stem}_OCCLUDED.png (255 = no pixel landed there); GeoTIFFs (.tif, same CRS and transform)
    when the input is georeferenced.
    """
    if pred is not None:
        if rgb is not None or agl is not None or vflow is not None:
            fail("use either RGB --agl --vflow (one image) or --pred [--images] (a folder)")
        _folder(images, pred, out, overwrite, not no_fill)
    elif images is not None:
        fail("--images needs --pred PRED_DIR (the AGL and VFLOW of each image)")
    else:
        _one(rgb, agl, vflow, out, overwrite, not no_fill)
