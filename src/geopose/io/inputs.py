"""The images geopose is handed: finding them in a folder, their names, and the one rule that
decides whether an image is a *scene*.

A scene is read, predicted and rectified window by window, in bounded memory, and its outputs
are tiled, compressed Cloud-Optimized GeoTIFFs with overviews (``geopose.io.cog``): what a GIS
opens fast at any zoom. Every other image is processed whole in memory and written in the
competition's formats (``{stem}_AGL.tif`` uint16 cm and ``{stem}_VFLOW.json``), or as plain
GeoTIFFs when it is georeferenced. :func:`is_scene` is the rule, the same for ``geopose
predict``, ``geopose rectify`` and ``geopose show``:

- any image when display bands or a stretch are asked for, and any format that only the scene
  reader opens (a GDAL VRT);
- any raster with a side above :data:`WHOLE_SIDE` px (larger than the competition's 2048²);
- an image that is not 8-bit RGB(A): fewer than 3 bands, more than 1 byte per sample, or a
  georeferenced raster with other than 3 bands (e.g. blue, green, red, near-infrared);
- a georeferenced raster with a side above :data:`SCENE_SIDE` px, or any georeferenced raster
  when nadir views are asked for with the prediction (``predict --rectify``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from geopose.errors import GeoposeDataError
from geopose.io.geotiff import Georef, read_georef
from geopose.io.layout import find_rgb, split_name
from geopose.io.rasters import RGB_SUFFIXES, TIFF_SUFFIXES
from geopose.io.tables import read_metadata

SCENE_SUFFIXES = (".vrt",)
"""Raster formats only the scene reader opens (GDAL virtual rasters: mosaics, band subsets)."""
IMAGE_SUFFIXES = (*RGB_SUFFIXES, *SCENE_SUFFIXES)
"""Every image format geopose reads."""
GEO_SUFFIXES = (*TIFF_SUFFIXES, ".jp2", ".vrt")
"""Formats whose georeference (CRS, transform) is read: GeoTIFF/COG, GMLJP2/GeoJP2, VRT."""

SCENE_SIDE = 1024
"""A georeferenced raster with a side above this (px) is a scene: tiled COG outputs with
overviews, as GIS layers of that size want."""
WHOLE_SIDE = 2048
"""Any raster with a side above this (px) is a scene, processed window by window: the
competition's 2048² images are the largest read whole."""


def image_stem(path: Path) -> str:
    """``JAX_abc_RGB.j2k`` -> ``JAX_abc``; any other name -> the name without its suffix."""
    parts = split_name(path)
    if parts and parts[1] == "RGB":
        return parts[0]
    return path.name.split(".", 1)[0]


def find_images(images_dir: str | Path) -> list[Path]:
    """Images (:data:`IMAGE_SUFFIXES`) of a folder, sorted by name; hidden files, the layout's
    other files (``_AGL``, ``_VFLOW``, ``_NADIR_*``) and geopose's outputs skipped."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise GeoposeDataError(images_dir, "images folder not found")
    files = [
        p
        for p in images_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    keep = [
        p
        for p in files
        if ((s := split_name(p)) is None or s[1] == "RGB")
        and not image_stem(p).endswith(("_FLOW", "_OCCLUDED"))
    ]
    return sorted(keep, key=lambda p: p.name)


def find_image(images_dir: str | Path, stem: str) -> Path:
    """The image of a prediction ``stem``: ``{stem}_RGB.*`` (``geopose.io.find_rgb``), else an
    image named ``{stem}.*`` (a scene: ``.tif``, ``.jp2``, ``.vrt``, ...) in ``images_dir`` or
    its ``test/``/``train/``."""
    try:
        return find_rgb(images_dir, stem)
    except GeoposeDataError:
        images_dir = Path(images_dir)
        for folder in (images_dir, images_dir / "test", images_dir / "train"):
            for suffix in IMAGE_SUFFIXES:
                p = folder / f"{stem}{suffix}"
                if p.is_file():
                    return p
        raise


def metadata_lookup(images_dir: Path) -> dict[str, tuple[str, float]]:
    """``metadata.csv`` of the images folder or its parent -> {key: (city, gsd m/px)}.

    Keys are the csv id and ``{city}_{id}``, so both id styles match an image stem.
    """
    for folder in (images_dir, images_dir.parent):
        if (folder / "metadata.csv").is_file():
            meta = read_metadata(folder)
            out: dict[str, tuple[str, float]] = {}
            for row in meta.itertuples(index=False):
                out[str(row.id)] = (row.city, float(row.gsd))
                out[f"{row.city}_{row.id}"] = (row.city, float(row.gsd))
            return out
    return {}


def image_georef(path: Path) -> Georef | None:
    """The georeference of a GeoTIFF, JPEG 2000 (.jp2) or VRT input (None for other formats
    or no CRS)."""
    return read_georef(path) if Path(path).suffix.lower() in GEO_SUFFIXES else None


def is_scene(
    path: str | Path,
    bands: Sequence[int] | None = None,
    stretch: str | None = None,
    *,
    image: bool = True,
    nadir: bool = False,
) -> bool:
    """Whether the raster at ``path`` is a scene (module doc).

    ``image`` False: ``path`` is not the image but a prediction of it (an AGL raster, when
    there is no image): only its size and georeference count. ``nadir``: nadir views are
    asked for with the prediction. An unreadable raster is not a scene (the whole-image
    readers report it in one line).
    """
    import rasterio
    from rasterio.errors import RasterioError

    path = Path(path)
    if image and (bands is not None or stretch is not None):
        return True
    if image and path.suffix.lower() not in RGB_SUFFIXES:
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning
            with rasterio.open(path) as src:
                count, dtype, side = src.count, src.dtypes[0], max(src.width, src.height)
    except (RasterioError, OSError):
        return False
    geo = image_georef(path) is not None
    if side > WHOLE_SIDE:
        return True
    if image and (count < 3 or dtype != "uint8" or (geo and count != 3)):
        return True
    return geo and (side > SCENE_SIDE or nadir)


def prediction_is_scene(
    image: str | Path | None,
    agl: str | Path,
    bands: Sequence[int] | None = None,
    stretch: str | None = None,
) -> bool:
    """:func:`is_scene` of a prediction's image, or of its AGL raster when there is no image
    (``geopose rectify`` and ``geopose show`` without ``--images``)."""
    if image is not None:
        return is_scene(image, bands, stretch)
    return is_scene(agl, image=False)
