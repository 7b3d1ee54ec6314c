"""``geopose show``: figures of predictions, per-city scores and training curves as PNG files.

:func:`write_figures` writes ``OUT/{stem}_figure.png`` per image (RGB | AGL | MAG | flow arrows
| rectified RGB | rectified AGL, with truth also error maps and a height hexbin),
``OUT/scores.png`` (a ``geopose evaluate --json`` file) and ``OUT/training.png`` (a Lightning
``metrics.csv``). Scenes (large, multi-band, 16-bit, .vrt) are read decimated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from geopose.errors import ConfigError, GeoposeDataError, OutputExistsError
from geopose.io import (
    agl_name,
    check_output_dir,
    prediction_stems,
    read_agl,
    read_rgb,
    read_vflow,
    split_name,
    vflow_name,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from geopose.types import ProgressFn

FigureJob = tuple[str, Path | None, Path, Path]
"""One image figure: (stem, RGB path or None, AGL path, VFLOW path)."""


@dataclass
class Shown:
    """What :func:`write_figures` wrote: the image figures, ``scores.png``, ``training.png``."""

    figures: list[Path] = field(default_factory=list)
    scores: Path | None = None
    training: Path | None = None


def _stem_of(path: Path) -> str:
    parsed = split_name(path)
    return parsed[0] if parsed else path.name.split(".", 1)[0]


def figure_jobs(
    rgb: Path | None = None,
    agl: Path | None = None,
    vflow: Path | None = None,
    images: Path | None = None,
    pred: Path | None = None,
    limit: int = 0,
) -> list[FigureJob]:
    """The images to draw: one (``rgb`` optional, ``agl`` and ``vflow``), or the complete
    predictions of ``pred`` (the first ``limit``; 0: all) with their RGB from ``images``."""
    from geopose.io.inputs import find_image

    if pred is not None:
        if rgb is not None or agl is not None or vflow is not None:
            raise ConfigError(
                "use either RGB --agl --vflow (one image) or --pred [--images] (a folder)"
            )
        stems = prediction_stems(pred)
        if not stems:
            raise GeoposeDataError(
                pred, "no complete prediction ({stem}_AGL.tif + {stem}_VFLOW.json)"
            )
        stems = stems[:limit] if limit > 0 else stems
        jobs: list[FigureJob] = []
        for s in stems:
            rgb_p = find_image(images, s) if images is not None else None
            jobs.append((s, rgb_p, pred / agl_name(s), pred / vflow_name(s)))
        return jobs
    if agl is not None or vflow is not None or rgb is not None:
        if agl is None or vflow is None:
            raise ConfigError("one image needs --agl AGL.tif and --vflow VFLOW.json")
        return [(_stem_of(rgb if rgb is not None else agl), rgb, agl, vflow)]
    if images is not None:
        raise ConfigError("--images needs --pred PRED_DIR")
    return []


def _scene_figure(stem: str, rgb_p, agl_p, vflow_p, truth: Path | None, scene: dict) -> Figure:
    """The figure of a scene, read decimated (:func:`geopose.viz.figures.read_scene_for_figure`):
    scales (px/m) are multiplied by the decimation factor, truth read on the same grid."""
    from geopose.viz.figures import (
        Truth,
        image_figure,
        read_decimated_agl,
        read_scene_for_figure,
    )

    rgb, agl, factor = read_scene_for_figure(rgb_p, agl_p, **scene)
    angle, scale = read_vflow(vflow_p)
    true = None
    if truth is not None:
        t_agl, t_factor = read_decimated_agl(truth / agl_name(stem))
        t_angle, t_scale = read_vflow(truth / vflow_name(stem))
        true = Truth(t_agl, t_angle, t_scale * t_factor)
    title = stem if factor == 1 else f"{stem} (1:{1 / factor:.3g})"
    return image_figure(rgb, agl, angle, scale * factor, title=title, truth=true)


def _image_figure(job: FigureJob, truth: Path | None, scene: dict) -> Figure:
    """The figure of one image; scenes (``geopose.io.inputs.is_scene``) read decimated."""
    from geopose.io.inputs import prediction_is_scene
    from geopose.viz.figures import image_figure
    from geopose.viz.report import read_truth

    stem, rgb_p, agl_p, vflow_p = job
    if prediction_is_scene(rgb_p, agl_p, scene["bands"], scene["stretch"]):
        return _scene_figure(stem, rgb_p, agl_p, vflow_p, truth, scene)
    rgb = read_rgb(rgb_p) if rgb_p is not None else None
    angle, scale = read_vflow(vflow_p)
    true = None if truth is None else read_truth(truth, stem)
    return image_figure(rgb, read_agl(agl_p), angle, scale, title=stem, truth=true)


def find_log(log: Path) -> Path:
    """A metrics.csv file, or the newest ``metrics.csv`` below a run folder."""
    if log.is_dir():
        found = sorted(log.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise GeoposeDataError(log, "no metrics.csv below this run folder")
        return found[-1]
    return log


def read_scores(path: Path) -> dict:
    """A ``geopose evaluate --json`` result (:class:`GeoposeDataError` if it is not one)."""
    from geopose.viz.figures import city_table

    try:
        scores = json.loads(path.read_text())
        city_table(scores)
    except FileNotFoundError as exc:
        raise GeoposeDataError(path, "file not found") from exc
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise GeoposeDataError(path, f"not a geopose evaluate --json result ({exc})") from exc
    return scores


def write_figures(
    out: str | Path,
    rgb: Path | None = None,
    agl: Path | None = None,
    vflow: Path | None = None,
    images: Path | None = None,
    pred: Path | None = None,
    truth: Path | None = None,
    scores: Path | None = None,
    log: Path | None = None,
    limit: int = 0,
    overwrite: bool = False,
    bands: Sequence[int] | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
    on_progress: ProgressFn | None = None,
) -> Shown:
    """Draw what is given into ``out`` (see the module docstring); returns what was written.

    Images: as :func:`figure_jobs`; ``truth``: a folder of true ``{stem}_AGL.tif`` +
    ``_VFLOW.json`` (adds error panels); ``scores``: a ``geopose evaluate --json`` file;
    ``log``: a ``metrics.csv`` or a run folder (its newest). ``bands``, ``stretch`` and
    ``nodata`` read scenes. Nothing is drawn when an output exists (:class:`OutputExistsError`,
    unless ``overwrite``) or cannot be written. ``on_progress("figures", done, total)``
    follows the image figures.
    """
    from geopose.viz.figures import save_figure, score_bars, training_curves

    out = Path(out)
    jobs = figure_jobs(rgb, agl, vflow, images, pred, limit)
    if not jobs and scores is None and log is None:
        raise ConfigError(
            "nothing to show: give an image (RGB --agl --vflow), --pred, --scores or --log"
        )
    check_output_dir(out)
    targets = [out / f"{stem}_figure.png" for stem, *_ in jobs]
    extra = {"scores.png": scores, "training.png": log}
    if not overwrite:
        for target in [out / n for n, src in extra.items() if src is not None] + targets:
            if target.exists():
                raise OutputExistsError(target)
    scene = {"bands": bands, "stretch": stretch, "nodata": nodata}
    shown = Shown()
    if on_progress is not None and jobs:
        on_progress("figures", 0, len(jobs))
    for done, (job, target) in enumerate(zip(jobs, targets, strict=True), 1):
        shown.figures.append(save_figure(_image_figure(job, truth, scene), target, overwrite))
        if on_progress is not None:
            on_progress("figures", done, len(jobs))
    if scores is not None:
        fig = score_bars(read_scores(scores), title=f"Scores per city: {scores.name}")
        shown.scores = save_figure(fig, out / "scores.png", overwrite)
    if log is not None:
        shown.training = save_figure(
            training_curves(find_log(log)), out / "training.png", overwrite
        )
    return shown
