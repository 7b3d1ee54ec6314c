"""Whole satellite scenes read window by window: 8/11/12/16-bit or float products of any band
count (GeoTIFF/COG, JPEG 2000, VRT, plain PNG/JPEG, anything GDAL opens) -> uint8 RGB windows
and a validity mask.

- :func:`default_bands` picks the RGB bands from the file's metadata (rule in its doc);
  :func:`parse_bands` reads a user's ``--bands 5,3,2``.
- :func:`compute_stretch` computes one linear :class:`Stretch` per scene from a decimated read
  (overviews when the file has them), so every window of the scene is stretched alike.
- :class:`Scene` opens a raster and :meth:`Scene.read` returns one window, stretched, padded
  outside the raster, with ``valid`` False on nodata, masked or outside pixels.

Nothing here reads a whole raster at full resolution. A :class:`Scene` wraps one rasterio
dataset, which is not thread-safe: use one Scene per thread.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geopose.errors import ConfigError, GeoposeDataError
from geopose.io.geotiff import Georef

METRES_PER_DEGREE = 111_320.0
"""Metres per degree of latitude (and of longitude at the equator), for geographic CRSs."""
DEFAULT_PERCENTILES = (2.0, 98.0)
"""Percentiles (low, high) of the ``"auto"`` stretch of non-uint8 data."""
STRETCH_MAX_SIDE = 2048
"""Longest side (px) of the decimated read :func:`compute_stretch` takes its percentiles from."""

_RGB_NAMES = ({"red", "r"}, {"green", "g"}, {"blue", "b"})
_PCT_RE = re.compile(r"^p(\d+(?:\.\d*)?)-(\d+(?:\.\d*)?)$")


def parse_bands(text: str) -> tuple[int, ...]:
    """``"4,3,2"`` -> ``(4, 3, 2)``: 1-based band numbers; :class:`ConfigError` naming ``text``
    when it is not a comma-separated list of positive integers."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        bands = tuple(int(p) for p in parts)
    except ValueError:
        bands = ()
    if not bands or any(b < 1 for b in bands):
        raise ConfigError(
            f"bands {text!r}: expected comma-separated band numbers from 1, e.g. '4,3,2'"
        )
    return bands


def default_bands(src: Any) -> tuple[int, int, int]:
    """The (red, green, blue) band numbers (1-based) of an open rasterio dataset ``src``.

    Rule, first match wins:
    1. the colour interpretation names a red, a green and a blue band (RGB(A) TIFF/PNG/JPEG,
       JPEG 2000, VRTs that say so) -> those;
    2. band descriptions name them ("Red"/"R", "Green"/"G", "Blue"/"B", any case; exact names,
       so "red-edge" is not red) -> those;
    3. otherwise (1, 2, 3) for 3 bands or more, and (1, 1, 1) (grey) for 1 or 2 bands.

    Band order is only taken from metadata, never guessed from the band count: a WorldView-3
    8-band product (coastal, blue, green, yellow, red, red-edge, NIR1, NIR2) is RGB = 5,3,2 and
    most 4-band products (blue, green, red, NIR) are 3,2,1, but without metadata saying so
    geopose uses 1,2,3 and the user passes ``--bands``.
    """
    from rasterio.enums import ColorInterp

    count = int(src.count)
    if count < 3:
        return (1, 1, 1)
    interp = list(src.colorinterp or ())
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(w in interp for w in wanted):
        r, g, b = (interp.index(w) + 1 for w in wanted)
        return (r, g, b)
    names = [(d or "").strip().lower() for d in (src.descriptions or ())]
    found = [next((i + 1 for i, n in enumerate(names) if n in keys), None) for keys in _RGB_NAMES]
    if None not in found:
        r, g, b = found
        return (r, g, b)
    return (1, 2, 3)


def georef_gsd(georef: Georef | None) -> float | None:
    """Pixel size (m) of a georeference, None without one: projected CRSs convert by their
    linear unit; geographic CRSs (degrees) use 111,320 m per degree, times cos(latitude) across."""
    if georef is None:
        return None
    t, crs = georef.transform, georef.crs
    px_x, px_y = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    if crs.is_geographic:
        lat = math.radians(t.f)
        gsd = 0.5 * (px_x * math.cos(lat) + px_y) * METRES_PER_DEGREE
    elif crs.is_projected:
        gsd = 0.5 * (px_x + px_y) * float(crs.linear_units_factor[1])
    else:
        return None
    return gsd if gsd > 0 else None


