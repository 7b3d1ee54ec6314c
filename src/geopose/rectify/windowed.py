"""Rectification of a scene of any size, window by window into COGs, in bounded memory: each
output window from itself plus a halo of the largest flow, which gives exactly the pixels of
rectifying the whole scene at once."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geopose.errors import GeoposeDataError
from geopose.io import Georef, ensure_output_dir, nadir_paths
from geopose.rectify.core import rectify

if TYPE_CHECKING:
    from geopose.types import ProgressFn

WINDOW = 1024
"""Side (px) of the output windows of :func:`rectify_windowed`."""


def rectify_halo(max_agl: float, angle: float, scale: float) -> tuple[int, int]:
    """Rows and columns (px) of source pixels around an output window that can land in it or
    in the one-pixel ring gap filling looks at: the largest flow ``max_agl · scale`` (m · px/m)
    along each axis, plus the rounding of footprints and that ring."""
    mag = max(float(max_agl), 0.0) * abs(float(scale))
    return (
        math.ceil(mag * abs(math.cos(angle))) + 2,
        math.ceil(mag * abs(math.sin(angle))) + 2,
    )


def _read_agl_window(src, window) -> np.ndarray:
    """One window of an AGL raster as float32 metres with NaN (uint16 cm or float m)."""
    from geopose.io import agl_to_m

    arr = src.read(1, window=window)
    out = agl_to_m(arr)
    if src.nodata is not None and arr.dtype != np.uint16 and math.isfinite(src.nodata):
        out[arr == src.nodata] = np.nan
    return out


def _max_agl(src, rows: int = 2048) -> float:
    """The largest finite height (m) of an AGL raster, read strip by strip."""
    from rasterio.windows import Window

    top = 0.0
    for r0 in range(0, src.height, rows):
        agl = _read_agl_window(src, Window(0, r0, src.width, min(rows, src.height - r0)))
        if np.isfinite(agl).any():
            top = max(top, float(np.nanmax(agl)))
    return top


def rectify_windowed(
    agl_path: str | Path,
    angle: float,
    scale: float,
    out_dir: str | Path,
    stem: str,
    scene=None,
    overwrite: bool = False,
    fill_holes: bool = True,
    max_agl: float | None = None,
    window: int = WINDOW,
    blocksize: int = 512,
    on_progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Rectify a scene of any size window by window into COGs (bounded memory).

    ``agl_path``: the scene's AGL raster (float32 m with NaN, or uint16 cm), georeferenced or
    not; ``angle`` rad, ``scale`` px/m; ``scene``: an open ``geopose.io.scene.Scene`` of the
    same size for the RGB (its stretched display bands), or None for heights only.
    ``max_agl`` (m): the largest height, read from the AGL when None.

    Each ``window``-px output window is rectified by :func:`rectify` from the window plus a
    halo of the largest flow (:func:`rectify_halo`), of which the window's interior is kept:
    every pixel that can land in the window (or in the ring gap filling reads) is in the halo,
    and the z-buffer's ties break by source position in the same order, so the result equals
    rectifying the whole scene at once, pixel for pixel.

    Writes, with the AGL's CRS and transform: ``{stem}_NADIR_RGB.tif`` (3 bands uint8, 0 where
    occluded; only with ``scene``), ``{stem}_NADIR_AGL.tif`` (float32 m, NaN where occluded) and
    ``{stem}_OCCLUDED.tif`` (uint8, 255 = no pixel landed there), tiled COGs with overviews,
    each atomically; returns their paths. ``on_progress("rectify", done, total)`` per window.
    """
    import rasterio
    from rasterio.windows import Window

    from geopose.io.cog import BlockWriter

    if not (math.isfinite(angle) and math.isfinite(scale)):
        raise ValueError(f"angle={angle} and scale={scale} must be finite")
    paths = nadir_paths(out_dir, stem, geo=True)
    if scene is None:
        del paths["rgb"]
    if not overwrite:
        from geopose.errors import OutputExistsError

        for p in paths.values():
            if p.exists():
                raise OutputExistsError(p)
    window = max(blocksize, window // blocksize * blocksize)
    with rasterio.open(agl_path) as src:
        h, w = src.height, src.width
        if scene is not None and (scene.height, scene.width) != (h, w):
            raise GeoposeDataError(
                agl_path,
                f"AGL is {w}×{h} px but the image {scene.path} is {scene.width}×{scene.height} px",
            )
        georef = Georef(src.crs, src.transform) if src.crs is not None else None
        top = _max_agl(src) if max_agl is None else float(max_agl)
        hy, hx = rectify_halo(top, angle, scale)
        boxes = [(r, c) for r in range(0, h, window) for c in range(0, w, window)]
        nan = float("nan")
        ensure_output_dir(Path(out_dir))
        with contextlib.ExitStack() as stack:
            out = {
                "agl": BlockWriter(
                    paths["agl"],
                    w,
                    h,
                    1,
                    "float32",
                    georef,
                    nodata=nan,
                    overwrite=True,
                    blocksize=blocksize,
                ),
                "occluded": BlockWriter(
                    paths["occluded"], w, h, 1, "uint8", georef, overwrite=True, blocksize=blocksize
                ),
            }
            if scene is not None:
                out["rgb"] = BlockWriter(
                    paths["rgb"],
                    w,
                    h,
                    3,
                    "uint8",
                    georef,
                    overwrite=True,
                    blocksize=blocksize,
                    band_names=["red", "green", "blue"],
                )
            for writer in out.values():
                stack.enter_context(writer)
            for k, (r, c) in enumerate(boxes):
                n_r, n_c = min(window, h - r), min(window, w - c)
                r0, c0 = max(r - hy, 0), max(c - hx, 0)
                r1, c1 = min(r + n_r + hy, h), min(c + n_c + hx, w)
                ext = Window(c0, r0, c1 - c0, r1 - r0)
                agl = _read_agl_window(src, ext)
                rgb = scene.read(ext, boundless=False)[0] if scene is not None else None
                rect = rectify(rgb, agl, angle, scale, fill_holes=fill_holes)
                ys, xs = slice(r - r0, r - r0 + n_r), slice(c - c0, c - c0 + n_c)
                win = Window(c, r, n_c, n_r)
                out["agl"].write(rect.agl[ys, xs][None], win)
                occluded = rect.occluded[ys, xs].astype(np.uint8) * np.uint8(255)
                out["occluded"].write(occluded[None], win)
                if scene is not None:
                    out["rgb"].write(np.moveaxis(rect.rgb[ys, xs], -1, 0), win)
                if on_progress is not None:
                    on_progress("rectify", k + 1, len(boxes))
    return paths
