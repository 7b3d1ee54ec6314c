"""Predict a satellite scene of any size in bounded memory: tiles in, Cloud-Optimized GeoTIFFs out.

A scene (``geopose.io.scene.Scene``: any raster rasterio opens, 8 or 16 bit, any number of
bands, with a nodata value) is predicted tile by tile, in row-major order, with the same tile
layout and blending windows as :func:`geopose.inference.tiling.predict_tiled` (so a scene
predicted here equals :meth:`Predictor.predict` of the whole stretched image with the same tile
size and overlap, to float rounding). Memory holds one band of tile rows: a float32 accumulator
of ``tile + blocksize`` rows by the scene's width (100 MB for a 16384 px wide scene with 1024 px
tiles), one tile's input, the model and GDAL's block cache (capped at
:data:`SCENE_CACHE_MB`); never the whole scene.

Outputs in ``out_dir`` (each written atomically as a tiled, deflate-compressed COG with
overviews by ``geopose.io.cog.BlockWriter``; NaN is nodata), in this order:

1. ``{stem}_AGL.tif``: float32 metres, NaN where the input is nodata (all of a pixel's bands
   equal to the nodata value, as ``Scene`` reports it);
2. ``{stem}_FLOW.tif``: 2 bands ``(dx, dy)`` px = AGL · scale · (sin angle, cos angle),
   copied from the AGL file by GDAL through a VRT that scales it (:func:`write_flow`);
3. with ``rectify=True``: ``{stem}_NADIR_RGB.tif`` (the scene's 3 display bands moved to their
   ground footprints, 0 where occluded), ``{stem}_NADIR_AGL.tif`` (float32 m, NaN where
   occluded) and ``{stem}_OCCLUDED.tif`` (255 = no pixel landed there), by
   :func:`geopose.rectify.rectify_windowed`;
4. ``{stem}_VFLOW.json`` (angle rad, scale px/cm) last: a json means complete outputs, and a
   re-run skips such a scene (unless ``overwrite``).

**One direction and one scale per scene.** A satellite scene is one exposure (or one pushbroom
strip) taken from one viewing geometry: the flow direction and the pixels-per-metre scale are
properties of the camera, not of the ground, and they vary slowly (the look angle changes by
about 1.4° across a 15 km swath seen from 600 km: a few percent of the scale at 25° off nadir).
Each tile's own estimate, on the other hand, is noisy (a tile of fields or water holds little
evidence). So every tile votes: its direction as a unit vector and its scale, weighted by its
valid (non-nodata) blending-window area; a tile whose direction is (0, 0) (no evidence: e.g.
a ramp fit on flat land) casts no vote for either. The scene gets the weighted mean direction
(renormalised, CONVENTIONS.md) and mean scale; with no vote anywhere the flow is zero (scale
0, angle 0 as a label), as :meth:`Predictor.predict` writes. Per-region poses (e.g. a vote per
strip of tile rows, interpolated along the strip) would be the option for very long strips
whose geometry drifts more than the tiles' noise; it is not built (the scene's tile votes are
returned in :class:`SceneResult` for checking the spread).

While the model runs, a reader thread prefetches (reads and stretches) the next tiles and a
writer thread compresses and writes finished strips: I/O overlaps compute.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geopose.errors import GeoposeDataError
from geopose.geometry import vector_to_angle
from geopose.inference.background import BackgroundWriter, background_writer, prefetch
from geopose.inference.predictor import Predictor
from geopose.inference.tiling import axis_weights, tile_starts
from geopose.io import (
    SCENE_CACHE_MB,
    agl_name,
    ensure_output_dir,
    flow_name,
    nadir_paths,
    read_vflow,
    vflow_name,
    write_text_atomic,
    write_vflow,
)
from geopose.types import NO_DIRECTION_ANGLE, direction_known

SCENE_TILE = 1024
"""Default tile side (px) of scene prediction."""
SCENE_OVERLAP = 128
"""Default least overlap (px) of neighbouring tiles."""
BLOCKSIZE = 512
"""Internal tile size (px) of the output COGs; strips are written in multiples of it."""

ProgressFn = Callable[[str, int, int], None]
"""``on_progress(stage, done, total)``; stage ``predict`` (tiles), ``flow`` or ``rectify``
(strips / windows)."""


# --- outputs ------------------------------------------------------------------------------


def pose_name(stem: str) -> str:
    """``.{stem}_POSE.json``: a hidden note of the pose found by the first pass, written once
    ``{stem}_AGL.tif`` is complete, so a run killed later resumes after the model; removed
    when the VFLOW json is written."""
    return f".{stem}_POSE.json"


def scene_output_paths(out_dir: str | Path, stem: str, rectify: bool = False) -> dict[str, Path]:
    """The files :func:`predict_scene` writes, in writing order (``vflow`` last)."""
    out_dir = Path(out_dir)
    paths = {"agl": out_dir / agl_name(stem), "flow": out_dir / flow_name(stem)}
    if rectify:
        nadir = nadir_paths(out_dir, stem, geo=True)
        paths |= {f"nadir_{k}": p for k, p in nadir.items()}
    paths["vflow"] = out_dir / vflow_name(stem)
    return paths


def scene_done(out_dir: str | Path, stem: str, rectify: bool = False) -> bool:
    """True when a scene's outputs are complete: the VFLOW json parses and every raster exists
    (each raster appears only complete: it is renamed into place when written)."""
    paths = scene_output_paths(out_dir, stem, rectify)
    try:
        read_vflow(paths["vflow"])
    except GeoposeDataError:
        return False
    return all(p.is_file() for p in paths.values())


@dataclass
class SceneResult:
    """What :func:`predict_scene` did for one scene.

    ``angle`` rad, ``scale`` px/m (0 with ``direction_known`` False: no tile found evidence of
    the direction, zero flow written); ``tiles`` predicted, ``empty_tiles`` skipped (all
    nodata); ``max_agl`` the tallest predicted height (m); ``seconds`` wall time and
    ``model_seconds`` the part spent in the model (both 0 when ``skipped``); ``votes`` the
    tiles' ``(row px, col px, angle rad | nan, scale px/m, weight px)``.
    """

    stem: str
    paths: dict[str, Path]
    angle: float
    scale: float
    direction_known: bool
    skipped: bool = False
    tiles: int = 0
    empty_tiles: int = 0
    max_agl: float = 0.0
    seconds: float = 0.0
    model_seconds: float = 0.0
    votes: list[tuple[int, int, float, float, float]] = field(default_factory=list)


# --- the pose vote ------------------------------------------------------------------------


class PoseVote:
    """Scene-level direction and scale from tile votes (module doc): unit directions and
    scales, weighted by the tiles' valid window area; (0, 0) directions do not vote."""

    def __init__(self) -> None:
        self.vector = np.zeros(2)
        self.scale_sum = 0.0
        self.weight = 0.0

    def add(self, direction: np.ndarray, scale: float, weight: float) -> bool:
        """Add one tile's vote (``direction`` (sin, cos), ``scale`` px/m, ``weight`` px);
        returns False (and adds nothing) for a tile without direction evidence."""
        if not direction_known(direction) or not weight > 0 or not math.isfinite(scale):
            return False
        self.vector += weight * np.asarray(direction, dtype=np.float64) / np.hypot(*direction)
        self.scale_sum += weight * float(scale)
        self.weight += weight
        return True

    def result(self) -> tuple[float, float, bool]:
        """``(angle rad, scale px/m, direction_known)``; zero flow when nothing voted."""
        norm = float(np.hypot(*self.vector))
        if not self.weight > 0 or not norm > 1e-9 * self.weight:
            return NO_DIRECTION_ANGLE, 0.0, False
        angle = float(vector_to_angle(self.vector / norm))
        return angle, self.scale_sum / self.weight, True


