"""Cloud-optimised GeoTIFF (COG) output written block by block, for scene-sized maps.

:class:`BlockWriter` takes windows as they are computed (nothing is buffered by geopose: GDAL's
block cache alone holds blocks until they reach the disk), then builds overviews and copies the
result into COG layout (GDAL's COG driver; a tiled GeoTIFF with ``COPY_SRC_OVERVIEWS=YES`` where
that driver is missing), atomically. :func:`write_scaled_cog` derives a COG from another by
per-band factors in one copy. :func:`is_cog` checks a file's layout.
"""

from __future__ import annotations

import contextlib
import functools
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geopose.io.atomic import atomic_path, check_output_file
from geopose.io.geotiff import Georef

SCENE_CACHE_MB = 256
"""GDAL block cache (MB) while a scene is predicted: a tile row's input blocks (150 MB for a
16384 px wide 4-band uint16 scene with 1024 px tiles) fit; GDAL's default is 5 % of RAM
(BENCHMARKS.md, Satellite scenes)."""
FINISH_CACHE_MB = 128
"""GDAL block cache (MB) while overviews are built and the COG is copied: bounds the memory of
finishing at no cost in time (GDAL's default, 5 % of RAM, lets the cache fill with the map's
blocks). GDAL's cache size is process-wide: other threads see the cap while a writer
finishes."""
COG_LEVEL = 3
"""Deflate level of the COGs (GDAL's default is 6): level 3 compresses a float32 AGL map
(with the predictor) in about 60 % of level 6's time, about 1 % larger (BENCHMARKS.md,
Satellite scenes)."""
_PREDICTED = ("DEFLATE", "LZW", "ZSTD", "LZMA")
"""Compressions that take a TIFF predictor."""


