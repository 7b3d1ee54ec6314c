"""Predict a folder: its images as jobs (GSD, city, whole image or scene), and one loop that
predicts and writes each job, skipping what is done.

GSD (m/px) and city of an image come, in this order, from ``metadata.csv`` in the images folder
or its parent (the competition layout), from a georeferenced GeoTIFF's transform (pixel size;
city unknown), or from the caller's defaults (``--gsd``/``--city``). A missing GSD is an error
naming the image, never a silent default. Whether an image is a scene is
``geopose.io.inputs.is_scene``.

Outputs per image ``{stem}``:

- plain images: ``{stem}_AGL.tif`` (uint16 cm, deflate) and ``{stem}_VFLOW.json`` (competition);
- small georeferenced GeoTIFFs: ``{stem}_AGL.tif`` float32 metres and ``{stem}_FLOW.tif`` 2-band
  float32 ``(dx, dy)`` px flow (``agl · scale · (sin a, cos a)``), both with the input's CRS and
  transform, and ``{stem}_VFLOW.json`` (angle rad, scale px/cm);
- scenes: the same files as tiled COGs with overviews (``geopose.inference.scene``), with the
  nadir views when asked for.

The json is written last: an image whose json exists and parses has complete outputs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geopose.errors import ConfigError, GeoposeDataError
from geopose.geometry import flow_from_agl
from geopose.inference.predictor import Predictor
from geopose.inference.scene import SCENE_OVERLAP, SCENE_TILE, predict_scene, scene_output_paths
from geopose.io import (
    Georef,
    agl_name,
    city_of,
    ensure_output_dir,
    flow_name,
    georef_gsd,
    read_agl,
    read_rgb,
    read_vflow,
    vflow_name,
    write_geotiff,
    write_prediction,
    write_vflow,
)
from geopose.io.inputs import (
    IMAGE_SUFFIXES,
    find_images,
    image_georef,
    image_stem,
    is_scene,
    metadata_lookup,
)
from geopose.types import ImagePrediction, city_index

# --- finding images and their GSD / city ------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    """One image to predict: path, output stem, GSD (m/px), city index (-1 unknown), and the
    georeference (CRS, transform; ``geopose.io.Georef``) of a GeoTIFF input."""

    path: Path
    stem: str
    gsd: float
    city: int
    georef: Georef | None = None
    scene: bool = False
    """Predicted as a scene (windowed, any bands and bit depth, COG outputs) instead of whole
    in memory: ``geopose.io.inputs.is_scene``."""


def resolve_jobs(
    images_dir: str | Path,
    gsd: float | None = None,
    city: str | int | None = None,
    failed: list[tuple[str, str]] | None = None,
    bands: Sequence[int] | None = None,
    stretch: str | None = None,
    rectify: bool = False,
) -> list[ImageJob]:
    """Every image of ``images_dir`` with its GSD and city (see the module doc), sorted by stem.

    Raises :class:`GeoposeDataError` for a folder without images, two images with one output
    name, and (when ``failed`` is None) the first image without a GSD; given a list
    ``failed``, images without a GSD are appended to it as ``(stem, reason)`` and left out.
    ``bands``, ``stretch`` and ``rectify`` (nadir views asked for) enter the scene rule
    (``geopose.io.inputs.is_scene``), which marks the jobs predicted as scenes.
    """
    images_dir = Path(images_dir)
    paths = find_images(images_dir)
    if not paths:
        raise GeoposeDataError(images_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    meta = metadata_lookup(images_dir)
    jobs, stems = [], {}
    for path in paths:
        stem = image_stem(path)
        if stem in stems:
            raise GeoposeDataError(path, f"same output name {stem!r} as {stems[stem].name}")
        stems[stem] = path
        georef = image_georef(path)
        scene = is_scene(path, bands, stretch, nadir=rectify)
        if stem in meta:
            m_city, m_gsd = meta[stem]
            jobs.append(ImageJob(path, stem, m_gsd, city_index(m_city), georef, scene))
            continue
        g = (georef_gsd(georef) if georef is not None else None) or gsd
        if g is None or not g > 0:
            exc = GeoposeDataError(
                path,
                "no GSD: not in metadata.csv (images folder or its parent), not a GeoTIFF with a "
                "pixel size in metres; pass --gsd M_PER_PX",
            )
            if failed is None:
                raise exc
            failed.append((stem, str(exc)))
            continue
        c = city_index(city)
        if c < 0 and georef is None:
            c = city_index(city_of(stem))
        jobs.append(ImageJob(path, stem, float(g), c, georef, scene))
    return sorted(jobs, key=lambda j: j.stem)


# --- outputs ----------------------------------------------------------------------------------


def output_paths(job: ImageJob, out_dir: Path) -> list[Path]:
    """The files a job writes (the VFLOW json last)."""
    files = [out_dir / agl_name(job.stem)]
    if job.georef is not None:
        files.append(out_dir / flow_name(job.stem))
    return [*files, out_dir / vflow_name(job.stem)]


def outputs_valid(job: ImageJob, out_dir: Path) -> bool:
    """True when every output of ``job`` exists and reads back (json parses, rasters open)."""
    paths = output_paths(job, out_dir)
    if not all(p.is_file() for p in paths):
        return False
    try:
        read_vflow(paths[-1])
        agl = read_agl(paths[0])
        if job.georef is not None:
            import rasterio

            with rasterio.open(paths[1]) as src:
                if src.count != 2 or (src.height, src.width) != agl.shape:
                    return False
    except Exception:  # any unreadable output means "redo it"
        return False
    return True


def write_outputs(
    job: ImageJob, pred: ImagePrediction, out_dir: Path, overwrite: bool
) -> list[Path]:
    """Write a job's outputs (competition files, or GeoTIFFs for georeferenced input)."""
    if job.georef is None:
        return list(
            write_prediction(out_dir, job.stem, pred.agl, pred.angle, pred.scale, overwrite)
        )
    paths = output_paths(job, out_dir)
    nan = float("nan")
    write_geotiff(paths[0], pred.agl[None].astype(np.float32), job.georef, nan, overwrite)
    flow = np.moveaxis(flow_from_agl(pred.agl, pred.angle, pred.scale), -1, 0)
    write_geotiff(paths[1], flow.astype(np.float32), job.georef, nan, overwrite)
    write_vflow(paths[2], pred.angle, pred.scale, overwrite)
    return paths


