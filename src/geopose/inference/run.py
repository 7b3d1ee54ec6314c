"""``geopose predict`` as a function: models and a folder of images -> predictions (and a
submission), sharded over the ranks of a torchrun job when there is one.

:func:`run_predict` takes the models as the command does (files, published model or ensemble
names, an ensemble YAML: ``geopose.models.loading.resolve_models``), the TTA
(``geopose.inference.tta.choose_tta``, once the models are loaded) and the device
(:func:`choose_device`), and reports progress through one :data:`~geopose.types.ProgressFn`:
stage ``images`` counts this rank's images, and a scene's inner stages are
``"{stem}: predict"`` (tiles), ``"{stem}: flow"`` and ``"{stem}: rectify"`` (:func:`scene_stage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import geopose.inference.distributed as dist
from geopose.errors import ConfigError, GeoposeDataError, OutputExistsError
from geopose.inference.jobs import (
    ImageJob,
    JobOutcome,
    RunSummary,
    SceneOptions,
    predict_jobs,
    resolve_jobs,
)
from geopose.inference.predictor import Predictor
from geopose.inference.scene import SCENE_TILE
from geopose.inference.tta import check_tta, choose_tta
from geopose.io import check_output_dir, check_output_file, pack_submission
from geopose.models.loading import Member, load_models, resolve_models

if TYPE_CHECKING:
    from geopose.types import ProgressFn

IMAGES_STAGE = "images"
"""The progress stage that counts a rank's images (``on_progress("images", done, total)``)."""

Model = str | Path | tuple[str | Path, float]
"""A model of a run: a file or a published model / ensemble name, or ``(that, weight)``."""


def scene_stage(stem: str, stage: str) -> str:
    """The progress stage of ``stage`` (``predict``, ``flow``, ``rectify``) inside scene
    ``stem``: ``"{stem}: {stage}"``."""
    return f"{stem}: {stage}"


def choose_device(device: str | None) -> str:
    """``device``, or ``cuda`` when available else ``cpu``; a CUDA device asked for where
    there is none raises :class:`~geopose.errors.ConfigError`."""
    import torch

    available = torch.cuda.is_available()
    device = device or ("cuda" if available else "cpu")
    if device.startswith("cuda") and not available:
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    return device


@dataclass
class PredictReport:
    """Rank 0's account of a run: every rank's summary, the images and the archive (if any)."""

    ranks: list[RunSummary]
    n_images: int
    device: str
    members: list[Member] = field(default_factory=list)
    """The weighted models run (published ensembles expanded)."""
    tta: str | None = None
    """The TTA run (``geopose.inference.tta.choose_tta``); None when no image needed a model."""
    warnings: list[str] = field(default_factory=list)
    """One line each: the TTA asked for gives the models views they never trained on."""
    tar: Path | None = None
    problems: list[str] = field(default_factory=list)
    unresolved: list[tuple[str, str]] = field(default_factory=list)
    """``(stem, reason)`` of the images left out before predicting (no GSD)."""
    packed: bool = False
    """True when ``tar`` was packed (not when an image failed)."""

    @property
    def written(self) -> list[str]:
        """Stems written by any rank."""
        return [s for r in self.ranks for s in r.written]

    @property
    def skipped(self) -> list[str]:
        """Stems skipped (valid outputs were there) by any rank."""
        return [s for r in self.ranks for s in r.skipped]

    @property
    def failed(self) -> list[tuple[str, str]]:
        """``(stem, reason)`` of every image not predicted because of its input, by stem."""
        return sorted([*self.unresolved, *(f for r in self.ranks for f in r.failed)])


def _check_tar(jobs: Sequence[ImageJob], tar: Path, overwrite: bool) -> None:
    if tar.exists() and not overwrite:
        raise OutputExistsError(tar)
    geo = [j.path for j in jobs if j.georef is not None or j.scene]
    if geo:
        raise GeoposeDataError(
            geo[0],
            "georeferenced input gives GeoTIFF outputs, not a competition submission (--tar)",
        )


def _pack_and_validate(out_dir: Path, tar: Path, images_dir: Path, overwrite: bool) -> list[str]:
    from geopose.validate import validate_submission

    pack_submission(out_dir, tar, overwrite=overwrite)
    return [str(p) for p in validate_submission(tar, images=images_dir)]


