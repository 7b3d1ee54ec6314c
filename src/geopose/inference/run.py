"""``geopose predict`` as a function: a folder of images -> predictions (and a submission),
sharded over the ranks of a torchrun job when there is one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geopose.errors import GeoposeDataError, OutputExistsError
from geopose.inference import distributed as dist
from geopose.inference.predictor import ImageJob, Predictor, RunSummary, predict_jobs, resolve_jobs
from geopose.inference.scene import SCENE_OVERLAP, SCENE_TILE, predict_scene_jobs
from geopose.io import check_output_dir, check_output_file, pack_submission


@dataclass
class PredictReport:
    """Rank 0's account of a run: every rank's summary, the images and the archive (if any)."""

    ranks: list[RunSummary]
    n_images: int
    device: str
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
    members: Sequence[tuple[str | Path, float]],
    images_dir: str | Path,
    out_dir: str | Path,
    tta: str = "d4",
    device: str = "cpu",
    batch: int = 8,
    tile_size: int = 2048,
    gsd: float | None = None,
    city: str | None = None,
    tar: str | Path | None = None,
    overwrite: bool = False,
    shrink_scale: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[ImageJob, str], None] | None = None,
    bands: tuple[int, ...] | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
    rectify: bool = False,
    scene_tile: int = SCENE_TILE,
    scene_overlap: int = SCENE_OVERLAP,
    on_scene_progress: Callable[[ImageJob, str, int, int], None] | None = None,
) -> PredictReport | None:
    """Predict every image of ``images_dir`` into ``out_dir``; see ``geopose predict --help``.

    Under torchrun each rank takes its shard of the stem-sorted images; rank 0 gathers the
    summaries, packs ``tar`` (if given) and validates it, and returns the report (other ranks
    return None). ``on_start(n)`` gets this rank's image count; ``on_done(job, status)`` follows
    each image.

    An image that cannot be read or has no GSD is left out and listed in ``report.failed``;
    the others are predicted, and ``tar`` is then not packed. An output folder (or ``tar``)
    that cannot be written raises :class:`~geopose.errors.OutputPathError` before anything.

    Scenes (``geopose.inference.predictor.is_scene_input``: georeferenced images that are not
    8-bit RGB or are larger than ``tile_size``, VRTs, every image when ``bands``/``stretch``
    is given, georeferenced images with ``rectify``) go through
    :func:`geopose.inference.scene.predict_scene` in ``scene_tile``-px tiles overlapping by
    ``scene_overlap`` px, read as ``Scene(path, bands, stretch, nodata)``; ``rectify`` also
    writes their nadir views. ``on_scene_progress(job, stage, done, total)`` follows the
    stages inside a scene.
    """
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
            tile_size=tile_size,
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
                loaded.append(
                    Predictor.from_checkpoints(
                        members,
                        tta=tta,
                        device=dev,
                        max_batch=batch,
                        tile_size=tile_size,
                        shrink_scale=shrink_scale,
                    )[0]
                )
            return loaded[0]

        if on_start is not None:
            on_start(len(mine))
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