@dataclass
class RunSummary:
    """What a run did: stems written, skipped (valid outputs there), redone (invalid ones), and
    failed: ``(stem, reason)`` of the images that could not be read (nothing written for them;
    a re-run tries them again)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    no_direction: list[str] = field(default_factory=list)
    """Stems written with no direction evidence (zero flow: scale 0, angle 0 as a label)."""


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job: ``status`` ``written``, ``skipped`` (valid outputs there) or
    ``failed`` (its input could not be read); ``model_seconds`` spent in the model (s)."""

    status: str
    model_seconds: float = 0.0


@dataclass(frozen=True)
class SceneOptions:
    """How scene jobs are read and predicted: display ``bands`` and ``stretch`` of the scene
    reader (``geopose.io.scene.Scene``; stretch None: ``auto``), its ``nodata`` DN, tile side
    and least overlap (px), and whether the nadir views are written too (``rectify``)."""

    bands: tuple[int, ...] | None = None
    stretch: str | None = None
    nodata: float | None = None
    tile: int = SCENE_TILE
    overlap: int = SCENE_OVERLAP
    rectify: bool = False


def job_outputs(job: ImageJob, out_dir: Path, rectify: bool = False) -> list[Path]:
    """The files a job writes, the VFLOW json last (a scene's with its nadir views when
    ``rectify``)."""
    if job.scene:
        return list(scene_output_paths(out_dir, job.stem, rectify).values())
    return output_paths(job, out_dir)


def job_done(job: ImageJob, out_dir: Path, rectify: bool = False) -> bool:
    """True when every output of ``job`` is there and reads back (a scene's rasters appear
    only complete: their presence and a parsing json suffice)."""
    if not job.scene:
        return outputs_valid(job, out_dir)
    paths = job_outputs(job, out_dir, rectify)
    try:
        read_vflow(paths[-1])
    except GeoposeDataError:
        return False
    return all(p.is_file() for p in paths)


Progress = Callable[[ImageJob, str, int, int], None]
"""``on_progress(job, stage, done, total)``: the stages inside a scene (``predict`` tiles,
``flow``, ``rectify``)."""


