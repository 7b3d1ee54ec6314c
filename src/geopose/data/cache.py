"""A training cache: the data set converted once into uncompressed ``.npy`` files, so a random
crop is a memory-mapped read of its rows instead of decoding a whole 2048² JPEG 2000.

Layout of ``CACHE/`` (``geopose prepare DATA --out CACHE [--downsample 2]``)::

    geopose_cache.json     {"format": 1, "downsample": f, "source": DATA, "split": ...}
    index.csv              id, stem, city, gsd (m/px), split, rows, cols, angle (rad),
                           scale (px/m), agl_max (m), rgb, agl (paths relative to CACHE)
    train/{stem}_RGB.npy   rows×cols×3 uint8
    train/{stem}_AGL.npy   rows×cols uint16 centimetres, 65535 = no height (as the TIFFs)
    test/{stem}_RGB.npy

GSD and scale in the index are those of the cached (possibly downsampled) images. The index is
written last: a cache without it is incomplete and ``prepare`` resumes it, skipping the images
already converted.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geopose.data.base import ImageHandle, ImageSource, downsample_agl, downsample_rgb
from geopose.errors import ConfigError, GeoposeDataError, OutputExistsError
from geopose.runtime import process_map
from geopose.types import ProgressFn, city_index

MARKER = "geopose_cache.json"
INDEX = "index.csv"
FORMAT = 1
CONVERT_STAGE = "convert"
# Images whose memory maps a CacheSource keeps open (two maps each; Linux allows a process
# 65,530 by default).
MAX_MAPPED = 4096
"""The progress stage of :func:`prepare_cache` (images converted)."""


def is_cache(path: str | Path) -> bool:
    """True if ``path`` is a folder made by ``geopose prepare``."""
    return (Path(path) / MARKER).is_file()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from geopose.io import atomic_path

    with atomic_path(path) as tmp:  # the temporary name ends in .npy, so np.save keeps it
        np.save(tmp, np.ascontiguousarray(arr))


def _npy_ok(path: Path) -> bool:
    try:
        np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return True


def convert_image(row: dict, out: str | Path, downsample: int) -> dict:
    """Convert one image (a row of :func:`geopose.io.load_index`) into the cache; returns its
    cache index row. Images already converted are only re-read for their metadata."""
    from geopose.io import agl_m_to_cm, read_agl, read_rgb, read_vflow

    out = Path(out)
    split, stem = row["split"], row["stem"]
    rgb_rel, agl_rel = f"{split}/{stem}_RGB.npy", f"{split}/{stem}_AGL.npy"
    has_agl = isinstance(row.get("agl"), str)
    rgb_path, agl_path = out / rgb_rel, out / agl_rel
    if _npy_ok(rgb_path) and (not has_agl or _npy_ok(agl_path)):
        rgb = np.load(rgb_path, mmap_mode="r")
        agl = None
        if has_agl:
            from geopose.io import agl_cm_to_m

            agl = agl_cm_to_m(np.asarray(np.load(agl_path, mmap_mode="r")))
    else:
        rgb = read_rgb(row["rgb"])
        agl = read_agl(row["agl"]) if has_agl else None
        if agl is not None and agl.shape != rgb.shape[:2]:
            raise GeoposeDataError(row["agl"], f"AGL is {agl.shape}, the RGB {rgb.shape[:2]}")
        rgb = downsample_rgb(rgb, downsample)
        if agl is not None:
            from geopose.io import agl_cm_to_m

            cm = agl_m_to_cm(downsample_agl(agl, downsample))
            agl = agl_cm_to_m(cm)  # what the cache holds, as a resumed run reads it back
            _save_npy(agl_path, cm)
        _save_npy(rgb_path, rgb)
    angle, scale = math.nan, math.nan
    if isinstance(row.get("vflow"), str):
        pose = read_vflow(row["vflow"])
        angle, scale = pose.angle, pose.scale / downsample
    top = float(np.nanmax(agl)) if agl is not None and np.isfinite(agl).any() else math.nan
    return {
        "id": row["id"],
        "stem": stem,
        "city": row["city"],
        "gsd": float(row["gsd"]) * downsample,
        "split": split,
        "rows": int(rgb.shape[0]),
        "cols": int(rgb.shape[1]),
        "angle": angle,
        "scale": scale,
        "agl_max": top,
        "rgb": rgb_rel,
        "agl": agl_rel if has_agl else "",
    }


def _check_out(out: Path, meta: dict, overwrite: bool) -> None:
    """Refuse an existing folder that is not this cache (or finished) unless ``overwrite``."""
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / MARKER
    if overwrite:
        if not marker.is_file():
            raise GeoposeDataError(out, "exists and is not a geopose cache; not deleting it")
        for name in (MARKER, INDEX):
            (out / name).unlink(missing_ok=True)
        for sub in ("train", "test"):
            shutil.rmtree(out / sub, ignore_errors=True)
        return
    if not marker.is_file():
        raise OutputExistsError(out)
    old = json.loads(marker.read_text())
    if (out / INDEX).is_file():
        raise OutputExistsError(out)
    if {k: old.get(k) for k in meta} != meta:
        raise GeoposeDataError(out, f"an unfinished cache made with {old}; pass --overwrite")


@dataclass
class PreparedCache:
    """What :func:`prepare_cache` made: the cache folder, its index and its size on disk."""

    root: Path
    index: pd.DataFrame
    """One row per image (the cache's ``index.csv``)."""
    size_bytes: int
    """Bytes of every ``.npy`` file in the cache."""
    downsample: int


def prepare_cache(
    data: str | Path,
    out: str | Path,
    downsample: int = 1,
    split: str = "all",
    workers: int = 1,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
) -> PreparedCache:
    """Convert the data set at ``data`` into a cache at ``out`` (``geopose prepare``).

    ``split``: ``train``, ``test`` or ``all`` (else :class:`~geopose.errors.ConfigError`);
    ``workers`` processes decode in parallel; ``on_progress("convert", done, total)`` is called
    after each image. An unfinished cache with the same settings is resumed.
    """
    from geopose.io import (
        check_output_dir,
        ensure_output_dir,
        load_index,
        remove_stale_temps,
        write_text_atomic,
    )

    if split not in ("train", "test", "all"):
        raise ConfigError(f"--split must be train, test or all, got {split!r}")
    data, out = Path(data).resolve(), Path(out)
    check_output_dir(out)
    if downsample < 1:
        raise GeoposeDataError(None, f"--downsample must be >= 1, got {downsample}")
    index = load_index(data, split)
    meta = {"format": FORMAT, "downsample": int(downsample), "source": str(data), "split": split}
    for sub in ("", "train", "test"):  # temporary files of a run that was killed
        remove_stale_temps(out / sub)
    _check_out(out, meta, overwrite)
    ensure_output_dir(out)
    write_text_atomic(out / MARKER, json.dumps(meta, indent=1))  # first: resumable from here
    for sub in ("train", "test"):
        ensure_output_dir(out / sub)
    rows = index.to_dict("records")
    results: list[dict] = []
    if workers <= 1:
        for row in rows:
            results.append(convert_image(row, out, downsample))
            if on_progress is not None:
                on_progress(CONVERT_STAGE, len(results), len(rows))
    else:
        convert = functools.partial(convert_image, out=out, downsample=downsample)
        for result in process_map(convert, rows, workers, f"geopose prepare {data}"):
            results.append(result)
            if on_progress is not None:
                on_progress(CONVERT_STAGE, len(results), len(rows))
    table = pd.DataFrame(results)
    write_text_atomic(out / INDEX, table.to_csv(index=False))
    size = sum(p.stat().st_size for p in out.rglob("*.npy"))
    return PreparedCache(out, table, size, int(downsample))


class CacheSource(ImageSource):
    """Images of a cache, memory-mapped: ``open`` maps the files, ``read`` copies the window."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        from geopose.io.tables import read_csv

        self.root = Path(root)
        meta_path = self.root / MARKER
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GeoposeDataError(meta_path, f"unreadable cache marker ({exc})") from exc
        if not (self.root / INDEX).is_file():
            raise GeoposeDataError(
                self.root / INDEX, "cache is unfinished: run geopose prepare again"
            )
        index = read_csv(self.root / INDEX, ["stem", "city", "gsd", "split", "angle", "scale"])
        if split != "all":
            index = index[index["split"] == split]
        index = index.reset_index(drop=True)
        index["city_idx"] = [city_index(c) for c in index["city"]]
        index["agl"] = index["agl"].fillna("")
        self.index = index
        self.downsample = int(meta.get("downsample", 1))
        self._maps: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def open(self, i: int) -> ImageHandle:
        row = self.row(i)
        rgb, agl = self._mapped(i, row)
        return ImageHandle(rgb, agl, float(row["agl_max"]), agl_in_cm=True)

    def _mapped(self, i: int, row: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """Image ``i``'s memory maps, kept for the next crop of it (mapping the two files anew
        takes a third of a crop's time); the oldest are let go beyond :data:`MAX_MAPPED`."""
        got = self._maps.get(i)
        if got is not None:
            return got
        try:
            rgb = np.load(self.root / row["rgb"], mmap_mode="r")
            agl = np.load(self.root / row["agl"], mmap_mode="r") if row["agl"] else None
        except (OSError, ValueError) as exc:
            raise GeoposeDataError(
                self.root / row["rgb"], f"unreadable cache file ({exc})"
            ) from exc
        if len(self._maps) >= MAX_MAPPED:
            del self._maps[next(iter(self._maps))]
        self._maps[i] = (rgb, agl)
        return rgb, agl

    def __getstate__(self) -> dict:
        # A loader process maps the files itself: pickling a memory map copies its data.
        return {**self.__dict__, "_maps": {}}
