"""``geopose predict`` as a function: models and a folder of images -> predictions (and a
submission), sharded over the ranks of a torchrun job when there is one.

:func:`run_predict` takes the models as the command does (files, published model or ensemble
names, an ensemble YAML; :func:`resolve_members`), picks the TTA (:func:`choose_tta`) and the
device (:func:`choose_device`), and reports progress through one
:data:`~geopose.types.ProgressFn`: stage ``images`` counts this rank's images, and a scene's
inner stages are ``"{stem}: predict"`` (tiles), ``"{stem}: flow"`` and ``"{stem}: rectify"``
(:func:`scene_stage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from geopose.errors import ConfigError, GeoposeDataError, OutputExistsError
from geopose.inference import distributed as dist
from geopose.inference.ensemble import Member, read_ensemble_spec
from geopose.inference.predictor import ImageJob, Predictor, RunSummary, predict_jobs, resolve_jobs
from geopose.inference.scene import SCENE_TILE, predict_scene_jobs
from geopose.io import check_output_dir, check_output_file, pack_submission
from geopose.models.zoo.catalog import TTA_MODES

if TYPE_CHECKING:
    from geopose.types import ProgressFn

IMAGES_STAGE = "images"
"""The progress stage that counts a rank's images (``on_progress("images", done, total)``)."""

DEFAULT_TTA = "d4"
"""The TTA of a run that names none and no published ensemble."""

Model = str | Path | tuple[str | Path, float]
"""A model of a run: a file or a published model / ensemble name, or ``(that, weight)``."""


def scene_stage(stem: str, stage: str) -> str:
    """The progress stage of ``stage`` (``predict``, ``flow``, ``rectify``) inside scene
    ``stem``: ``"{stem}: {stage}"``."""
    return f"{stem}: {stage}"


def resolve_members(
    models: Sequence[Model] = (), ensemble: str | Path | None = None
) -> tuple[list[Member], str | None]:
    """The models of a run -> ``(members, authors_tta)``.

    ``models`` (weight 1 unless given as ``(spec, weight)``) have their published ensemble
    names expanded (:func:`geopose.models.expand_specs`); the ``ensemble`` YAML spec's members
    follow. Every member must be a file or a downloaded published model: a missing one raises
    :class:`~geopose.errors.GeoposeDataError` saying how to get it; no model at all raises
    :class:`~geopose.errors.ConfigError`. ``authors_tta`` is the TTA of the first published
    ensemble named, else None.
    """
    from geopose.models import expand_specs, resolve_spec

    specs = [m if isinstance(m, tuple) else (m, 1.0) for m in models]
    members, authors_tta = expand_specs(specs)
    if ensemble is not None:
        members += read_ensemble_spec(ensemble)
    if not members:
        raise ConfigError(
            "give at least one model (a checkpoint, a published model name or file), or "
            "--ensemble spec.yaml"
        )
    for spec, _ in members:
        resolve_spec(spec)  # a missing file or an undownloaded name stops here, with its fix
    return members, authors_tta


def choose_tta(
    tta: str | None, authors_tta: str | None = None, configs: Sequence[dict] = ()
) -> str:
    """The TTA of a run: ``tta`` when given (one of :data:`TTA_MODES`, else
    :class:`~geopose.errors.ConfigError`), else the authors' of a published ensemble, else
    the one the models' training ``configs`` suit (:func:`~geopose.inference.tta.learned_tta`:
    :data:`DEFAULT_TTA`, or ``none`` for a model trained without D4 augmentation)."""
    from geopose.inference.tta import learned_tta

    check_tta(tta)
    return tta or authors_tta or learned_tta(configs)


def check_tta(tta: str | None) -> None:
    """:class:`~geopose.errors.ConfigError` unless ``tta`` is None or one of :data:`TTA_MODES`."""
    if tta is not None and tta not in TTA_MODES:
        raise ConfigError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")


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
    tta: str = DEFAULT_TTA
    """The TTA run (:func:`choose_tta`)."""
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


def _merge(a: RunSummary, b: RunSummary) -> RunSummary:
    """One rank's summary of its whole images and its scenes."""
    return RunSummary(
        written=a.written + b.written,
        skipped=a.skipped + b.skipped,
        redone=a.redone + b.redone,
        seconds=a.seconds + b.seconds,
        failed=a.failed + b.failed,
        no_direction=a.no_direction + b.no_direction,
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

    ``models`` and ``ensemble`` (a YAML spec) give the members (:func:`resolve_members`);
    ``tta`` None: the authors' TTA of a published ensemble, else the models' own (``d4``, or
    ``none`` for models trained without D4 augmentation; :func:`choose_tta`);
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
    members, authors_tta = resolve_members(models, ensemble)
    asked = tta or authors_tta  # None: what the models were trained for, once loaded
    device = choose_device(device)
    if scene_overlap is None:
        scene_overlap = max(16, scene_tile // 8)
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

        def load() -> Predictor:  # once, and only when an image needs predicting
            if not loaded:
                predictor, configs = Predictor.from_checkpoints(
                    members,
                    tta=asked or DEFAULT_TTA,
                    device=dev,
                    max_batch=batch,
                    tile_size=tile_size,
                    shrink_scale=shrink_scale,
                )
                predictor.tta = choose_tta(asked, None, configs)
                loaded.append(predictor)
            return loaded[0]

        finished = [0]

        def on_done(job: ImageJob, status: str) -> None:
            finished[0] += 1
            if on_progress is not None:
                on_progress(IMAGES_STAGE, finished[0], len(mine))

        def on_scene_progress(job: ImageJob, stage: str, done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(scene_stage(job.stem, stage), done, total)

        if on_progress is not None:
            on_progress(IMAGES_STAGE, 0, len(mine))
        whole = [j for j in mine if not j.scene]
        scenes = [j for j in mine if j.scene]
        summary = predict_jobs(load, whole, out_dir, overwrite=overwrite, on_done=on_done)
        if scenes:
            scene_summary, _ = predict_scene_jobs(
                load,
                scenes,
                out_dir,
                overwrite=overwrite,
                rectify=rectify,
                bands=bands,
                stretch=stretch,
                nodata=nodata,
                tile=scene_tile,
                overlap=scene_overlap,
                on_done=on_done,
                on_progress=on_scene_progress,
            )
            summary = _merge(summary, scene_summary)
        dist.barrier()
        summaries = dist.gather_to_main(summary, info)
        report = None
        if info.is_main:
            report = PredictReport(
                ranks=summaries,
                n_images=len(jobs) + len(unresolved),
                device=str(dev),
                members=list(members),
                tta=loaded[0].tta if loaded else asked or DEFAULT_TTA,
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
