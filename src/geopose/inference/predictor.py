"""Predict a folder of images: find each image's GSD/city, run the (ensembled, TTA, tiled)
model, write competition or GeoTIFF outputs atomically, skip what is already done.

GSD (m/px) and city of an image come, in this order, from ``metadata.csv`` in the images folder
or its parent (the competition layout), from a georeferenced GeoTIFF's transform (pixel size;
city unknown), or from the caller's defaults (``--gsd``/``--city``). A missing GSD is an error
naming the image, never a silent default.

Outputs per image ``{stem}``:
- plain images: ``{stem}_AGL.tif`` (uint16 cm, deflate) and ``{stem}_VFLOW.json`` (competition);
- georeferenced GeoTIFFs: ``{stem}_AGL.tif`` float32 metres and ``{stem}_FLOW.tif`` 2-band
  float32 ``(dx, dy)`` px flow (``agl · scale · (sin a, cos a)``), both with the input's CRS and
  transform, and ``{stem}_VFLOW.json`` (angle rad, scale px/cm).
The json is written last: an image whose json exists and parses has complete outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geopose.errors import GeoposeDataError
from geopose.geometry import flow_from_agl, vector_to_angle
from geopose.inference.ensemble import Ensemble
from geopose.inference.runner import ModelRunner
from geopose.inference.tiling import predict_tiled
from geopose.inference.tta import predict_tta, tta_views
from geopose.io import (
    Georef,
    agl_name,
    city_of,
    ensure_output_dir,
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
from geopose.runtime import reuse_freed_memory
from geopose.types import (  # owner of ImagePrediction, NO_DIRECTION_ANGLE, city_index
    NO_DIRECTION_ANGLE,
    GeoposeOutput,
    ImagePrediction,
    city_index,
    direction_known,
    image_to_unit,
)

MIN_TILE = 256
"""Smallest tile (px) the CUDA out-of-memory fallback goes down to."""


def flow_name(stem: str) -> str:
    """``{stem}_FLOW.tif``: the 2-band flow GeoTIFF of a georeferenced prediction."""
    return f"{stem}_FLOW.tif"


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
class TileOutputs:
    """Raw results of :meth:`Predictor.predict_tiles` for N tiles of h×w px: ``agl`` N×h×w
    float32 m (not clipped), ``direction`` N×2 float64 (unit, or (0, 0): no evidence),
    ``scale`` N float64 px/m."""

    agl: np.ndarray
    direction: np.ndarray
    scale: np.ndarray


# --- the predictor ----------------------------------------------------------------------------


class Predictor:
    """Ensemble + TTA + tiling on one device: ``predict(rgb, gsd, city) -> ImagePrediction``.

    Args:
        models: geopose models (``forward(image, gsd, city) -> GeoposeOutput``).
        weights: ensemble weights (default equal).
        tta: ``none``, ``flip``, ``d2`` or ``d4``.
        device: ``cpu``, ``cuda``, ``cuda:1``...; CUDA runs bf16 autocast + channels_last.
        max_batch: most images (TTA views × tiles) per forward call.
        tile_size: images with a side above this (px) are predicted in overlapping tiles;
            0 = never tile (CUDA out-of-memory still falls back to tiles).
        shrink_scale: multiply the scale by the agreement of the TTA views' directions
            (``geopose.inference.average``): better scores, not the physical scale.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        tta: str = "d4",
        device: str | torch.device = "cpu",
        max_batch: int = 8,
        tile_size: int = 2048,
        amp: bool = True,
        shrink_scale: bool = False,
    ) -> None:
        tta_views(tta)  # check the name early
        self.shrink_scale = bool(shrink_scale)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            reuse_freed_memory()  # -35 % per tile on CPU (geopose.runtime)
        runners = [ModelRunner(m, amp=amp).to_device(self.device) for m in models]
        self.forward = Ensemble(runners, weights)
        self.tta = tta
        self.max_batch = max(1, int(max_batch))
        self.tile_size = int(tile_size)

    def _predict_batch(
        self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor | None
    ) -> GeoposeOutput:
        return predict_tta(
            self.forward, image, gsd, city, self.tta, self.max_batch, self.shrink_scale
        )

    def _run(self, img: torch.Tensor, gsd: float, city: int, tile: int) -> GeoposeOutput:
        h, w = img.shape[-2:]
        if tile and max(h, w) > tile:
            per_call = max(1, self.max_batch // len(tta_views(self.tta)))
            return predict_tiled(
                self._predict_batch,
                img,
                gsd,
                city,
                tile=tile,
                tiles_per_call=per_call,
                device=self.device,
            )
        x = image_to_unit(img[None].to(self.device))
        g = torch.tensor([gsd], dtype=torch.float32, device=self.device)
        c = torch.tensor([city], dtype=torch.long, device=self.device)
        return self._predict_batch(x, g, c)

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, gsd: float, city: int = -1) -> ImagePrediction:
        """Predict one H×W×3 uint8 image with GSD ``gsd`` (m/px) and city index (-1 unknown).

        Negative heights are clipped to 0 m.
        """
        img = torch.from_numpy(np.require(rgb, requirements=["C", "W"])).permute(2, 0, 1)
        side = max(img.shape[-2:])
        tile = self.tile_size
        while True:
            try:
                out = self._run(img, gsd, city, tile)
                break
            except torch.OutOfMemoryError:
                current = tile if 0 < tile < side else side
                if self.device.type != "cuda" or current <= MIN_TILE:
                    raise
                torch.cuda.empty_cache()
                tile = max(MIN_TILE, current // 2)  # retry in smaller tiles
        agl = out.agl[0, 0].clamp_min(0).cpu().numpy()
        direction = out.direction[0].double().cpu().numpy()
        if not direction_known(direction):  # averaged directions are unit, or 0: no evidence
            # The only D4-invariant flow is zero, and it is the least-squares flow when the
            # direction is unknown: scale 0 (also without shrink_scale), a label for the angle.
            return ImagePrediction(
                agl=agl,
                mag=np.zeros_like(agl),
                angle=NO_DIRECTION_ANGLE,
                scale=0.0,
                direction_known=False,
            )
        return ImagePrediction(
            agl=agl,
            mag=out.mag[0, 0].cpu().numpy(),
            angle=float(vector_to_angle(direction)),
            scale=float(out.scale[0]),
        )

    @torch.inference_mode()
    def predict_tiles(self, tiles: np.ndarray, gsd: float, city: int = -1) -> TileOutputs:
        """Predict a stack of same-sized tiles (N×h×w×3 uint8) with the ensemble and TTA, in
        batches of ``max_batch // views`` tiles (as tiled prediction does), without blending.

        Returns the raw per-tile results: AGL N×h×w float32 metres (not clipped), direction
        N×2 float64 (TTA-averaged unit vector, or (0, 0) when a tile holds no evidence of it)
        and scale N float64 px/m. ``gsd`` m/px, ``city`` index (-1 unknown).
        """
        x = torch.from_numpy(np.require(tiles, requirements=["C"])).permute(0, 3, 1, 2)
        per_call = max(1, self.max_batch // len(tta_views(self.tta)))
        agl, direction, scale = [], [], []
        for i in range(0, x.shape[0], per_call):
            batch = image_to_unit(x[i : i + per_call].to(self.device))
            n = batch.shape[0]
            g = torch.full((n,), float(gsd), dtype=torch.float32, device=self.device)
            c = torch.full((n,), int(city), dtype=torch.long, device=self.device)
            out = self._predict_batch(batch, g, c)
            agl.append(out.agl[:, 0].float().cpu().numpy())
            direction.append(out.direction.double().cpu().numpy())
            scale.append(out.scale.double().cpu().numpy().reshape(n))
        return TileOutputs(np.concatenate(agl), np.concatenate(direction), np.concatenate(scale))

    @classmethod
    def from_checkpoints(
        cls, members: Sequence[tuple[str | Path, float]], **kwargs: Any
    ) -> tuple[Predictor, list[dict]]:
        """Load ``[(model, weight)]`` with ``geopose.models.load_model`` (geopose checkpoints,
        published files or names) -> (predictor, configs)."""
        from geopose.inference.ensemble import load_ensemble

        models, weights, configs = load_ensemble(members)
        return cls(models, weights, **kwargs), configs


# --- a folder ---------------------------------------------------------------------------------


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


def _read_job_image(job: ImageJob, summary: RunSummary) -> np.ndarray | None:
    """The job's RGB, or None (recorded in ``summary.failed``) when it cannot be read."""
    try:
        return read_rgb(job.path)
    except GeoposeDataError as exc:
        summary.failed.append((job.stem, str(exc)))
        return None


def predict_jobs(
    predictor: Predictor | Callable[[], Predictor],
    jobs: Iterable[ImageJob],
    out_dir: str | Path,
    overwrite: bool = False,
    on_done: Callable[[ImageJob, str], None] | None = None,
) -> RunSummary:
    """Predict and write each job; a job with valid outputs is skipped unless ``overwrite``.

    ``predictor`` may be a zero-argument factory, called only if some job needs predicting (so
    a finished folder loads no model). Invalid (partial, corrupt) outputs are replaced.
    An image that cannot be read (:class:`GeoposeDataError` from reading it) goes to
    ``summary.failed`` and the run goes on; any other error stops it.
    ``on_done(job, status)`` follows each job (status ``written``, ``skipped`` or ``failed``).
    """
    import time

    out_dir = Path(out_dir)
    made = False  # the folder is made (and cleared of killed runs' temporary files) when needed
    summary = RunSummary()
    t0 = time.perf_counter()
    for job in jobs:
        if not overwrite and outputs_valid(job, out_dir):
            summary.skipped.append(job.stem)
            status = "skipped"
        elif (rgb := _read_job_image(job, summary)) is None:
            status = "failed"
        else:
            if not isinstance(predictor, Predictor):
                predictor = predictor()
            stale = any(p.exists() for p in output_paths(job, out_dir))
            pred = predictor.predict(rgb, job.gsd, job.city)
            if not made:
                ensure_output_dir(out_dir)
                made = True
            write_outputs(job, pred, out_dir, overwrite=overwrite or stale)
            if stale and not overwrite:
                summary.redone.append(job.stem)
            summary.written.append(job.stem)
            if not pred.direction_known:
                summary.no_direction.append(job.stem)
            status = "written"
        if on_done is not None:
            on_done(job, status)
    summary.seconds = time.perf_counter() - t0
    return summary
