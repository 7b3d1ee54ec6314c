"""``geopose show``: figures of predictions, scores and training curves (PNG files)."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import app, console, fail


def _truth_for(truth: Path | None, stem: str):
    from geopose.viz.report import read_truth

    return None if truth is None else read_truth(truth, stem)


def _stem_of(path: Path) -> str:
    from geopose.io import split_name

    parsed = split_name(path)
    return parsed[0] if parsed else path.name.split(".", 1)[0]


def _scene_figure(stem: str, rgb_p, agl_p, vflow_p, truth: Path | None, scene: dict):
    """The figure of a scene, read decimated (:func:`geopose.viz.figures.read_scene_for_figure`):
    scales (px/m) are multiplied by the decimation factor, truth read on the same grid."""
    from geopose.io import agl_name, read_vflow, vflow_name
    from geopose.viz import image_figure
    from geopose.viz.figures import Truth, read_decimated_agl, read_scene_for_figure

    rgb, agl, factor = read_scene_for_figure(rgb_p, agl_p, **scene)
    angle, scale = read_vflow(vflow_p)
    true = None
    if truth is not None:
        t_agl, t_factor = read_decimated_agl(truth / agl_name(stem))
        t_angle, t_scale = read_vflow(truth / vflow_name(stem))
        true = Truth(t_agl, t_angle, t_scale * t_factor)
    title = stem if factor == 1 else f"{stem} (1:{1 / factor:.3g})"
    return image_figure(rgb, agl, angle, scale * factor, title=title, truth=true)


def _image_figures(
    jobs: list[tuple], truth: Path | None, out: Path, overwrite: bool, scene: dict | None = None
) -> None:
    """``jobs``: (stem, rgb path or None, agl path, vflow path) -> ``OUT/{stem}_figure.png``.

    Scenes (``geopose.rectify.is_scene``: larger than 2048 px, multi-band or 16-bit, .vrt,
    ``scene`` bands/stretch given) are read decimated to at most 2048 px a side."""
    from rich.progress import Progress

    from geopose.errors import OutputExistsError
    from geopose.io import read_agl, read_rgb, read_vflow
    from geopose.rectify import is_scene
    from geopose.viz import image_figure, save_figure

    scene = scene or {"bands": None, "stretch": None, "nodata": None}

    targets = [out / f"{stem}_figure.png" for stem, *_ in jobs]
    if not overwrite:
        for t in targets:
            if t.exists():
                raise OutputExistsError(t)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("figures", total=len(jobs))
        for (stem, rgb_p, agl_p, vflow_p), target in zip(jobs, targets, strict=True):
            if is_scene(rgb_p, agl_p, scene["bands"], scene["stretch"]):
                fig = _scene_figure(stem, rgb_p, agl_p, vflow_p, truth, scene)
                save_figure(fig, target, overwrite=overwrite)
                bar.advance(task)
                continue
            rgb = read_rgb(rgb_p) if rgb_p is not None else None
            angle, scale = read_vflow(vflow_p)
            fig = image_figure(
                rgb, read_agl(agl_p), angle, scale, title=stem, truth=_truth_for(truth, stem)
            )
            save_figure(fig, target, overwrite=overwrite)
            bar.advance(task)
    console.print(f"{len(jobs)} image figure(s) in {out}", highlight=False)


def _find_log(log: Path) -> Path:
    """A metrics.csv file, or the newest ``metrics.csv`` below a run folder."""
    from geopose.errors import GeoposeDataError

    if log.is_dir():
        found = sorted(log.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise GeoposeDataError(log, "no metrics.csv below this run folder")
        return found[-1]
    return log


def _read_scores(path: Path) -> dict:
    import json

    from geopose.errors import GeoposeDataError
    from geopose.viz.figures import city_table

    try:
        scores = json.loads(path.read_text())
        city_table(scores)
    except FileNotFoundError as exc:
        raise GeoposeDataError(path, "file not found") from exc
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise GeoposeDataError(path, f"not a geopose evaluate --json result ({exc})") from exc
    return scores


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
    bands: str | None = typer.Option(
        None,
        "--bands",
        help="Scene bands shown as R,G,B (1-based, e.g. 3,2,1).",
        show_default=False,
    ),
    stretch: str | None = typer.Option(
        None,
        "--stretch",
        help="Scene DN -> 8-bit: auto, none, pLOW-HIGH (p2-98), minmax.",
        show_default=False,
    ),
    nodata: float | None = typer.Option(
        None,
        "--nodata",
        help="DN meaning no data in a scene (default: the file's).",
        show_default=False,
    ),
) -> None:
    """Draw figures: per image RGB | AGL | MAG | flow arrows | rectified RGB | rectified AGL
    (with --truth also error maps and a predicted-vs-true height hexbin), per-city score bars,
    training curves. Writes OUT/{stem}_figure.png, OUT/scores.png, OUT/training.png.
    Scenes (large, multi-band, 16-bit, .vrt) are read decimated from their overviews."""
    from geopose.cli.predict import scene_options
    from geopose.io import agl_name, vflow_name

    band_list, stretch = scene_options(bands, stretch)
    scene = {"bands": band_list, "stretch": stretch, "nodata": nodata}

    jobs: list[tuple] = []
    if pred is not None:
        if rgb is not None or agl is not None or vflow is not None:
            fail("use either RGB --agl --vflow (one image) or --pred [--images] (a folder)")
        from geopose.io import prediction_stems
        from geopose.rectify import find_image

        stems = prediction_stems(pred)
        if not stems:
            fail(f"{pred}: no complete prediction ({{stem}}_AGL.tif + {{stem}}_VFLOW.json)")
        stems = stems[:limit] if limit > 0 else stems
        for s in stems:
            rgb_p = find_image(images, s) if images is not None else None
            jobs.append((s, rgb_p, pred / agl_name(s), pred / vflow_name(s)))
    elif agl is not None or vflow is not None or rgb is not None:
        if agl is None or vflow is None:
            fail("one image needs --agl AGL.tif and --vflow VFLOW.json")
        jobs.append((_stem_of(rgb if rgb is not None else agl), rgb, agl, vflow))
    elif images is not None:
        fail("--images needs --pred PRED_DIR")
    if not jobs and scores is None and log is None:
        fail("nothing to show: give an image (RGB --agl --vflow), --pred, --scores or --log")
    from geopose.errors import OutputExistsError
    from geopose.io import check_output_dir
    from geopose.viz import save_figure, score_bars, training_curves

    check_output_dir(out)
    extra = {"scores.png": scores, "training.png": log}
    for name, src in extra.items():
        if src is not None and not overwrite and (out / name).exists():
            raise OutputExistsError(out / name)
    if jobs:
        _image_figures(jobs, truth, out, overwrite, scene)
    if scores is not None:
        fig = score_bars(_read_scores(scores), title=f"Scores per city: {scores.name}")
        console.print(f"{save_figure(fig, out / 'scores.png', overwrite)}", highlight=False)
    if log is not None:
        fig = training_curves(_find_log(log))
        console.print(f"{save_figure(fig, out / 'training.png', overwrite)}", highlight=False)