# --- background reading and writing -------------------------------------------------------


# --- the first pass: tiles -> AGL, pose -----------------------------------------------------


@dataclass
class _Tile:
    """One tile read by the reader thread: ``rgb`` None when the tile is all nodata."""

    row: int  # index of the tile row
    col: int  # index of the tile column
    r: int  # px
    c: int  # px
    rgb: np.ndarray | None
    valid: np.ndarray | None


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a ``height``×``width`` px scene: tile side ``tile`` and least overlap
    ``overlap`` (px), blended with the windows of ``geopose.inference.tiling`` that are zero for
    ``margin`` px next to inner tile edges. ``rows``/``cols``: tile starts (px); ``th``/``tw``:
    the tile's size (px, the scene's when smaller); ``wr``/``wc``: per-axis window weights."""

    height: int
    width: int
    tile: int
    overlap: int
    margin: int

    @functools.cached_property
    def rows(self) -> list[int]:
        return tile_starts(self.height, self.tile, self.overlap)

    @functools.cached_property
    def cols(self) -> list[int]:
        return tile_starts(self.width, self.tile, self.overlap)

    @property
    def th(self) -> int:
        return min(self.tile, self.height)

    @property
    def tw(self) -> int:
        return min(self.tile, self.width)

    @functools.cached_property
    def wr(self) -> list[np.ndarray]:
        return axis_weights(self.rows, self.th, self.height, self.margin)

    @functools.cached_property
    def wc(self) -> list[np.ndarray]:
        return axis_weights(self.cols, self.tw, self.width, self.margin)

    def sums(self) -> tuple[np.ndarray, np.ndarray]:
        """The summed windows per row and per column (the blend divides by their product: the
        windows are outer products, so no 2-D weight accumulator is needed; 1 up to rounding,
        see tiling.py)."""
        den_r, den_c = np.zeros(self.height), np.zeros(self.width)
        for s, a in zip(self.rows, self.wr, strict=True):
            den_r[s : s + self.th] += a
        for s, a in zip(self.cols, self.wc, strict=True):
            den_c[s : s + self.tw] += a
        return den_r, den_c

    def read(self, scene: Any) -> Iterator[_Tile]:
        """The scene's tiles in row-major order, read with their validity."""
        from rasterio.windows import Window

        for i, r in enumerate(self.rows):
            for j, c in enumerate(self.cols):
                rgb, valid = scene.read(Window(c, r, self.tw, self.th), boundless=True)
                if not valid.any():
                    yield _Tile(i, j, r, c, None, None)
                else:
                    yield _Tile(i, j, r, c, rgb, valid)


