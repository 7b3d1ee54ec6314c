"""Rectification of files and folders: an image (optional) with its AGL and VFLOW to nadir
GeoTIFFs (or the competition's formats), scenes through :mod:`geopose.rectify.windowed`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geopose.errors import GeoposeDataError
from geopose.io import (
    Georef,
    atomic_path,
    check_output_dir,
    ensure_output_dir,
    nadir_paths,
    read_agl,
    read_georef,
    read_rgb,
    read_vflow,
    write_agl,
    write_geotiff,
    write_rgb,
)
from geopose.io.inputs import find_image, prediction_is_scene
from geopose.rectify.core import Rectified, rectify
from geopose.rectify.windowed import rectify_windowed

if TYPE_CHECKING:
    from geopose.types import ProgressFn


def write_rectified(
    out_dir: str | Path,
    stem: str,
    rect: Rectified,
    georef: Georef | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a rectification: ``{stem}_NADIR_RGB.png``, ``{stem}_NADIR_AGL.tif`` (uint16 cm,
    65535 where occluded, like an AGL file) and ``{stem}_OCCLUDED.png`` (255 = occluded).

    With ``georef`` all three are GeoTIFFs (``.tif``) with the input's CRS and transform.
    ``overwrite=False`` refuses (before writing anything) when one of them exists.
    """
    from geopose.errors import OutputExistsError
    from geopose.io.rasters import AGL_NODATA, agl_m_to_cm

    paths = nadir_paths(out_dir, stem, georef is not None)
    if rect.rgb is None:
        del paths["rgb"]
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise OutputExistsError(p)
    mask = rect.occluded.astype(np.uint8) * np.uint8(255)
    if georef is None:
        if "rgb" in paths:
            write_rgb(paths["rgb"], rect.rgb, overwrite=True)
        write_agl(paths["agl"], rect.agl, overwrite=True)
        with atomic_path(paths["occluded"], True) as tmp:
            from PIL import Image

            Image.fromarray(mask).save(tmp, format="PNG")
        return paths
    if "rgb" in paths:
        write_geotiff(paths["rgb"], np.moveaxis(rect.rgb, -1, 0), georef, None, True)
    write_geotiff(paths["agl"], agl_m_to_cm(rect.agl)[None], georef, AGL_NODATA, True)
    write_geotiff(paths["occluded"], mask[None], georef, None, True)
    return paths


def rectify_files(
    rgb_path: str | Path | None,
    agl_path: str | Path,
    vflow_path: str | Path,
    out_dir: str | Path,
    stem: str | None = None,
    overwrite: bool = False,
    fill_holes: bool = True,
    bands: Sequence[int] | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
) -> dict[str, Path]:
    """Read an RGB (optional), its AGL tif and VFLOW json, rectify, write to ``out_dir``.

    ``stem`` defaults to the RGB's (or AGL's) name without ``_RGB``/``_AGL`` and suffix.
    Outputs are GeoTIFFs when the RGB (or, without RGB, the AGL) is georeferenced.

    Scenes (``geopose.io.inputs.is_scene``: large, georeferenced above 1024 px, multi-band,
    16-bit, VRT, or ``bands``/``stretch`` given) are rectified window by window by
    :func:`rectify_windowed` into COGs (``.tif`` always;
    ``{stem}_NADIR_AGL.tif`` float32 metres, NaN where occluded), the image read through
    ``geopose.io.scene.Scene(rgb_path, bands, stretch, nodata)``.
    """
    from geopose.io import split_name

    check_output_dir(out_dir)
    ref_path = Path(rgb_path) if rgb_path is not None else Path(agl_path)
    if stem is None:
        parsed = split_name(ref_path)
        stem = parsed[0] if parsed else ref_path.name.split(".", 1)[0]
    if prediction_is_scene(rgb_path, agl_path, bands, stretch):
        return _rectify_scene_files(
            rgb_path,
            agl_path,
            vflow_path,
            out_dir,
            stem,
            overwrite,
            fill_holes,
            bands,
            stretch,
            nodata,
        )
    agl = read_agl(agl_path)
    rgb = read_rgb(rgb_path) if rgb_path is not None else None
    if rgb is not None and rgb.shape[:2] != agl.shape:
        raise GeoposeDataError(
            agl_path,
            f"AGL is {agl.shape[1]}×{agl.shape[0]} px but the RGB {rgb_path} is "
            f"{rgb.shape[1]}×{rgb.shape[0]} px",
        )
    angle, scale = read_vflow(vflow_path)
    rect = rectify(rgb, agl, angle, scale, fill_holes=fill_holes)
    return write_rectified(out_dir, stem, rect, read_georef(ref_path), overwrite=overwrite)


