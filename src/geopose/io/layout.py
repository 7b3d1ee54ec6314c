"""File names of the competition layout: ``{CITY}_{ID}_RGB.j2k``, ``_AGL.tif``, ``_VFLOW.json``."""

from __future__ import annotations

import re
from pathlib import Path

from geopose.errors import GeoposeDataError
from geopose.types import CITIES as CITIES  # the city codes' owner; re-exported here

# Non-greedy stem: ``X_NADIR_AGL`` is (X, NADIR_AGL), not (X_NADIR, AGL).
_KIND_RE = re.compile(r"^(?P<stem>.+?)_(?P<kind>RGB|AGL|VFLOW|NADIR_AGL|NADIR_RGB)$")


def rgb_name(stem: str, suffix: str = ".j2k") -> str:
    """``{stem}_RGB{suffix}``."""
    return f"{stem}_RGB{suffix}"


def agl_name(stem: str) -> str:
    """``{stem}_AGL.tif``."""
    return f"{stem}_AGL.tif"


def vflow_name(stem: str) -> str:
    """``{stem}_VFLOW.json``."""
    return f"{stem}_VFLOW.json"


def nadir_paths(out_dir: str | Path, stem: str, geo: bool) -> dict[str, Path]:
    """The nadir views of ``stem`` in ``out_dir``: ``rgb`` (``{stem}_NADIR_RGB``), ``agl``
    (``{stem}_NADIR_AGL.tif``) and ``occluded`` (``{stem}_OCCLUDED``), GeoTIFFs when ``geo``,
    else PNGs (the AGL is a TIFF either way)."""
    out_dir = Path(out_dir)
    ext = ".tif" if geo else ".png"
    return {
        "rgb": out_dir / f"{stem}_NADIR_RGB{ext}",
        "agl": out_dir / f"{stem}_NADIR_AGL.tif",
        "occluded": out_dir / f"{stem}_OCCLUDED{ext}",
    }


def flow_name(stem: str) -> str:
    """``{stem}_FLOW.tif``: the 2-band ``(dx, dy)`` px flow GeoTIFF of a georeferenced
    prediction."""
    return f"{stem}_FLOW.tif"


def split_name(path: str | Path) -> tuple[str, str] | None:
    """``JAX_abc_AGL.tif`` -> ``("JAX_abc", "AGL")``; None for a name outside the layout."""
    m = _KIND_RE.match(Path(path).name.split(".", 1)[0])
    return (m["stem"], m["kind"]) if m else None


def city_of(stem: str) -> str:
    """The city code at the front of a stem (``JAX_abc`` -> ``JAX``)."""
    return stem.split("_", 1)[0]


def find_rgb(images_dir: str | Path, stem: str) -> Path:
    """The ``{stem}_RGB.*`` image (any readable suffix) in ``images_dir``, or, when that is a
    data set folder, in its ``test/`` or ``train/``."""
    from geopose.io.rasters import RGB_SUFFIXES  # rasters imports this module

    images_dir = Path(images_dir)
    for folder in (images_dir, images_dir / "test", images_dir / "train"):
        for suffix in RGB_SUFFIXES:
            p = folder / rgb_name(stem, suffix)
            if p.is_file():
                return p
    raise GeoposeDataError(images_dir / rgb_name(stem, ".*"), "no RGB image for this prediction")