class _AglPass:
    """The first pass over a scene: every tile predicted, blended into a band accumulator of
    ``grid.th + blocksize`` rows by the scene's width, finished strips written to the AGL COG;
    the tiles' poses voted (:class:`PoseVote`) into ``result``."""

    def __init__(
        self,
        predictor: Predictor,
        grid: TileGrid,
        blocksize: int,
        result: SceneResult,
        on_progress: ProgressFn | None,
    ) -> None:
        self.predictor, self.grid, self.blocksize = predictor, grid, blocksize
        self.result, self.on_progress = result, on_progress
        den_r, den_c = grid.sums()
        self.den_r, self.den_c32 = den_r, den_c.astype(np.float32)
        self.cap = grid.th + blocksize
        self.acc = np.zeros((self.cap, grid.width), np.float32)  # rows from band0; NaN: nodata
        self.band0 = 0
        self.vote = PoseVote()
        self.total = len(grid.rows) * len(grid.cols)
        self.done = 0
        self.max_agl = -math.inf

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress("predict", self.done, self.total)

    def flush(self, upto: int, writer: Any, bg: BackgroundWriter) -> None:
        """Write the finished rows ``[band0, upto)`` and shift the accumulator up."""
        from rasterio.windows import Window

        n = upto - self.band0
        if n <= 0:
            return
        acc, cap = self.acc, self.cap
        with np.errstate(invalid="ignore", divide="ignore"):  # a zero sum has a zero acc: NaN
            out = acc[:n] / self.den_r[self.band0 : upto, None].astype(np.float32)
            out /= self.den_c32
        np.maximum(out, 0, out=out)  # heights clipped at 0 m as Predictor.predict does; NaN kept
        if np.isfinite(out).any():
            self.max_agl = max(self.max_agl, float(np.nanmax(out)))
        bg.put(writer, out[None], Window(0, self.band0, self.grid.width, n))
        for k in range(0, cap - n, n):  # shift up by n rows, in pieces that do not overlap
            m = min(n, cap - n - k)
            acc[k : k + m] = acc[k + n : k + n + m]
        acc[cap - n :] = 0
        self.band0 = upto

    def predict(self, batch: list[_Tile], gsd: float, city: int) -> None:
        """Predict a batch of tiles and blend them in."""
        g, result = self.grid, self.result
        t0 = time.perf_counter()
        out = self.predictor.predict_tiles(np.stack([t.rgb for t in batch]), gsd, city)
        result.model_seconds += time.perf_counter() - t0
        for k, t in enumerate(batch):
            agl = out.agl[k]
            agl[~t.valid] = np.nan
            win = np.outer(g.wr[t.row], g.wc[t.col]).astype(np.float32)  # as predict_tiled
            agl *= win
            self.acc[t.r - self.band0 : t.r - self.band0 + g.th, t.c : t.c + g.tw] += agl
            weight = float(win.sum(dtype=np.float64, where=t.valid))
            voted = self.vote.add(out.direction[k], float(out.scale[k]), weight)
            ang = float(vector_to_angle(out.direction[k])) if voted else math.nan
            result.votes.append((t.r, t.c, ang, float(out.scale[k]), weight))
        result.tiles += len(batch)
        self.done += len(batch)
        self._progress()

    def empty(self, t: _Tile) -> None:
        """An all-nodata tile: NaN there, whatever the neighbours add."""
        g = self.grid
        self.acc[t.r - self.band0 : t.r - self.band0 + g.th, t.c : t.c + g.tw] = np.nan
        self.result.empty_tiles += 1
        self.done += 1
        self._progress()

    def run(self, scene: Any, path: Path, gsd: float, city: int, threads: bool) -> None:
        """Predict every tile of ``scene`` and write the AGL COG at ``path``; fill ``result``."""
        from geopose.io.cog import BlockWriter

        g, bs = self.grid, self.blocksize
        per_call = max(1, self.predictor.max_batch // _views(self.predictor))
        reader = prefetch(g.read(scene), per_call, threads)
        nan = float("nan")
        with (
            BlockWriter(
                path, g.width, g.height, 1, "float32", scene.georef, nodata=nan, overwrite=True,
                blocksize=bs,
            ) as writer,
            background_writer(threads, depth=1) as bg,
            contextlib.closing(reader) as tiles,
        ):  # fmt: skip
            batch: list[_Tile] = []
            current = 0
            for t in tiles:
                if t.row != current:  # tile row finished: predict its rest, flush what is done
                    if batch:
                        self.predict(batch, gsd, city)
                        batch = []
                    self.flush(g.rows[t.row] // bs * bs, writer, bg)
                    current = t.row
                if t.rgb is None:
                    self.empty(t)
                    continue
                batch.append(t)
                if len(batch) == per_call:
                    self.predict(batch, gsd, city)
                    batch = []
            if batch:
                self.predict(batch, gsd, city)
            self.flush(g.height, writer, bg)
        r = self.result
        r.angle, r.scale, r.direction_known = self.vote.result()
        r.max_agl = max(self.max_agl, 0.0)


def _views(predictor: Predictor) -> int:
    from geopose.inference.tta import tta_views

    return len(tta_views(predictor.tta))


# --- the flow map: AGL -> FLOW (one GDAL copy) ---------------------------------------------


def write_flow(
    agl_path: str | Path,
    flow_path: str | Path,
    angle: float,
    scale: float,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
) -> Path:
    """Write the 2-band ``(dx, dy)`` px flow COG of a float32-metre AGL COG:
    ``agl · scale · (sin angle, cos angle)`` (``angle`` rad, ``scale`` px/m), NaN where the AGL
    is NaN, with the AGL's CRS, transform, tiling and overviews (scaled), in one GDAL copy
    (:func:`geopose.io.cog.write_scaled_cog`: no pass over the pixels in Python)."""
    from geopose.io.cog import write_scaled_cog

    if on_progress is not None:
        on_progress("flow", 0, 1)
    factors = (scale * math.sin(angle), scale * math.cos(angle))
    write_scaled_cog(agl_path, flow_path, factors, ["dx", "dy"], overwrite=overwrite)
    if on_progress is not None:
        on_progress("flow", 1, 1)
    return Path(flow_path)


# --- the scene ------------------------------------------------------------------------------


def predict_scene(
    predictor: Predictor,
    scene: Any,
    out_dir: str | Path,
    stem: str,
    city: int = -1,
    tile: int = SCENE_TILE,
    overlap: int = SCENE_OVERLAP,
    overwrite: bool = False,
    rectify: bool = False,
    on_progress: ProgressFn | None = None,
    gsd: float | None = None,
    margin: int | None = None,
    blocksize: int = BLOCKSIZE,
    threads: bool = True,
    fill_holes: bool = True,
) -> SceneResult:
    """Predict one scene (``geopose.io.scene.Scene``, open) into COGs in ``out_dir`` (module doc).

    Args:
        predictor: the models, TTA and device (its ``tile_size`` is not used: ``tile`` is).
        scene: the open scene; its ``read`` gives the stretched display bands and validity.
        out_dir: output folder (created); ``stem``: output name prefix.
        city: city index into ``geopose.types.CITIES`` (-1 unknown).
        tile, overlap: tile side and least overlap (px) of the blended tiles; ``margin``
            (default ``overlap // 4``) px next to inner tile edges get zero weight.
        overwrite: redo a scene whose outputs are complete (else it is skipped); partial
            outputs of an interrupted run are always redone (after the model pass when its
            AGL and pose note are there).
        rectify: also write the nadir RGB, nadir AGL and occlusion mask (windowed).
        on_progress: ``on_progress(stage, done, total)`` (:data:`ProgressFn`).
        gsd: m/px; default the scene's (``scene.gsd``); one of them is required.
        blocksize: internal tile size (px) of the COGs.
        threads: overlap reading and writing with the model in background threads.
        fill_holes: rectification fills one-pixel sampling gaps.

    Raises:
        GeoposeDataError: no GSD.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    paths = scene_output_paths(out_dir, stem, rectify)
    if not overwrite and scene_done(out_dir, stem, rectify):
        v = read_vflow(paths["vflow"])
        return SceneResult(stem, paths, v.angle, v.scale, v.scale > 0, skipped=True)
    gsd = gsd if gsd is not None else getattr(scene, "gsd", None)
    if gsd is None or not gsd > 0:
        raise GeoposeDataError(
            getattr(scene, "path", stem), "no GSD (not georeferenced in metres); pass --gsd"
        )
    ensure_output_dir(out_dir)
    import rasterio

    # GDAL's block cache defaults to 5 % of RAM (6.4 GB on a 128 GB machine) and fills with
    # the scene's blocks as the tiles pass: cap it, so memory does not grow with the scene.
    with rasterio.Env(GDAL_CACHEMAX=SCENE_CACHE_MB * 2**20):
        result = SceneResult(stem, paths, NO_DIRECTION_ANGLE, 0.0, False)
        note = out_dir / pose_name(stem)
        resumed = not overwrite and _resume_pose(note, paths["agl"], result)
        if not resumed:
            note.unlink(missing_ok=True)
            margin_px = overlap // 4 if margin is None else margin
            grid = TileGrid(scene.height, scene.width, tile, overlap, margin_px)
            _AglPass(predictor, grid, blocksize, result, on_progress).run(
                scene, paths["agl"], float(gsd), int(city), threads
            )
            _write_pose(note, result)
        write_flow(
            paths["agl"],
            paths["flow"],
            result.angle,
            result.scale,
            overwrite=True,
            on_progress=on_progress,
        )
        if rectify:
            from geopose.rectify import rectify_windowed

            rectify_windowed(
                paths["agl"],
                result.angle,
                result.scale,
                out_dir,
                stem,
                scene=scene,
                overwrite=True,
                fill_holes=fill_holes,
                max_agl=result.max_agl,
                blocksize=blocksize,
                on_progress=on_progress,
            )
        write_vflow(paths["vflow"], result.angle, result.scale, overwrite=True)
        note.unlink(missing_ok=True)
    result.seconds = time.perf_counter() - t_start
    return result


def _write_pose(note: Path, result: SceneResult) -> None:
    """Note the first pass's pose beside the finished AGL (see :func:`pose_name`)."""
    text = json.dumps(
        {
            "angle": result.angle,
            "scale": result.scale,
            "direction_known": result.direction_known,
            "max_agl": result.max_agl,
            "tiles": result.tiles,
            "empty_tiles": result.empty_tiles,
            "agl_mtime_ns": result.paths["agl"].stat().st_mtime_ns,
        }
    )
    write_text_atomic(note, text)


def _resume_pose(note: Path, agl_path: Path, result: SceneResult) -> bool:
    """Fill ``result`` from a pose note written for the AGL file that is there now."""
    try:
        d = json.loads(note.read_text())
        if not agl_path.is_file() or d["agl_mtime_ns"] != agl_path.stat().st_mtime_ns:
            return False
        result.angle, result.scale = float(d["angle"]), float(d["scale"])
        result.direction_known = bool(d["direction_known"])
        result.max_agl = float(d["max_agl"])
        result.tiles, result.empty_tiles = int(d["tiles"]), int(d["empty_tiles"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True