@functools.lru_cache(maxsize=1)
def intermediate_compression() -> dict[str, Any]:
    """Creation options of the intermediate tiled GeoTIFF a :class:`BlockWriter` fills: ZSTD
    level 1 where GDAL has it, else deflate level 1. It is written once and read twice
    (overviews, COG copy), and ZSTD-1 writes and reads it several times faster than deflate-1
    at about the same size (BENCHMARKS.md, Satellite scenes)."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.transform import Affine

    wanted = {"compress": "zstd", "zstd_level": 1}
    try:
        with rasterio.MemoryFile() as mem:
            with mem.open(
                driver="GTiff", width=16, height=16, count=1, dtype="uint8",
                transform=Affine(1, 0, 0, 0, -1, 16), **wanted,
            ) as probe:  # fmt: skip
                probe.write(np.zeros((1, 16, 16), np.uint8))
            with mem.open() as back:
                ok = back.profile.get("compress") == "zstd"
    except (RasterioError, OSError, ValueError):
        ok = False
    return wanted if ok else {"compress": "deflate", "zlevel": 1}


@functools.lru_cache(maxsize=1)
def has_cog_driver() -> bool:
    """Whether the installed GDAL has the COG driver (GDAL >= 3.1)."""
    import rasterio

    with rasterio.Env() as env:
        return "COG" in env.drivers()


def overview_factors(width: int, height: int, blocksize: int) -> list[int]:
    """Overview decimation factors 2, 4, 8, ... until an overview fits in one
    ``blocksize``×``blocksize`` block (GDAL's COG rule); [] for a raster that fits in one."""
    factors: list[int] = []
    f = 1
    while max(math.ceil(width / f), math.ceil(height / f)) > blocksize:
        f *= 2
        factors.append(f)
    return factors


class BlockWriter:
    """Write a ``count``-band ``width``×``height`` raster window by window, finish it as a COG.

    Use as a context manager: ``write`` any windows (each pixel once; windows aligned to
    ``blocksize`` keep GDAL's cache smallest); on a clean exit the overviews are built
    (factors from :func:`overview_factors`, resampling ``resampling``: default ``"average"``
    for float data, ``"nearest"`` for integer data such as masks and uint8) and ``path`` appears
    in COG layout, ``compress``-ed (``deflate`` with the TIFF predictor), tiled
    ``blocksize``×``blocksize``. Unwritten pixels read as ``nodata`` (0 without one).

    ``georef``: CRS and transform (None: a plain raster); ``nodata``: the nodata value stored in
    the file (NaN allowed for float data); ``band_names``: band descriptions. Atomic: until the
    end only temporary files beside ``path`` exist, and an exception inside the ``with`` block
    (or while finishing) leaves neither them nor ``path`` (an existing ``path`` stays as it
    was). An existing ``path`` raises :class:`~geopose.errors.OutputExistsError` unless
    ``overwrite``; an unwritable one :class:`~geopose.errors.OutputPathError`, both on entry.

    Memory: only the arrays passed to ``write`` (plus GDAL's block cache, capped at
    ``FINISH_CACHE_MB`` while finishing). Disk: while finishing, the intermediate tiled GeoTIFF
    (:func:`intermediate_compression`) and the COG coexist. ``write`` may be called from
    another thread than the one that entered the writer, but never from two threads at once.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        count: int,
        dtype: str | np.dtype,
        georef: Georef | None,
        nodata: float | None = None,
        overwrite: bool = False,
        blocksize: int = 512,
        compress: str = "deflate",
        band_names: Sequence[str] | None = None,
        resampling: str | None = None,
    ) -> None:
        from rasterio.enums import Resampling

        self.path = Path(path)
        self.width, self.height, self.count = int(width), int(height), int(count)
        self.dtype = np.dtype(dtype)
        if min(self.width, self.height, self.count) < 1:
            raise ValueError(
                f"BlockWriter: need a positive size and band count, got "
                f"{self.width}×{self.height}×{self.count}"
            )
        if blocksize < 16 or blocksize % 16:
            raise ValueError(f"BlockWriter: blocksize must be a multiple of 16, got {blocksize}")
        if band_names is not None and len(band_names) != self.count:
            raise ValueError(f"BlockWriter: {len(band_names)} band names for {self.count} bands")
        self.georef = georef
        self.nodata = nodata
        self.overwrite = overwrite
        self.blocksize = int(blocksize)
        self.compress = str(compress).upper()
        self.band_names = None if band_names is None else [str(n) for n in band_names]
        if resampling is None:
            resampling = "average" if self.dtype.kind == "f" else "nearest"
        self.resampling = Resampling[resampling]
        self.used_cog_driver: bool | None = None
        """After a successful exit: whether GDAL's COG driver wrote the file."""
        self._atomic: Any = None
        self._tmp: Path | None = None
        self._part: Path | None = None
        self._dst: Any = None

    # -- context -------------------------------------------------------------------------------

    def __enter__(self) -> BlockWriter:
        import rasterio

        check_output_file(self.path)
        self._atomic = atomic_path(self.path, self.overwrite)
        self._tmp = self._atomic.__enter__()  # OutputExistsError / OutputPathError here
        # the intermediate tiled GeoTIFF: named like an atomic temporary, so that a killed run's
        # leftover is removed by remove_stale_temps like the others
        self._part = self._tmp.with_name(self._tmp.name + ".part.tif")
        profile: dict[str, Any] = dict(
            driver="GTiff",
            width=self.width,
            height=self.height,
            count=self.count,
            dtype=self.dtype.name,
            nodata=self.nodata,
            tiled=True,
            blockxsize=self.blocksize,
            blockysize=self.blocksize,
            bigtiff="IF_SAFER",
            sparse_ok=True,
            **intermediate_compression(),
        )
        if self.georef is not None:
            profile.update(crs=self.georef.crs, transform=self.georef.transform)
        try:
            self._dst = rasterio.open(self._part, "w", **profile)
            if self.band_names is not None:
                for i, name in enumerate(self.band_names, 1):
                    self._dst.set_band_description(i, name)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            self._abort(exc)
            return False
        try:
            self._finish()
        except BaseException as err:
            self._abort(err)
            raise
        self._remove_part()
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(None, None, None)  # rename onto path
        return False

    def _abort(self, exc: BaseException) -> None:
        """Close and remove everything written; let atomic_path clean its temporary (it may
        turn an out-of-space OSError into OutputPathError, which is then raised)."""
        if self._dst is not None:
            with contextlib.suppress(Exception):  # already failing; the file is deleted next
                self._dst.close()
            self._dst = None
        self._remove_part()
        atomic, self._atomic = self._atomic, None
        if atomic is not None:
            atomic.__exit__(type(exc), exc, exc.__traceback__)

    def _remove_part(self) -> None:
        if self._part is not None:
            for p in (self._part, self._part.with_name(self._part.name + ".aux.xml")):
                p.unlink(missing_ok=True)

    # -- writing -------------------------------------------------------------------------------

    def write(self, array: np.ndarray, window: Any) -> None:
        """Write ``array`` (count×h×w, or h×w for one band) at ``window`` (a
        ``rasterio.windows.Window`` of h×w px inside the raster). Values are cast to the
        writer's dtype when numpy allows it safely within their kind (float64 -> float32 yes,
        float -> int no: ValueError)."""
        from rasterio.windows import Window

        if self._dst is None:
            raise RuntimeError("BlockWriter.write outside its with-block")
        array = np.asarray(array)
        if array.ndim == 2 and self.count == 1:
            array = array[None]
        c0, r0 = round(window.col_off), round(window.row_off)
        w, h = round(window.width), round(window.height)
        if array.shape != (self.count, h, w):
            raise ValueError(
                f"BlockWriter.write: array {array.shape} does not match window {h}×{w} "
                f"with {self.count} band(s)"
            )
        if c0 < 0 or r0 < 0 or c0 + w > self.width or r0 + h > self.height:
            raise ValueError(
                f"BlockWriter.write: window {window} is not inside {self.width}×{self.height}"
            )
        if array.dtype != self.dtype:
            if not np.can_cast(array.dtype, self.dtype, "same_kind"):
                raise ValueError(f"BlockWriter.write: cannot write {array.dtype} as {self.dtype}")
            array = array.astype(self.dtype)
        self._dst.write(array, window=Window(c0, r0, w, h))

    def _finish(self) -> None:
        import rasterio

        dst, self._dst = self._dst, None
        dst.close()
        # GDAL's block cache (default 5 % of RAM) would fill with the whole map while the
        # overviews and the copy run: cap it for these two steps (copy_to_cog caps it too).
        # (rasterio takes the value in bytes and sets GDAL's process-wide cache size, restored
        # on exit.)
        with rasterio.Env(GDAL_CACHEMAX=FINISH_CACHE_MB * 2**20):
            self._overviews_and_copy()

    def _overviews_and_copy(self) -> None:
        import rasterio

        factors = overview_factors(self.width, self.height, self.blocksize)
        if factors:
            with rasterio.open(self._part, "r+") as upd:
                upd.build_overviews(factors, self.resampling)
        self.used_cog_driver = copy_to_cog(
            self._part,
            self._tmp,
            self.blocksize,
            self.compress,
            float_data=self.dtype.kind == "f",
            overviews=bool(factors),
        )


def copy_to_cog(
    src: str | Path,
    dst: str | Path,
    blocksize: int,
    compress: str = "deflate",
    float_data: bool = True,
    overviews: bool = True,
) -> bool:
    """Copy the raster ``src`` (a tiled GeoTIFF or a VRT, with its overviews when
    ``overviews``) to ``dst`` in COG layout, ``compress``-ed (level :data:`COG_LEVEL` for
    deflate, with the TIFF predictor) in ``blocksize`` px tiles; not atomic (``dst`` is a
    temporary of the caller). Returns whether GDAL's COG driver wrote it (else a tiled GTiff
    with ``COPY_SRC_OVERVIEWS``, the same layout)."""
    import rasterio.shutil

    compress = compress.upper()
    # the copy compresses every block again: GDAL's worker threads do it (nothing else runs
    # while a writer finishes; the same bytes, about twice as fast on 2 cores: BENCHMARKS.md,
    # Satellite scenes)
    options: dict[str, Any] = dict(compress=compress, bigtiff="IF_SAFER", num_threads="ALL_CPUS")
    cog = has_cog_driver()
    if compress in _PREDICTED:
        options["predictor"] = "YES" if cog else (3 if float_data else 2)
    if compress == "DEFLATE":
        options["level" if cog else "zlevel"] = COG_LEVEL  # the COG / GTiff option name
    with rasterio.Env(GDAL_CACHEMAX=FINISH_CACHE_MB * 2**20):
        if cog:
            rasterio.shutil.copy(
                src,
                dst,
                driver="COG",
                blocksize=blocksize,
                overviews="FORCE_USE_EXISTING" if overviews else "NONE",
                **options,
            )
        else:
            rasterio.shutil.copy(
                src,
                dst,
                driver="GTiff",
                tiled=True,
                blockxsize=blocksize,
                blockysize=blocksize,
                copy_src_overviews=True,
                **options,
            )
    aux = Path(dst).with_name(Path(dst).name + ".aux.xml")
    aux.unlink(missing_ok=True)
    return cog


def write_scaled_cog(
    src: str | Path,
    dst: str | Path,
    factors: Sequence[float],
    band_names: Sequence[str] | None = None,
    overwrite: bool = False,
    compress: str = "deflate",
) -> Path:
    """Write the COG ``dst`` whose band ``i`` is ``factors[i]`` × band 1 of the float32 COG
    ``src`` (same CRS, transform, nodata, tiling and overviews), atomically.

    One copy through a VRT (``ComplexSource`` with ``ScaleRatio``; each of ``src``'s overview
    levels scaled the same way is named as the VRT's overview: GDAL's implicit VRT overviews
    leave out levels under 128 px): no pass in Python and no intermediate file, and ``src``'s
    overviews scaled are ``dst``'s (an average commutes with a factor). Values are
    ``float32(double(src) · factor)``. Used for the flow map of a scene
    (``AGL · scale · (sin, cos)``) once its pose is known.
    """
    from xml.sax.saxutils import escape

    import rasterio
    from rasterio.errors import RasterioError

    from geopose.errors import GeoposeDataError

    src, dst = Path(src).resolve(), Path(dst)
    if band_names is not None and len(band_names) != len(factors):
        raise ValueError(f"write_scaled_cog: {len(band_names)} names for {len(factors)} bands")
    if not all(math.isfinite(k) for k in factors):
        raise ValueError(f"write_scaled_cog: factors must be finite, got {list(factors)}")
    check_output_file(dst)
    try:
        ref = rasterio.open(src)
    except RasterioError as exc:
        raise GeoposeDataError(src, f"unreadable raster ({exc})") from exc
    with ref:
        if ref.dtypes[0] != "float32":
            raise GeoposeDataError(src, f"is {ref.dtypes[0]}, expected a float32 map")
        size = (ref.width, ref.height)
        blocksize = ref.block_shapes[0][1]
        levels = [(-(-ref.width // f), -(-ref.height // f)) for f in ref.overviews(1)]
        nodata = ref.nodata
        head = ""
        if ref.crs is not None:
            gt = ", ".join(repr(v) for v in ref.transform.to_gdal())
            head = f"<SRS>{escape(ref.crs.to_wkt())}</SRS><GeoTransform>{gt}</GeoTransform>"
    with contextlib.ExitStack() as stack:
        overviews = []  # /vsimem/ names of the scaled overview levels
        for level, (w, h) in enumerate(levels):
            doc = _scaled_vrt(src, w, h, factors, nodata, band_names, "", level, [])
            mem = stack.enter_context(rasterio.MemoryFile(doc.encode(), ext=".vrt"))
            overviews.append(mem.name)
        doc = _scaled_vrt(src, *size, factors, nodata, band_names, head, None, overviews)
        mem = stack.enter_context(rasterio.MemoryFile(doc.encode(), ext=".vrt"))
        with atomic_path(dst, overwrite) as tmp:
            copy_to_cog(mem.name, tmp, blocksize, compress, float_data=True, overviews=bool(levels))
    return dst


def _scaled_vrt(
    src: Path,
    width: int,
    height: int,
    factors: Sequence[float],
    nodata: float | None,
    band_names: Sequence[str] | None,
    head: str,
    level: int | None,
    overviews: Sequence[str],
) -> str:
    """The XML of a float32 VRT of ``width``×``height`` px whose band ``i`` is ``factors[i]``
    × band 1 of ``src`` (its overview ``level`` when given), with ``overviews`` (VRT files of
    the same bands) as its overview levels and ``head`` (SRS, GeoTransform) as its georef."""
    from xml.sax.saxutils import escape

    nd = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
    source_nd = "" if nodata is None else f"<NODATA>{nodata!r}</NODATA>"
    opts = ""
    if level is not None:
        opts = f'<OpenOptions><OOI key="OVERVIEW_LEVEL">{level}</OOI></OpenOptions>'
    bands = []
    for i, k in enumerate(factors, 1):
        name = "" if band_names is None else escape(band_names[i - 1])
        ovr = "".join(
            f'<Overview><SourceFilename relativeToVRT="0">{escape(o)}</SourceFilename>'
            f"<SourceBand>{i}</SourceBand></Overview>"
            for o in overviews
        )
        bands.append(
            f'<VRTRasterBand dataType="Float32" band="{i}">{nd}'
            f"<Description>{name}</Description>{ovr}<ComplexSource>"
            f'<SourceFilename relativeToVRT="0">{escape(str(src))}</SourceFilename>{opts}'
            f"<SourceBand>1</SourceBand>{source_nd}<ScaleOffset>0</ScaleOffset>"
            f"<ScaleRatio>{float(k)!r}</ScaleRatio></ComplexSource></VRTRasterBand>"
        )
    body = "".join(bands)
    return f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{head}{body}</VRTDataset>'


# -- layout check ------------------------------------------------------------------------------

_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_TYPE_FORMATS = {1: "B", 3: "H", 4: "I", 16: "Q", 13: "I", 18: "Q"}
_WANTED_TAGS = (254, 273, 322, 324)  # NewSubfileType, StripOffsets, TileWidth, TileOffsets


def _tiff_ifds(path: Path) -> list[tuple[int, dict[int, tuple[int, ...]]]] | None:
    """Every IFD of a TIFF as (its offset, {tag: values} for the tags is_cog needs); None when
    the file is no TIFF."""
    with open(path, "rb") as f:
        head = f.read(16)
        bo = {b"II": "<", b"MM": ">"}.get(head[:2])
        if bo is None or len(head) < 8:
            return None
        magic = struct.unpack(bo + "H", head[2:4])[0]
        if magic == 42:
            big, off = False, struct.unpack(bo + "I", head[4:8])[0]
        elif magic == 43 and len(head) >= 16:
            big, off = True, struct.unpack(bo + "Q", head[8:16])[0]
        else:
            return None
        n_fmt, e_size, c_fmt, v_size = ("Q", 20, "Q", 8) if big else ("H", 12, "I", 4)
        ifds: list[tuple[int, dict[int, tuple[int, ...]]]] = []
        seen: set[int] = set()
        while off and off not in seen and len(ifds) < 10_000:
            seen.add(off)
            f.seek(off)
            (n,) = struct.unpack(bo + n_fmt, f.read(struct.calcsize(n_fmt)))
            raw = f.read(n * e_size + v_size)
            tags: dict[int, tuple[int, ...]] = {}
            for i in range(n):
                e = raw[i * e_size : (i + 1) * e_size]
                tag, typ = struct.unpack(bo + "HH", e[:4])
                (cnt,) = struct.unpack(bo + c_fmt, e[4 : 4 + struct.calcsize(c_fmt)])
                value = e[4 + struct.calcsize(c_fmt) :]
                if tag not in _WANTED_TAGS or typ not in _TYPE_FORMATS:
                    continue
                size = _TYPE_SIZES[typ] * cnt
                if size <= v_size:
                    data = value[:size]
                else:
                    (ptr,) = struct.unpack(bo + c_fmt, value)
                    pos = f.tell()
                    f.seek(ptr)
                    data = f.read(size)
                    f.seek(pos)
                tags[tag] = struct.unpack(f"{bo}{cnt}{_TYPE_FORMATS[typ]}", data)
            ifds.append((off, tags))
            (off,) = struct.unpack(bo + c_fmt, raw[n * e_size : n * e_size + v_size])
        return ifds


def is_cog(path: str | Path) -> bool:
    """Whether ``path`` is a cloud-optimised GeoTIFF: tiled (or a single block), with
    overviews when larger than one block, every IFD before the image data, and the image data
    ordered from the smallest overview to the full resolution last (the checks of GDAL's
    ``validate_cloud_optimized_geotiff.py``, masks aside). False for files that are no TIFF."""
    import rasterio
    from rasterio.errors import RasterioError

    path = Path(path)
    try:
        with rasterio.open(path) as src:
            if src.driver != "GTiff":
                return False
            bw, bh = src.block_shapes[0][1], src.block_shapes[0][0]
            single = bw >= src.width and bh >= src.height
            tiled = bool(src.profile.get("tiled", False))
            if not (tiled or single):
                return False
            if not single and not src.overviews(1):
                return False
        ifds = _tiff_ifds(path)
    except (RasterioError, OSError, struct.error):
        return False
    if not ifds:
        return False
    images = [(off, t) for off, t in ifds if not int(t.get(254, (0,))[0]) & 4]  # not masks
    data_start = []
    data_end = []
    for _, tags in images:
        offsets = [o for o in tags.get(324, tags.get(273, ())) if o]
        if not offsets:
            continue
        data_start.append(min(offsets))
        data_end.append(max(offsets))
    if not data_start:
        return True
    if max(off for off, _ in ifds) > min(data_start):
        return False  # an IFD after image data
    ifd_offsets = [off for off, _ in images]
    if ifd_offsets != sorted(ifd_offsets):
        return False
    # image i+1 (smaller) entirely before image i: full resolution last
    return all(data_start[i] > data_end[i + 1] for i in range(len(data_start) - 1))