def _rectify_scene_files(
    rgb_path: str | Path | None,
    agl_path: str | Path,
    vflow_path: str | Path,
    out_dir: str | Path,
    stem: str,
    overwrite: bool,
    fill_holes: bool,
    bands: Sequence[int] | None,
    stretch: str | None,
    nodata: float | None,
) -> dict[str, Path]:
    """:func:`rectify_files` for a scene: checked inputs, then :func:`rectify_windowed`."""
    import rasterio
    from rasterio.errors import RasterioError

    from geopose.io import SCENE_CACHE_MB
    from geopose.io.scene import Scene

    angle, scale = read_vflow(vflow_path)
    if not Path(agl_path).is_file():
        raise GeoposeDataError(agl_path, "file not found")
    scene = None
    if rgb_path is not None:
        scene = Scene(rgb_path, bands=bands, stretch=stretch or "auto", nodata=nodata)
    try:
        with rasterio.Env(GDAL_CACHEMAX=SCENE_CACHE_MB * 2**20):  # not 5 % of RAM
            return rectify_windowed(
                agl_path,
                angle,
                scale,
                out_dir,
                stem,
                scene=scene,
                overwrite=overwrite,
                fill_holes=fill_holes,
            )
    except RasterioError as exc:
        raise GeoposeDataError(agl_path, f"unreadable raster ({exc})") from exc
    finally:
        if scene is not None:
            scene.close()


@dataclass
class FolderSummary:
    """What :func:`rectify_folder` did: stems written, skipped (outputs there) and failed
    (``(stem, reason)``: an input could not be read; nothing written for it)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def rectify_folder(
    pred_dir: str | Path,
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    overwrite: bool = False,
    fill_holes: bool = True,
    on_progress: ProgressFn | None = None,
    bands: Sequence[int] | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
) -> FolderSummary:
    """Rectify every complete prediction (``{stem}_AGL.tif`` + ``_VFLOW.json``) of ``pred_dir``
    with its ``{stem}_RGB.*`` from ``images_dir`` (optional) into ``out_dir``.

    An image whose outputs all exist is skipped unless ``overwrite`` (an interrupted run
    resumes; partial outputs are redone). An image whose input cannot be read
    (:class:`GeoposeDataError`) goes to ``failed`` and the others go on; any other error
    stops the run. ``on_progress("rectify", done, total)`` follows the images (whatever became
    of them). Scenes (``geopose.io.inputs.is_scene``; their images may also be named
    ``{stem}.tif``, ``.jp2``, ``.vrt``: ``geopose.io.inputs.find_image``) are rectified
    window by window, read with ``bands``, ``stretch`` and ``nodata``.
    """
    from geopose.io import agl_name, prediction_stems, vflow_name

    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    check_output_dir(out_dir)
    stems = prediction_stems(pred_dir)
    if not stems:
        raise GeoposeDataError(
            pred_dir, "no complete prediction ({stem}_AGL.tif + {stem}_VFLOW.json)"
        )
    ensure_output_dir(out_dir)
    summary = FolderSummary()
    if on_progress is not None:
        on_progress("rectify", 0, len(stems))
    for done, stem in enumerate(stems, 1):
        try:
            rgb = find_image(images_dir, stem) if images_dir is not None else None
            ref = rgb if rgb is not None else pred_dir / agl_name(stem)
            scene = prediction_is_scene(rgb, pred_dir / agl_name(stem), bands, stretch)
            paths = nadir_paths(out_dir, stem, scene or read_georef(ref) is not None)
            if rgb is None:
                del paths["rgb"]
            if not overwrite and all(p.is_file() for p in paths.values()):
                summary.skipped.append(stem)
            else:
                # Without overwrite, existing outputs here are a partial set (an interrupted run).
                rectify_files(
                    rgb,
                    pred_dir / agl_name(stem),
                    pred_dir / vflow_name(stem),
                    out_dir,
                    stem=stem,
                    overwrite=True,
                    fill_holes=fill_holes,
                    bands=bands,
                    stretch=stretch,
                    nodata=nodata,
                )
                summary.written.append(stem)
        except GeoposeDataError as exc:
            summary.failed.append((stem, str(exc)))
        if on_progress is not None:
            on_progress("rectify", done, len(stems))
    return summary
