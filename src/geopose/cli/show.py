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


def _image_figures(jobs: list[tuple], truth: Path | None, out: Path, overwrite: bool) -> None:
    """``jobs``: (stem, rgb path or None, agl path, vflow path) -> ``OUT/{stem}_figure.png``."""
    from rich.progress import Progress

    from geopose.errors import OutputExistsError
    from geopose.io import read_agl, read_rgb, read_vflow
    from geopose.viz import image_figure, save_figure

    targets = [out / f"{stem}_figure.png" for stem, *_ in jobs]
    if not overwrite:
        for t in targets:
            if t.exists():
                raise OutputExistsError(t)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("figures", total=len(jobs))
        for (stem, rgb_p, agl_p, vflow_p), target in zip(jobs, targets, strict=True):
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
) -> None:
    """Draw figures: per image RGB | AGL | MAG | flow arrows | rectified RGB | rectified AGL
    (with --truth also error maps and a predicted-vs-true height hexbin), per-city score bars,
    training curves. Writes OUT/{stem}_figure.png, OUT/scores.png, OUT/training.png."""
    from geopose.io import agl_name, vflow_name

    jobs: list[tuple] = []
    if pred is not None:
        if rgb is not None or agl is not None or vflow is not None:
            fail("use either RGB --agl --vflow (one image) or --pred [--images] (a folder)")
        from geopose.io import find_rgb, prediction_stems

        stems = prediction_stems(pred)
        if not stems:
            fail(f"{pred}: no complete prediction ({{stem}}_AGL.tif + {{stem}}_VFLOW.json)")
        stems = stems[:limit] if limit > 0 else stems
        for s in stems:
            rgb_p = find_rgb(images, s) if images is not None else None
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
        _image_figures(jobs, truth, out, overwrite)
    if scores is not None:
        fig = score_bars(_read_scores(scores), title=f"Scores per city: {scores.name}")
        console.print(f"{save_figure(fig, out / 'scores.png', overwrite)}", highlight=False)
    if log is not None:
        fig = training_curves(_find_log(log))
        console.print(f"{save_figure(fig, out / 'training.png', overwrite)}", highlight=False)