@dataclass(frozen=True)
class Stretch:
    """A linear per-band stretch from the raster's digital numbers (DN) to 0..255.

    ``low``/``high``: per selected band, the DN mapped to 0 and to 255. :meth:`apply` computes
    ``rint((x - low) · 255 / (high - low))`` in float32 (round half to even), clipped to
    0..255; NaN gives 0. A band with ``high <= low`` gives 0 at or below ``low``, 255 above.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        low = tuple(float(v) for v in self.low)
        high = tuple(float(v) for v in self.high)
        if not low or len(low) != len(high):
            raise ConfigError(f"stretch: need one low and one high per band, got {low}, {high}")
        if not all(math.isfinite(v) for v in low + high):
            raise ConfigError(f"stretch: low/high must be finite, got {low}, {high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Band-first ``n×h×w`` DN (n = number of bands of the stretch) -> ``h×w×n`` uint8."""
        if array.ndim != 3 or array.shape[0] != len(self.low):
            raise ValueError(
                f"stretch of {len(self.low)} bands applied to an array of shape {array.shape}"
            )
        out = np.empty(array.shape[1:] + (array.shape[0],), np.uint8)
        for i, (lo, hi) in enumerate(zip(self.low, self.high, strict=True)):
            band = array[i].astype(np.float32) - np.float32(lo)
            if hi > lo:
                band *= np.float32(255.0 / (hi - lo))
            else:  # a constant band: a step at ``low``
                band = np.where(band > 0, np.float32(255), np.float32(0))
            np.nan_to_num(band, copy=False, nan=0.0)
            np.clip(band, 0, 255, out=band)
            out[..., i] = np.rint(band)
        return out

    def to_dict(self) -> dict[str, list[float]]:
        """``{"low": [...], "high": [...]}`` (JSON-ready)."""
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, data: dict) -> Stretch:
        """The inverse of :meth:`to_dict`; :class:`ConfigError` on a malformed dict."""
        try:
            return cls(tuple(data["low"]), tuple(data["high"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"stretch: expected {{'low': [...], 'high': [...]}}, got {data!r}"
            ) from None


def _unique(bands: Sequence[int]) -> tuple[list[int], list[int]]:
    """The distinct band numbers in order, and where each of ``bands`` is among them."""
    uniq = sorted(set(bands))
    return uniq, [uniq.index(b) for b in bands]


def _mask_band(src: Any, bands: Sequence[int]) -> int | None:
    """A band whose GDAL mask is an alpha band or a per-dataset mask (which every band shares),
    None when the selected bands have none (nodata is tested on the values instead)."""
    from rasterio.enums import MaskFlags

    for b in bands:
        flags = src.mask_flag_enums[b - 1]
        if MaskFlags.nodata not in flags and (
            MaskFlags.alpha in flags or MaskFlags.per_dataset in flags
        ):
            return b
    return None


def _valid(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """h×w: False where every band of ``data`` (n×h×w) is ``nodata`` (or NaN)."""
    bad = np.ones(data.shape[1:], bool)
    for band in data:
        if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
            is_nd = band == nodata
        else:
            is_nd = np.zeros(band.shape, bool)
        if band.dtype.kind == "f":
            is_nd |= np.isnan(band)
        bad &= is_nd
    return ~bad


def _check_bands(path: Any, src: Any, bands: Sequence[int]) -> None:
    out = [b for b in bands if not 1 <= b <= src.count]
    if out:
        raise GeoposeDataError(
            path, f"band {out[0]} out of range: the raster has {src.count} band(s)"
        )


_CHUNK_PX = 4096
"""Widest / tallest full-resolution window :func:`compute_stretch` reads at once (px)."""


def _sample_positions(n_in: int, n_out: int) -> np.ndarray:
    """The source pixels a nearest decimation of ``n_in`` px to ``n_out`` px takes (centres)."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def _read_sampled(
    src: Any, indexes: list[int], rows: np.ndarray, cols: np.ndarray, mask_band: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The pixels ``rows`` × ``cols`` of ``indexes`` (and of ``mask_band``'s mask) read at full
    resolution, one block row and at most ``_CHUNK_PX`` columns at a time: every block holding
    a sampled pixel is decoded once, other blocks (strips between sampled rows) are not."""
    from rasterio.windows import Window

    bh, bw = src.block_shapes[indexes[0] - 1]
    chunk = max(bw, _CHUNK_PX // bw * bw)
    out = np.empty((len(indexes), len(rows), len(cols)), src.dtypes[indexes[0] - 1])
    mask = None if mask_band is None else np.empty((len(rows), len(cols)), bool)
    # runs of sampled rows in one block row, at most _CHUNK_PX rows tall
    starts = [0]
    for i in range(1, len(rows)):
        if rows[i] // bh != rows[starts[-1]] // bh or rows[i] - rows[starts[-1]] >= _CHUNK_PX:
            starts.append(i)
    col_runs = np.flatnonzero(np.diff(cols // chunk, prepend=-1))
    col_runs = list(col_runs) + [len(cols)]
    for a, b in zip(starts, starts[1:] + [len(rows)], strict=True):
        r0, r1 = int(rows[a]), int(rows[b - 1]) + 1
        for ca, cb in zip(col_runs[:-1], col_runs[1:], strict=True):
            c0, c1 = int(cols[ca]), int(cols[cb - 1]) + 1
            win = Window(c0, r0, c1 - c0, r1 - r0)
            ri, ci = rows[a:b] - r0, cols[ca:cb] - c0
            block = src.read(indexes, window=win)
            out[:, a:b, ca:cb] = block[:, ri][:, :, ci]
            if mask is not None:
                mask[a:b, ca:cb] = src.read_masks(mask_band, window=win)[ri][:, ci] > 0
    return out, mask


def compute_stretch(
    src: Any,
    bands: Sequence[int],
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_side: int = STRETCH_MAX_SIDE,
    nodata_mask: bool = True,
    nodata: float | None = None,
    overviews: bool = False,
) -> Stretch:
    """One linear :class:`Stretch` for the whole scene (``src``: an open rasterio dataset): per
    band of ``bands`` (1-based), the ``percentiles`` (low, high; 0 and 100 give min/max) of the
    valid pixels of a nearest-neighbour decimation to at most ``max_side`` px a side, in DN.

    ``overviews=False`` (default) samples the full-resolution pixels, block by block (memory:
    one block row of at most 4096 columns; time: one decode of the blocks holding sampled rows,
    i.e. the whole file when tiled, 1/decimation of a striped one). ``overviews=True`` reads
    the decimation with ``src.read(out_shape=..., resampling=nearest)``, which uses the file's
    overviews (JPEG 2000: its reduced resolutions) when present: much faster on big files, but
    overviews built by averaging (or wavelet reductions) are smoother than the image and narrow
    the percentiles (a synthetic 12-bit scene with averaged overviews stretches up to 6 grey
    levels off the full-resolution stretch).
    A file without overviews is sampled block by block either way (GDAL's own decimated read
    of such a file re-decodes tiles once its block cache is smaller than a row of tiles:
    minutes instead of seconds).

    ``nodata_mask``: leave out pixels that are nodata in every band (``nodata``, else the
    file's), masked (alpha band, dataset mask) or NaN; False uses every non-NaN pixel. Raises
    :class:`GeoposeDataError` when a band has no valid pixel.
    """
    from rasterio.enums import Resampling

    lo_p, hi_p = (float(p) for p in percentiles)
    if not 0.0 <= lo_p <= hi_p <= 100.0:
        raise ConfigError(
            f"stretch percentiles must satisfy 0 <= low <= high <= 100, got {percentiles}"
        )
    _check_bands(src.name, src, bands)
    w, h = int(src.width), int(src.height)
    k = min(1.0, max_side / max(w, h))
    shape = (max(1, round(h * k)), max(1, round(w * k)))
    uniq, pick = _unique(bands)
    mb = _mask_band(src, uniq) if nodata_mask else None
    if overviews and src.overviews(uniq[0]):
        data = src.read(uniq, out_shape=(len(uniq),) + shape, resampling=Resampling.nearest)
        mask = None
        if mb is not None:
            mask = src.read_masks(mb, out_shape=shape, resampling=Resampling.nearest) > 0
    else:
        rows, cols = _sample_positions(h, shape[0]), _sample_positions(w, shape[1])
        data, mask = _read_sampled(src, uniq, rows, cols, mb)
    if nodata_mask:
        valid = _valid(data, src.nodata if nodata is None else nodata)
        if mask is not None:
            valid &= mask
    else:
        valid = np.ones(shape, bool)
    low, high = [], []
    for band, i in zip(bands, pick, strict=True):
        v = data[i][valid]
        if v.dtype.kind == "f":
            v = v[~np.isnan(v)]
        if v.size == 0:
            raise GeoposeDataError(src.name, f"band {band} has no valid pixels")
        lo, hi = np.percentile(v, [lo_p, hi_p])
        low.append(float(lo))
        high.append(float(hi))
    return Stretch(tuple(low), tuple(high))


def _parse_stretch_spec(spec: str) -> tuple[float, float]:
    """``"p1-99"`` -> (1.0, 99.0); ``"minmax"`` -> (0, 100); ConfigError otherwise."""
    if spec == "minmax":
        return (0.0, 100.0)
    m = _PCT_RE.match(spec)
    if m is None or not 0 <= float(m[1]) < float(m[2]) <= 100:
        raise ConfigError(
            f"stretch {spec!r}: expected 'auto', 'none', 'minmax' or 'p<low>-<high>' "
            "percentiles with 0 <= low < high <= 100 (e.g. 'p2-98')"
        )
    return (float(m[1]), float(m[2]))


class Scene:
    """One raster scene read window by window as uint8 RGB (context manager).

    ``bands``: 1-based (red, green, blue) band numbers, or one band for grey; None picks them
    with :func:`default_bands`. ``stretch``: ``"auto"`` (uint8 data as it is, other data types
    a 2-98 percentile stretch), ``"none"`` (uint8 data only), ``"p<lo>-<hi>"`` (e.g.
    ``"p1-99"``), ``"minmax"`` (0-100 percentiles of the decimated read), or a
    :class:`Stretch` (e.g. one saved with :meth:`Stretch.to_dict`); None means ``"none"``.
    Percentile stretches come from :func:`compute_stretch` (defaults), once, at opening.
    ``nodata``: a DN meaning "no data", overriding the file's.

    Attributes: ``path``, ``width``/``height``/``count`` (px, bands), ``dtype`` (str),
    ``bands``, ``stretch`` (None: none), ``georef`` (None without a CRS), ``gsd`` (m/px from
    the georef, else None), ``nodata`` (None: none), ``transform``, ``dataset`` (the rasterio
    dataset). Errors (unreadable file, band out of range, no bands, no valid pixels to stretch
    from, a read that fails) are one :class:`GeoposeDataError` naming the file; bad ``bands``
    or ``stretch`` arguments a :class:`ConfigError`. The dataset is not thread-safe: one Scene
    per thread.
    """

    def __init__(
        self,
        path: str | Path,
        bands: Sequence[int] | None = None,
        stretch: str | Stretch | None = "auto",
        nodata: float | None = None,
    ) -> None:
        import rasterio
        from rasterio.errors import RasterioError

        self.path = Path(path)
        if not self.path.exists():
            raise GeoposeDataError(self.path, "file not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain images
                self.dataset = rasterio.open(self.path)
        except RasterioError as exc:
            problem = f"cannot be read as a raster ({_one_line(exc)})"
            raise GeoposeDataError(self.path, problem) from None
        try:
            self._setup(bands, stretch, nodata)
        except BaseException:
            self.dataset.close()
            raise

    def _setup(
        self, bands: Sequence[int] | None, stretch: str | Stretch | None, nodata: float | None
    ) -> None:
        src = self.dataset
        self.width, self.height, self.count = int(src.width), int(src.height), int(src.count)
        if self.count < 1:
            raise GeoposeDataError(self.path, "the raster has no bands")
        self.dtype: str = str(src.dtypes[0])
        if bands is None:
            bands = default_bands(src)
        bands = tuple(int(b) for b in bands)
        if len(bands) == 1:
            bands = bands * 3
        if len(bands) != 3:
            raise ConfigError(f"bands {bands}: give three bands (red, green, blue) or one (grey)")
        _check_bands(self.path, src, bands)
        self.bands: tuple[int, int, int] = bands  # type: ignore[assignment]
        self.nodata: float | None = src.nodata if nodata is None else float(nodata)
        self.transform = src.transform
        self.georef: Georef | None = (
            None if src.crs is None else Georef(crs=src.crs, transform=src.transform)
        )
        self.gsd: float | None = georef_gsd(self.georef)
        self._uniq, self._pick = _unique(self.bands)
        self._mask_band = _mask_band(src, self._uniq)
        self.stretch: Stretch | None = self._resolve_stretch(stretch)

    def _resolve_stretch(self, stretch: str | Stretch | None) -> Stretch | None:
        if isinstance(stretch, Stretch):
            if len(stretch.low) != 3:
                raise ConfigError(f"stretch has {len(stretch.low)} bands, expected 3 (R, G, B)")
            return stretch
        spec = "none" if stretch is None else str(stretch).strip().lower()
        if spec in ("auto", "none") and self.dtype == "uint8":
            return None
        if spec == "none":
            raise ConfigError(
                f"{self.path}: stretch 'none' needs uint8 data, the raster is {self.dtype} "
                "(use 'auto', 'p2-98' or 'minmax')"
            )
        pct = DEFAULT_PERCENTILES if spec == "auto" else _parse_stretch_spec(spec)
        try:
            return compute_stretch(self.dataset, self.bands, pct, nodata=self.nodata)
        except GeoposeDataError as exc:
            raise GeoposeDataError(self.path, exc.problem) from None
        except ConfigError:
            raise
        except Exception as exc:  # a corrupt file fails on its first read
            raise GeoposeDataError(self.path, f"cannot be read ({_one_line(exc)})") from None

    def read(self, window: Any, boundless: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ``window`` (a ``rasterio.windows.Window``, offsets and sizes rounded to whole
        px) as ``(rgb, valid)``: H×W×3 uint8 (stretched) and H×W bool, False where every
        selected band is nodata (or NaN), where the alpha band / dataset mask says so, and
        outside the raster. Invalid pixels are 0 in ``rgb``. ``boundless=False`` requires the
        window to lie inside the raster (ValueError otherwise). Reads only the window.
        """
        from rasterio.windows import Window

        c0, r0 = round(window.col_off), round(window.row_off)
        w, h = round(window.width), round(window.height)
        if w < 0 or h < 0:
            raise ValueError(f"negative window size: {window}")
        c1, r1 = min(c0 + w, self.width), min(r0 + h, self.height)
        ic0, ir0 = max(c0, 0), max(r0, 0)
        inside = (ic0, ir0, c1, r1) == (c0, r0, c0 + w, r0 + h)
        if not boundless and not inside:
            raise ValueError(f"window {window} is not inside the {self.width}×{self.height} raster")
        rgb = np.zeros((h, w, 3), np.uint8)
        valid = np.zeros((h, w), bool)
        if c1 <= ic0 or r1 <= ir0:
            return rgb, valid
        inner = Window(ic0, ir0, c1 - ic0, r1 - ir0)
        try:
            data = self.dataset.read(self._uniq, window=inner)
            ok = _valid(data, self.nodata)
            if self._mask_band is not None:
                ok &= self.dataset.read_masks(self._mask_band, window=inner) > 0
        except Exception as exc:  # rasterio/GDAL errors of a damaged file
            raise GeoposeDataError(self.path, f"cannot be read ({_one_line(exc)})") from None
        data = data[self._pick]
        img = data.transpose(1, 2, 0) if self.stretch is None else self.stretch.apply(data)
        if img.dtype != np.uint8:  # uint8 data without a stretch is the only other case
            img = img.astype(np.uint8)
        img = np.where(ok[..., None], img, np.uint8(0))
        ys, xs = slice(ir0 - r0, r1 - r0), slice(ic0 - c0, c1 - c0)
        rgb[ys, xs] = img
        valid[ys, xs] = ok
        return rgb, valid

    def close(self) -> None:
        """Close the dataset."""
        self.dataset.close()

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Scene({str(self.path)!r}, {self.width}×{self.height}×{self.count} {self.dtype}, "
            f"bands={self.bands}, gsd={self.gsd})"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