def predict_jobs(
    predictor: Predictor | Callable[[], Predictor],
    jobs: Iterable[ImageJob],
    out_dir: str | Path,
    overwrite: bool = False,
    scenes: SceneOptions | None = None,
    on_done: Callable[[ImageJob, JobOutcome], None] | None = None,
    on_progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RunSummary:
    """Predict and write each job, whole images and scenes alike; a job with valid outputs is
    skipped unless ``overwrite``, invalid (partial, corrupt) outputs are replaced.

    ``predictor`` may be a zero-argument callable giving the predictor for the next job that
    needs predicting (called only then, so a finished folder loads no model; it caches what it
    loads). An image that cannot be read (:class:`GeoposeDataError`; for a scene also bands or
    a stretch that do not fit it) goes to ``summary.failed`` and the run goes on; any other
    error, a model that cannot be loaded included, stops it. ``scenes``: how scene jobs are
    read and predicted. ``on_done(job, outcome)`` follows each job; ``on_progress`` the stages
    inside a scene; ``clock`` (s) times a whole image's model call for ``outcome``.
    """
    out_dir = Path(out_dir)
    scenes = scenes or SceneOptions()
    summary = RunSummary()
    made = False  # the folder is made (and cleared of killed runs' temporary files) once
    t0 = time.perf_counter()

    def model() -> Predictor:
        return predictor if isinstance(predictor, Predictor) else predictor()

    for job in jobs:
        if not overwrite and job_done(job, out_dir, scenes.rectify):
            summary.skipped.append(job.stem)
            outcome = JobOutcome("skipped")
        else:
            stale = any(p.exists() for p in job_outputs(job, out_dir, scenes.rectify))
            try:
                if job.scene:
                    progress = functools.partial(on_progress, job) if on_progress else None
                    known, seconds = _predict_scene(
                        model, job, out_dir, overwrite, scenes, progress
                    )
                else:
                    rgb = read_rgb(job.path)
                    current = model()
                    t = clock()
                    pred = current.predict(rgb, job.gsd, job.city)
                    known, seconds = pred.direction_known, clock() - t
                    if not made:
                        ensure_output_dir(out_dir)
                        made = True
                    write_outputs(job, pred, out_dir, overwrite=overwrite or stale)
            except _JobInputError as exc:
                summary.failed.append((job.stem, str(exc.error)))
                outcome = JobOutcome("failed")
            except GeoposeDataError as exc:
                if exc.path != job.path:
                    raise
                summary.failed.append((job.stem, str(exc)))
                outcome = JobOutcome("failed")
            else:
                summary.written.append(job.stem)
                if stale and not overwrite:
                    summary.redone.append(job.stem)
                if not known:
                    summary.no_direction.append(job.stem)
                outcome = JobOutcome("written", seconds)
        if on_done is not None:
            on_done(job, outcome)
    summary.seconds = time.perf_counter() - t0
    return summary


class _JobInputError(Exception):
    """A scene's input that cannot be read as asked (carries the one-line error)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _predict_scene(
    model: Callable[[], Predictor],
    job: ImageJob,
    out_dir: Path,
    overwrite: bool,
    opts: SceneOptions,
    on_progress: Callable[[str, int, int], None] | None,
) -> tuple[bool, float]:
    """Predict one scene window by window -> (direction known, model seconds). A scene that
    cannot be opened as asked, or whose file fails on a read, raises :class:`_JobInputError`."""
    from geopose.io.scene import Scene

    try:
        scene = Scene(
            job.path, bands=opts.bands, stretch=opts.stretch or "auto", nodata=opts.nodata
        )
    except (GeoposeDataError, ConfigError) as exc:
        raise _JobInputError(exc) from exc
    with scene:
        current = model()
        try:
            res = predict_scene(
                current,
                scene,
                out_dir,
                job.stem,
                city=job.city,
                tile=opts.tile,
                overlap=opts.overlap,
                overwrite=overwrite,
                rectify=opts.rectify,
                on_progress=on_progress,
                gsd=job.gsd,
            )
        except GeoposeDataError as exc:  # a damaged file fails on its first read
            raise _JobInputError(exc) from exc
    return res.direction_known, res.model_seconds
