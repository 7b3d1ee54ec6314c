"""Where training images come from: a data folder in the competition layout, or a cache made
by ``geopose prepare`` (see :mod:`geopose.data.cache`).

A source has an ``index`` (pandas: ``stem``, ``city``, ``gsd`` m/px, ``angle`` rad, ``scale``
px/m, ``agl_max`` m or NaN, ...) and ``open(i)`` giving an :class:`ImageHandle` whose
``read(r0, c0, h, w)`` returns a window of the RGB and AGL (padded outside the image). A folder
decodes the whole JPEG 2000 / TIFF on ``open``; a cache maps ``.npy`` files and reads only the
window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from geopose.errors import GeoposeDataError
from geopose.io import CITIES
from geopose.transforms.geometric import window


class ImageHandle:
    """One opened image: ``shape`` (rows, cols), ``agl_max`` (m, NaN if unknown), ``read``."""

    def __init__(
        self,
        rgb: np.ndarray,
        agl: np.ndarray | None,
        agl_max: float = math.nan,
        agl_in_cm: bool = False,
    ) -> None:
        self.rgb, self.agl, self.agl_in_cm = rgb, agl, agl_in_cm
        self.agl_max = float(agl_max)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    def read(self, r0: int, c0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB (h×w×3 uint8, 0 outside) and AGL (h×w float32 m, NaN outside) of a window."""
        from geopose.io import AGL_NODATA, agl_cm_to_m

        rgb = window(self.rgb, r0, c0, h, w, 0)
        if self.agl is None:
            return rgb, None
        if self.agl_in_cm:
            return rgb, agl_cm_to_m(window(self.agl, r0, c0, h, w, AGL_NODATA))
        return rgb, window(self.agl, r0, c0, h, w, np.nan)

    def read_all(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole image."""
        return self.read(0, 0, *self.shape)


def city_index(city: str) -> int:
    """Index of a city code in :data:`geopose.io.CITIES`, -1 if unknown."""
    return CITIES.index(city) if city in CITIES else -1


def downsample_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Shrink an RGB image by an integer factor (area averaging)."""
    import cv2

    if factor == 1:
        return rgb
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    return cv2.resize(rgb[: h * factor, : w * factor], (w, h), interpolation=cv2.INTER_AREA)


def downsample_agl(agl: np.ndarray, factor: int) -> np.ndarray:
    """Shrink an AGL map (m, NaN) by an integer factor: mean of the valid heights of each
    factor×factor block, NaN where none is valid."""
    if factor == 1:
        return agl
    h, w = agl.shape[0] // factor, agl.shape[1] // factor
    blocks = agl[: h * factor, : w * factor].reshape(h, factor, w, factor)
    valid = np.isfinite(blocks)
    total = np.where(valid, blocks, 0.0).sum(axis=(1, 3), dtype=np.float64)
    count = valid.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (total / count).astype(np.float32)
    out[count == 0] = np.nan
    return out


class ImageSource:
    """Base class: ``index`` (one row per image) and ``open(i)``."""

    root: Path
    index: pd.DataFrame
    downsample: int = 1

    def __len__(self) -> int:
        return len(self.index)

    def open(self, i: int) -> ImageHandle:  # pragma: no cover - abstract
        raise NotImplementedError

    def position(self, stems: list[str]) -> list[int]:
        """Row positions of ``stems`` in the index (GeoposeDataError for unknown stems)."""
        where = {s: i for i, s in enumerate(self.index["stem"])}
        missing = [s for s in stems if s not in where]
        if missing:
            raise GeoposeDataError(self.root, f"no image(s) {missing[:3]} in this data set")
        return [where[s] for s in stems]


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

        row = self.index.iloc[i]
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
    from geopose.data.cache import CacheSource, is_cache
    from geopose.errors import ConfigError

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
