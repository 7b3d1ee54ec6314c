"""RGB and AGL rasters in the competition / US3D formats.

RGB: ``.j2k``/``.jp2`` (JPEG 2000), ``.tif``/``.tiff``, ``.png``/``.jpg`` -> H×W×3 uint8.
AGL: uint16 centimetre TIFF with 65535 = missing  <->  float32 metres with NaN; the original
US3D float32 metre TIFFs are read as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geopose.errors import GeoposeDataError
from geopose.io.atomic import atomic_path, write_bytes_atomic

AGL_NODATA = 65535
"""uint16 value meaning "no height measured"."""
AGL_MAX_M = (AGL_NODATA - 1) / 100.0
"""Largest height (m) a uint16 centimetre file can hold."""

RGB_SUFFIXES = (".j2k", ".jp2", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
J2K_SUFFIXES = (".j2k", ".jp2")
TIFF_SUFFIXES = (".tif", ".tiff")


def _require_file(path: Path) -> None:
    if not path.exists():
        raise GeoposeDataError(path, "file not found")
    if not path.is_file():
        raise GeoposeDataError(path, "not a file")
    if path.stat().st_size == 0:
        raise GeoposeDataError(path, "file is empty")


def _decode_j2k(path: Path, threads: int) -> np.ndarray:
    import imagecodecs

    return imagecodecs.jpeg2k_decode(path.read_bytes(), numthreads=threads)


def _decode_tiff(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def _decode_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def read_rgb(path: str | Path, threads: int = 1) -> np.ndarray:
    """Read an RGB image as an H×W×3 uint8 array.

    JPEG 2000 is decoded with imagecodecs (OpenJPEG): the least CPU per image of the decoders
    measured (BENCHMARKS.md, "I/O"), exact OpenJPEG pixels, and it rejects truncated files.
    ``threads`` OpenJPEG threads per image: 1 (the default) costs the least CPU and suits
    decoding many images in parallel (data loaders, thread pools: the decoder releases the
    GIL); more only shorten one image's decode when cores are idle. A 4-band image keeps its
    first three bands; a band-first TIFF (3×H×W) is moved to H×W×3.
    """
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix not in RGB_SUFFIXES:
        raise GeoposeDataError(
            path, f"unsupported RGB format {suffix!r} (use one of {RGB_SUFFIXES})"
        )
    try:
        if suffix in J2K_SUFFIXES:
            arr = _decode_j2k(path, threads)
        elif suffix in TIFF_SUFFIXES:
            arr = _decode_tiff(path)
        else:
            arr = _decode_pil(path)
    except Exception as exc:  # the codec libraries raise many types; name the file instead
        raise GeoposeDataError(
            path, f"unreadable or truncated image ({type(exc).__name__}: {exc})"
        ) from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise GeoposeDataError(path, "unreadable or truncated image (no image data)")
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        raise GeoposeDataError(
            path, f"expected 3 colour bands, got a single-band image {arr.shape}"
        )
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise GeoposeDataError(path, f"expected an H×W×3 image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise GeoposeDataError(path, f"expected uint8 RGB, got {arr.dtype}")
    return np.ascontiguousarray(arr[..., :3])


def write_rgb(
    path: str | Path, rgb: np.ndarray, overwrite: bool = True, quality: float = 40
) -> Path:
    """Write an H×W×3 uint8 image; the format follows the suffix.

    ``.j2k``/``.jp2``: JPEG 2000 (OpenJPEG via imagecodecs), lossy at a target PSNR of
    ``quality`` dB (40 by default: 9:1 on the aerial-like image of bench_io; 30 is blocky);
    ``quality=0`` is lossless (reversible 5/3 wavelet). ``.tif``: deflate TIFF.
    ``.png``/``.jpg``: Pillow.
    """
    path = Path(path)
    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"write_rgb wants H×W×3 uint8, got {rgb.shape} {rgb.dtype}")
    suffix = path.suffix.lower()
    if suffix in J2K_SUFFIXES:
        import imagecodecs

        codec = "jp2" if suffix == ".jp2" else "j2k"
        level = None if quality == 0 else quality
        data = imagecodecs.jpeg2k_encode(
            rgb, level=level, codecformat=codec, reversible=quality == 0
        )
        return write_bytes_atomic(path, bytes(data), overwrite)
    with atomic_path(path, overwrite) as tmp:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(tmp, rgb, photometric="rgb", compression="zlib")
        elif suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            Image.fromarray(rgb).save(tmp, format="PNG" if suffix == ".png" else "JPEG")
        else:
            raise ValueError(f"unsupported RGB suffix {suffix!r}")
    return path


def agl_cm_to_m(cm: np.ndarray) -> np.ndarray:
    """uint16 centimetres (65535 = missing) -> float32 metres with NaN."""
    m = cm.astype(np.float32) / np.float32(100.0)
    m[cm == AGL_NODATA] = np.nan
    return m


def agl_m_to_cm(m: np.ndarray) -> np.ndarray:
    """float metres (NaN = missing) -> uint16 centimetres, rounded; negatives clip to 0."""
    m = np.asarray(m, dtype=np.float64)
    nan = ~np.isfinite(m)
    cm = np.rint(np.clip(np.where(nan, 0.0, m), 0.0, AGL_MAX_M) * 100.0).astype(np.uint16)
    cm[nan] = AGL_NODATA
    return cm


def read_agl_raw(source: str | Path | bytes, name: str | Path | None = None) -> np.ndarray:
    """The stored values of an AGL TIFF (H×W): uint16 centimetres or float metres, unconverted.

    ``source`` is a path or the file's bytes (e.g. a member of a submission archive); ``name``
    labels error messages (default: the path). Raises :class:`GeoposeDataError` for a missing,
    empty, undecodable or multi-band file, or one of another dtype.
    """
    import io

    import tifffile

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise GeoposeDataError(name, "file is empty")
        target = io.BytesIO(source)
    else:
        target = Path(source)
        name = target if name is None else name
        _require_file(target)
    try:
        arr = tifffile.imread(target)
    except Exception as exc:
        raise GeoposeDataError(
            name, f"unreadable or truncated TIFF ({type(exc).__name__}: {exc})"
        ) from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise GeoposeDataError(name, "unreadable or truncated TIFF (no image data)")
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):  # one band, band-first or last
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2:
        raise GeoposeDataError(name, f"expected a single-band height map, got shape {arr.shape}")
    if arr.dtype != np.uint16 and not np.issubdtype(arr.dtype, np.floating):
        raise GeoposeDataError(
            name, f"AGL must be uint16 centimetres or float metres, got {arr.dtype}"
        )
    return arr


def agl_to_m(arr: np.ndarray) -> np.ndarray:
    """Stored AGL values -> float32 metres with NaN (uint16 cm, or float m kept, non-finite NaN)."""
    if arr.dtype == np.uint16:
        return agl_cm_to_m(arr)
    out = arr.astype(np.float32)
    out[~np.isfinite(out)] = np.nan
    return out


def read_agl(path: str | Path) -> np.ndarray:
    """Read an AGL TIFF as float32 metres (H×W) with NaN where no height was measured.

    uint16 files are centimetres with 65535 = missing (the competition format); float files are
    metres (the original US3D format), non-finite values becoming NaN.
    """
    return agl_to_m(read_agl_raw(path))


def write_agl(
    path: str | Path, agl_m: np.ndarray, overwrite: bool = True, float_metres: bool = False
) -> Path:
    """Write an AGL map given in metres (NaN = missing) as a deflate-compressed TIFF.

    By default the competition format: uint16 centimetres, rounded, 65535 for NaN.
    ``float_metres=True`` writes float32 metres (the US3D format) instead.
    """
    import tifffile

    agl_m = np.asarray(agl_m)
    if agl_m.ndim != 2:
        raise ValueError(f"write_agl wants an H×W map, got {agl_m.shape}")
    data = agl_m.astype(np.float32) if float_metres else agl_m_to_cm(agl_m)
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, data, compression="zlib")
    return Path(path)
