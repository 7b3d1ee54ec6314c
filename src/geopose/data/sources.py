"""Where training images come from: a data folder in the competition layout
(:class:`FolderSource`), or a cache made by ``geopose prepare`` (:mod:`geopose.data.cache`);
:func:`open_source` picks the one a folder holds.

Both are :class:`geopose.data.base.ImageSource` s (an ``index`` and ``open(i)``, see there). A
folder decodes the whole JPEG 2000 / TIFF on ``open``; a cache maps ``.npy`` files and reads
only the window. Imports go one way: this module -> cache -> base.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from geopose.data.base import ImageHandle, ImageSource, downsample_agl, downsample_rgb
from geopose.data.cache import CacheSource, is_cache
from geopose.errors import ConfigError, GeoposeDataError
from geopose.types import city_index


class FolderSource(ImageSource):
    """The competition layout (``load_index``), decoded on every ``open``; ``downsample`` > 1
    shrinks images on the fly (GSD × f, scale / f)."""

    def __init__(self, root: str | Path, split: str = "train", downsample: int = 1) -> None:
        from geopose.io import load_index, read_vflow

        self.root, self.downsample = Path(root), int(downsample)
        index = load_index(self.root, split)
        if split == "train":
            pose = [read_vflow(p) for p in index["vflow"]]
            index["angle"] = [v.angle for v in pose]
            index["scale"] = [v.scale / self.downsample for v in pose]
        else:
            index["angle"], index["scale"] = math.nan, math.nan
        index["gsd"] = index["gsd"] * self.downsample
        index["agl_max"] = math.nan
        index["city_idx"] = [city_index(c) for c in index["city"]]
        self.index = index.reset_index(drop=True)

    def open(self, i: int) -> ImageHandle:
        from geopose.io import read_agl, read_rgb

        row = self.row(i)
        rgb = read_rgb(row["rgb"])
        agl = read_agl(row["agl"]) if isinstance(row["agl"], str) else None
        if agl is not None and agl.shape != rgb.shape[:2]:
            raise GeoposeDataError(row["agl"], f"AGL is {agl.shape}, the RGB {rgb.shape[:2]}")
        if self.downsample > 1:
            rgb = downsample_rgb(rgb, self.downsample)
            agl = None if agl is None else downsample_agl(agl, self.downsample)
        top = float(np.nanmax(agl)) if agl is not None and np.isfinite(agl).any() else math.nan
        return ImageHandle(rgb, agl, top)


def open_source(
    root: str | Path, split: str = "train", downsample: int | None = None
) -> ImageSource:
    """A :class:`FolderSource` or, for a folder made by ``geopose prepare``, a cache source.

    ``downsample``: None keeps the data as it is; for a cache it must equal the cache's factor.
    """
    root = Path(root)
    if is_cache(root):
        source = CacheSource(root, split)
        if downsample is not None and downsample != source.downsample:
            raise ConfigError(
                f"data.downsample={downsample} but the cache {root} was prepared at "
                f"--downsample {source.downsample}; prepare another cache or drop the key"
            )
        return source
    return FolderSource(root, split, downsample or 1)