def run_predict(
    models: Sequence[Model],
    images_dir: str | Path,
    out_dir: str | Path,
    tta: str | None = None,
    device: str | None = None,
    batch: int = 8,
    tile_size: int = 2048,
    gsd: float | None = None,
    city: str | None = None,
    tar: str | Path | None = None,
    overwrite: bool = False,
    shrink_scale: bool = False,
    ensemble: str | Path | None = None,
    bands: tuple[int, ...] | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
    rectify: bool = False,
    scene_tile: int = SCENE_TILE,
    scene_overlap: int | None = None,
    on_progress: ProgressFn | None = None,
) -> PredictReport | None:
    """Predict every image of ``images_dir`` into ``out_dir``; see ``geopose predict --help``.

    ``models`` and ``ensemble`` (a YAML spec) give the members
    (``geopose.models.loading.resolve_models``); ``tta`` None: the authors' TTA of a published
    ensemble, else the models' own (``d4``, or ``none`` for models trained without D4
    augmentation; ``geopose.inference.tta.choose_tta``, with a warning in the report when an
    asked TTA gives the models views they never trained on);
    ``device`` None: CUDA when available (:func:`choose_device`). These are checked first, in
    this order (one-line :class:`~geopose.errors.GeoposeError`), before anything is written.

    Under torchrun each rank takes its shard of the stem-sorted images; rank 0 gathers the
    summaries, packs ``tar`` (if given) and validates it, and returns the report (other ranks
    return None). ``on_progress(stage, done, total)``: stage ``images`` counts this rank's
    images (``(0, n)`` first, then one step per image), scene stages as in the module doc.

    An image that cannot be read or has no GSD is left out and listed in ``report.failed``;
    the others are predicted, and ``tar`` is then not packed. An output folder (or ``tar``)
    that cannot be written raises :class:`~geopose.errors.OutputPathError` before anything.

    Scenes (``geopose.io.inputs.is_scene``: larger than 2048 px, georeferenced and larger
    than 1024 px, not 8-bit RGB, VRTs, every image when ``bands``/``stretch`` is given,
    georeferenced images with ``rectify``) go through
    :func:`geopose.inference.scene.predict_scene` in ``scene_tile``-px tiles overlapping by
    ``scene_overlap`` px (None: ``max(16, scene_tile // 8)``), read as ``Scene(path, bands,
    stretch, nodata)``; ``rectify`` also writes their nadir views.
    """
    check_tta(tta)
    specs = resolve_models(models, ensemble)
    device = choose_device(device)
    scenes = SceneOptions(
        bands=bands,
        stretch=stretch,
        nodata=nodata,
        tile=scene_tile,
        overlap=max(16, scene_tile // 8) if scene_overlap is None else scene_overlap,
        rectify=rectify,
    )
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    check_output_dir(out_dir)
    if tar is not None:
        check_output_file(tar)
    info, dev = dist.init_distributed(device)
    try:
        unresolved: list[tuple[str, str]] = []
        jobs = resolve_jobs(
            images_dir,
            gsd=gsd,
            city=city,
            failed=unresolved,
            bands=bands,
            stretch=stretch,
            rectify=rectify,
        )
        if tar is not None:
            _check_tar(jobs, Path(tar), overwrite)
        mine = dist.shard(jobs, info.rank, info.world_size)

        loaded: list[Predictor] = []
        warnings: list[str] = []

        def load() -> Predictor:  # once, and only when an image needs predicting
            if not loaded:
                got = load_models(specs.members)
                choice = choose_tta(tta, specs.authors_tta, got.configs)
                warnings.extend([choice.warning] if choice.warning else [])
                loaded.append(
                    Predictor(
                        got.models,
                        got.weights,
                        tta=choice.mode,
                        device=dev,
                        max_batch=batch,
                        tile_size=tile_size,
                        shrink_scale=shrink_scale,
                    )
                )
            return loaded[0]

        finished = [0]

        def on_done(job: ImageJob, outcome: JobOutcome) -> None:
            finished[0] += 1
            if on_progress is not None:
                on_progress(IMAGES_STAGE, finished[0], len(mine))

        def on_scene_progress(job: ImageJob, stage: str, done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(scene_stage(job.stem, stage), done, total)

        if on_progress is not None:
            on_progress(IMAGES_STAGE, 0, len(mine))
        summary = predict_jobs(
            load,
            mine,
            out_dir,
            overwrite=overwrite,
            scenes=scenes,
            on_done=on_done,
            on_progress=on_scene_progress,
        )
        dist.barrier()
        summaries = dist.gather_to_main(summary, info)
        report = None
        if info.is_main:
            report = PredictReport(
                ranks=summaries,
                n_images=len(jobs) + len(unresolved),
                device=str(dev),
                members=list(specs.members),
                tta=loaded[0].tta if loaded else None,
                warnings=warnings,
                unresolved=unresolved,
            )
            if tar is not None:
                report.tar = Path(tar)
                if not report.failed:
                    report.problems = _pack_and_validate(out_dir, Path(tar), images_dir, overwrite)
                    report.packed = True
        dist.barrier()
        return report
    finally:
        dist.finalize()
