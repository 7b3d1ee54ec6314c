"""What every training source is: an ``index`` and ``open(i)`` giving an :class:`ImageHandle`,
and the integer downsampling both kinds of source apply (:mod:`geopose.data.sources` reads
data folders, :mod:`geopose.data.cache` prepared caches; both build on this module only).

A source has an ``index`` (pandas: ``stem``, ``city``, ``city_idx`` (``geopose.types.
city_index``), ``gsd`` m/px, ``angle`` rad, ``scale`` px/m, ``agl_max`` m or NaN, ...) and
``open(i)`` giving an :class:`ImageHandle` whose ``read(r0, c0, h, w)`` returns a window of the
RGB and AGL (padded outside the image).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from geopose.errors import GeoposeDataError
from geopose.types import window


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

    def row(self, i: int) -> dict:
        """Row ``i`` of ``index`` as a dict: read per crop, where pandas' ``iloc`` costs about
        0.4 ms (a tenth of a crop from a cache). Built once from the index as it is then."""
        records = self.__dict__.get("_records")
        if records is None:
            records = self._records = self.index.to_dict("records")
        return records[i]

    def position(self, stems: list[str]) -> list[int]:
        """Row positions of ``stems`` in the index (GeoposeDataError for unknown stems)."""
        where = {s: i for i, s in enumerate(self.index["stem"])}
        missing = [s for s in stems if s not in where]
        if missing:
            raise GeoposeDataError(self.root, f"no image(s) {missing[:3]} in this data set")
        return [where[s] for s in stems]
