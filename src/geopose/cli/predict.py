"""``geopose predict CKPT [CKPT ...] --images DIR --out DIR``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from geopose.cli.app import (
    TRUST_FILE,
    app,
    console,
    err_console,
    fail,
    model_files,
    progress_bar,
    scene_options,
)


@app.command()
def predict(
    checkpoints: list[str] | None = typer.Argument(
        None,
        help="Model(s): geopose checkpoints (.ckpt), published challenge files, or published "
        "model / ensemble names (geopose models); several are ensembled with equal weights.",
        show_default=False,
    ),
    model: list[str] | None = typer.Option(
        None,
        "--model",
        "-m",
        help="A model as above (NAME or FILE); repeat for an ensemble.",
        show_default=False,
    ),
    images: Path = typer.Option(..., "--images", help="Folder of RGB images (.j2k/.tif/.png)."),
    out: Path = typer.Option(..., "--out", help="Output folder for the predictions."),
    tta: str | None = typer.Option(
        None,
        "--tta",
        help="Test-time augmentation: none, flip, d2 or d4 (default d4; none for a model "
        "trained without D4 turns, as cpu_small; a published ensemble named by --model: the "
        "authors' own).",
        show_default=False,
    ),
    shrink_scale: bool = typer.Option(
        False,
        "--shrink-scale",
        help="Scale × the agreement of the TTA views' directions: the mean flow, better under "
        "the score when the direction is uncertain; not the physical scale (rectify without).",
    ),
    ensemble: Path | None = typer.Option(
        None, "--ensemble", help="YAML spec of ensemble members (checkpoints and weights)."
    ),
    tar: Path | None = typer.Option(
        None, "--tar", help="Also pack a submission .tar.gz here and validate it."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Most images (views × tiles) per forward."),
    device: str | None = typer.Option(
        None, "--device", help="cpu or cuda (default: cuda when available)."
    ),
    gsd: float | None = typer.Option(
        None,
        "--gsd",
        min=0.0,
        help="GSD (m/px) for images found neither in metadata.csv nor georeferenced.",
    ),
    city: str | None = typer.Option(
        None, "--city", help="City code (ARG, ATL, JAX, OMA) for images not in metadata.csv."
    ),
    tile_size: int = typer.Option(
        2048,
        "--tile-size",
        min=0,
        help="Predict images larger than this (px) in blended overlapping tiles; 0 = never.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo images whose outputs exist (default: skip them)."
    ),
    bands: str | None = typer.Option(
        None,
        "--bands",
        help="Bands shown to the model as R,G,B (1-based, e.g. 5,3,2 for WorldView-3; one "
        "band for grey). Default: from the file's colour/band names, else 1,2,3. Makes every "
        "image a scene.",
        show_default=False,
    ),
    stretch: str | None = typer.Option(
        None,
        "--stretch",
        help="DN -> 8-bit per band, one stretch per scene: auto (8-bit as is, else p2-98), "
        "none, pLOW-HIGH percentiles (p1-99), minmax. Makes every image a scene.",
        show_default=False,
    ),
    nodata: float | None = typer.Option(
        None,
        "--nodata",
        help="DN meaning no data in scenes (default: the file's nodata value / mask).",
        show_default=False,
    ),
    rectify: bool = typer.Option(
        False,
        "--rectify",
        help="Also write each scene's nadir view: _NADIR_RGB.tif, _NADIR_AGL.tif, "
        "_OCCLUDED.tif (georeferenced inputs become scenes; plain images are not rectified: "
        "geopose rectify does them).",
    ),
    scene_tile: int = typer.Option(
        1024, "--scene-tile", min=64, help="Tile side (px) of scene prediction."
    ),
    trust_file: bool = TRUST_FILE,
) -> None:
    """Predict AGL, angle and scale for every image of a folder.

    Per image: {stem}_AGL.tif (uint16 cm) and {stem}_VFLOW.json; a georeferenced GeoTIFF input
    gets float32-metre _AGL.tif and 2-band _FLOW.tif GeoTIFFs with its CRS and transform, plus
    the json. Satellite scenes (georeferenced, not 8-bit RGB or larger than --tile-size; .vrt;
    any image with --bands/--stretch) are predicted window by window in bounded memory into
    Cloud-Optimized GeoTIFFs, with one direction and scale per scene. Re-runs skip finished
    images; under torchrun each rank predicts its own shard. Unreadable images (or without a
    GSD) are listed at the end and make the exit status 1.
    """
    from geopose.inference import distributed
    from geopose.inference.run import run_predict

    band_list, stretch = scene_options(bands, stretch)
    main = distributed.env_info().is_main
    with (
        model_files(trust_file),
        progress_bar({"images": "predicting"}, disable=not main) as on_progress,
    ):
        report = run_predict(
            [*(checkpoints or []), *(model or [])],
            images,
            out,
            tta=tta,
            shrink_scale=shrink_scale,
            ensemble=ensemble,
            device=device,
            batch=batch,
            tile_size=tile_size,
            gsd=gsd,
            city=city,
            tar=tar,
            overwrite=overwrite,
            bands=band_list,
            stretch=stretch,
            nodata=nodata,
            rectify=rectify,
            scene_tile=scene_tile,
            on_progress=on_progress,
        )
    if report is None:  # not rank 0
        return
    for line in report.warnings:
        err_console.print(
            f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True
        )
    for i, r in enumerate(report.ranks):
        per = r.seconds / len(r.written) if r.written else 0.0
        console.print(
            f"rank {i}: {len(r.written)} written, {len(r.skipped)} skipped"
            f" ({len(r.redone)} incomplete redone), {per:.2f} s/image",
            highlight=False,
        )
    failed = report.failed
    console.print(
        f"{report.n_images} image(s): {len(report.written)} predicted, {len(report.skipped)} "
        f"already done" + (f", {len(failed)} failed" if failed else "") + f"; "
        f"{len(report.members)} model(s), TTA {report.tta or '-'}, {report.device} -> "
        f"{escape(str(out))}",
        highlight=False,
        soft_wrap=True,
    )
    no_direction = sum(len(r.no_direction) for r in report.ranks)
    if no_direction:
        console.print(
            f"{no_direction} image(s) with no evidence of the flow direction: zero flow written "
            "(scale 0, angle 0)",
            highlight=False,
        )
    if failed:
        for _stem, reason in failed:
            line = " ".join(reason.split())
            err_console.print(f"[red]failed:[/] {escape(line)}", highlight=False, soft_wrap=True)
        if report.tar is not None:
            err_console.print(
                f"{escape(str(report.tar))} not packed: the submission would miss "
                f"{len(failed)} image(s)",
                highlight=False,
                soft_wrap=True,
            )
        fail(
            f"{len(failed)} image(s) could not be predicted (listed above); fix them and run "
            "again: finished images are skipped"
        )
    if report.tar is not None:
        for p in report.problems:
            console.print(f"[red]✗[/] {escape(p)}", highlight=False, soft_wrap=True)
        if report.problems:
            fail(f"{report.tar}: submission has {len(report.problems)} problem(s)")
        console.print(f"[bold green]OK[/]: submission {escape(str(report.tar))} validated")
