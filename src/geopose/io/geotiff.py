"""Georeferenced rasters: read a raster's CRS and transform, write GeoTIFFs with them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geopose.io.atomic import atomic_path


@dataclass(frozen=True)
class Georef:
    """A raster's CRS and affine transform (rasterio objects)."""

    crs: object
    transform: object


def read_georef(path: str | Path) -> Georef | None:
    """The CRS and transform of a georeferenced raster, or None (plain image, unreadable by GDAL,
    or no CRS)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain images
        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    return None
                return Georef(crs=src.crs, transform=src.transform)
        except RasterioIOError:
            return None


def write_geotiff(path: Path, bands: np.ndarray, georef: Georef, nodata, overwrite: bool) -> Path:
    """Write a (bands, H, W) array as a deflate GeoTIFF with ``georef``, atomically."""
    import rasterio

    with atomic_path(path, overwrite) as tmp:
        profile = dict(
            driver="GTiff",
            width=bands.shape[2],
            height=bands.shape[1],
            count=bands.shape[0],
            dtype=bands.dtype.name,
            crs=georef.crs,
            transform=georef.transform,
            compress="deflate",
            nodata=nodata,
        )
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(bands)
    return path
