"""Oblique rendering of a synthetic scene by per-pixel ray marching through the height field.

Camera: parallel projection with flow angle ``a`` (radians) and scale ``s`` (px/m). A ground
point ``g`` at height ``h`` is seen at ``g - h·s·(sin a, cos a)`` (column, row), so the ray of an
oblique pixel ``p`` passes above the ground point ``p + t·d`` at height ``t / s`` (``t`` in px,
``d = (sin a, cos a)``). The pixel sees the first column the ray meets coming down from the
sky: the largest ``t`` with ``height(p + t·d) >= t / s``.

Because the camera is parallel, the ``t``-intervals in which the ray crosses each ground cell
are the same for every pixel; only the cell offset differs. So the march is a loop over the
cells one ray crosses (a few dozen), each step comparing a shifted view of the whole height
field with one threshold: vectorised, and exact for the voxel-column world (point sampling at
pixel centres). A pixel whose ray enters a column through its side sees the wall at the entry
height (AGL < the column's height, a facade pixel); otherwise it sees the top (AGL = height).

Shadows: the sun casts shadows along ``(sin sun, cos sun)`` with length ``h / (tan(elev)·gsd)``
px; the shadow height of every ground cell comes from one scan across the grid toward the
shadow direction. A point of height ``z`` above a cell is in shadow if ``z`` is below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from geopose.synth.cities import FLOOR_M, WINDOW
from geopose.synth.world import KIND_BUILDING, KIND_TREE, Scene, fmod

_NEG = np.float32(-1e9)
SUN_RGB = np.array((1.0, 0.96, 0.90), np.float32)
SKY_RGB = np.array((0.13, 0.15, 0.20), np.float32)
"""Direct-sun and sky irradiance (linear RGB); a lit flat surface gets SUN·sin(elev) + SKY."""
WALL_SKY = np.float32(0.55)
"""Share of the sky a wall sees compared with a flat roof."""
DEFAULT_ELEVATION = math.radians(55.0)


@dataclass(frozen=True)
class Rendered:
    """An oblique render and its exact truth.

    ``rgb`` H×W×3 uint8 oblique view; ``agl`` H×W float32 m of the surface seen at each pixel;
    ``nadir_agl`` the scene height on the tile (ground coordinates); ``nadir_rgb`` the nadir
    view (same lighting and shadows); ``angle`` rad; ``scale`` px/m; ``sun`` rad (shadow
    direction, NaN = sun overhead); ``kind``/``obj`` material and object id seen at each pixel;
    ``facade`` True where a wall or crown side is seen.
    """

    rgb: np.ndarray
    agl: np.ndarray
    nadir_agl: np.ndarray
    nadir_rgb: np.ndarray
    angle: float
    scale: float
    sun: float
    kind: np.ndarray
    obj: np.ndarray
    facade: np.ndarray


def ray_intervals(angle: float, scale: float, hmax: float, reach: int):
    """The cells one ray crosses, in order of increasing ``t`` (px along the ground).

    Returns ``(lo_h, hi_h, ox, oy)``: per crossed cell the ray's heights (m) where it leaves
    (lo, lower) and enters (hi, upper) the cell, and the cell's (column, row) offset from the
    pixel. The last cell's upper height is +inf. Offsets are limited to ``reach`` px.
    """
    dx, dy = math.sin(angle), math.cos(angle)
    length = max(hmax, 0.0) * max(scale, 0.0)
    ts = [np.zeros(1)]
    for comp in (dx, dy):
        c = abs(comp)
        if c * length > 0.5:
            k = np.arange(0, int(math.ceil(c * length + 0.5)) + 1)
            t = (k + 0.5) / c
            ts.append(t[t < length])
    t = np.unique(np.concatenate(ts))
    edges = np.append(t, max(length, t[-1]))
    lo, hi = edges[:-1], edges[1:]
    mid = 0.5 * (lo + hi)
    ox, oy = np.rint(mid * dx).astype(np.int64), np.rint(mid * dy).astype(np.int64)
    ok = (np.abs(ox) <= reach) & (np.abs(oy) <= reach)
    n = int(np.argmin(ok)) if not ok.all() else len(ok)
    lo, hi, ox, oy = lo[:n], hi[:n], ox[:n], oy[:n]
    with np.errstate(divide="ignore", invalid="ignore"):
        lo_h = np.where(lo > 0, lo / scale, 0.0) if scale > 0 else np.zeros_like(lo)
        hi_h = hi / scale if scale > 0 else np.full_like(hi, np.inf)
    hi_h = hi_h.copy()
    hi_h[-1] = np.inf
    return lo_h, hi_h, ox, oy


def march(height_full: np.ndarray, margin: int, angle: float, scale: float):
    """Ray-march every pixel of the visible tile: returns (flat cell index into the padded
    grid, AGL m, facade mask), all size×size."""
    n = height_full.shape[0]
    size = n - 2 * margin
    hmax = float(height_full.max())
    lo_h, hi_h, ox, oy = ray_intervals(angle, scale, hmax, margin)
    jidx = np.zeros((size, size), np.int16 if len(lo_h) < 32000 else np.int32)
    thr = lo_h.astype(np.float32)
    for j in range(1, len(lo_h)):
        r0, c0 = margin + int(oy[j]), margin + int(ox[j])
        view = height_full[r0 : r0 + size, c0 : c0 + size]
        np.copyto(jidx, j, where=view >= thr[j])
    rows = np.arange(size)[:, None] + margin + oy[jidx]
    cols = np.arange(size)[None, :] + margin + ox[jidx]
    cells = rows * n + cols
    hc = height_full.ravel()[cells]
    top_h = hi_h.astype(np.float32)[jidx]
    agl = np.minimum(hc, top_h)
    facade = hc > top_h
    return cells, agl.astype(np.float32), facade


def shadow_heights(height_full: np.ndarray, sun: float, elevation: float, gsd: float) -> np.ndarray:
    """Per ground cell, the height (m) below which a point above it is in cast shadow.

    One scan over the grid in the shadow direction ``(sin sun, cos sun)``: the shadow height
    carried from the previous row (along a digital line) drops by ``tan(elev)·gsd`` m per px.
    A cell's own column is not counted (walls facing away from the sun are shaded by their
    normal instead).
    """
    ux, uy = math.sin(sun), math.cos(sun)
    a = height_full
    transpose = abs(ux) > abs(uy)
    if transpose:
        a, ux, uy = a.T, uy, ux
    flip = uy < 0
    if flip:
        a, uy = a[::-1], -uy
    n_rows, n_cols = a.shape
    r = ux / uy
    offs = np.rint(np.arange(n_rows) * r).astype(np.int64)
    delta = np.diff(offs, prepend=0)
    drop = np.float32(math.tan(elevation) * gsd / uy)
    occ = np.empty(a.shape, np.float32)
    prev = np.full(n_cols, _NEG, np.float32)
    for i in range(n_rows):
        o = occ[i]
        d = delta[i]
        if d == 0:
            np.subtract(prev, drop, out=o)
        elif d > 0:
            o[:d] = _NEG
            np.subtract(prev[:-d], drop, out=o[d:])
        else:
            o[d:] = _NEG
            np.subtract(prev[-d:], drop, out=o[:d])
        np.maximum(a[i], o, out=prev)
    if flip:
        occ = occ[::-1]
    if transpose:
        occ = occ.T
    return np.ascontiguousarray(occ)


def _minmod(f: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smaller of two one-sided slopes if they agree in sign, else 0 (edges -> flat)."""
    return np.where(f * b > 0, np.where(np.abs(f) < np.abs(b), f, b), np.float32(0.0))


class _Light:
    """Sun and sky of one render, and the scene-wide fields shading needs."""

    def __init__(self, scene: Scene, sun: float | None, elevation: float):
        h = scene.height_full
        self.n = h.shape[0]
        self.h = h.ravel()
        self.gsd = np.float32(scene.gsd)
        if sun is None:
            self.sun_dir = np.zeros(2, np.float32)
            self.sin_e, self.cos_e = np.float32(1.0), np.float32(0.0)
            self.shadow = None
        else:
            self.sun_dir = np.array((math.sin(sun), math.cos(sun)), np.float32)
            self.sin_e, self.cos_e = (
                np.float32(math.sin(elevation)),
                np.float32(math.cos(elevation)),
            )
            self.shadow = shadow_heights(h, sun, elevation, scene.gsd).ravel()
        self.blur = cv2.GaussianBlur(h, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT_101).ravel()

    def _grad(self, field: np.ndarray, cells: np.ndarray, minmod: bool):
        n = self.n
        take = lambda k: np.take(field, cells + k, mode="clip")  # noqa: E731
        c = take(0)
        if minmod:
            gx = _minmod(take(1) - c, c - take(-1))
            gy = _minmod(take(n) - c, c - take(-n))
        else:
            gx = (take(1) - take(-1)) * np.float32(0.5)
            gy = (take(n) - take(-n)) * np.float32(0.5)
        return gx / self.gsd, gy / self.gsd

    def irradiance(
        self, cells: np.ndarray, z: np.ndarray, facade: np.ndarray, view=(0.0, 0.0)
    ) -> np.ndarray:
        """Linear irradiance (…×3) at points of height ``z`` on the top or side of ``cells``;
        ``view`` is the flow direction (sin a, cos a) (seen walls face it)."""
        lit = np.ones(cells.shape, np.float32)
        if self.shadow is not None:
            lit = (z >= self.shadow[cells] - np.float32(0.05)).astype(np.float32)
        # tops: normal from the height field (slopes of pitched roofs and crowns)
        gx, gy = self._grad(self.h, cells, minmod=True)
        norm = np.sqrt(gx * gx + gy * gy + 1)
        # light vector: towards the sun = -shadow direction horizontally, up by the elevation
        lx, ly = -self.sun_dir * self.cos_e
        cos_top = np.maximum((-gx * lx - gy * ly + self.sin_e) / norm, 0)
        # sky light: (1 + cos tilt) / 2 of the sky for tops, a fixed share for walls
        sky = np.where(facade, WALL_SKY, np.float32(0.5) + np.float32(0.5) / norm)
        cos_i = cos_top
        if facade.any():
            fi = np.flatnonzero(facade)
            fc = cells.ravel()[fi]
            wx, wy = self._grad(self.blur, fc, minmod=False)
            # outward wall normal = down the blurred height; where that is flat (the middle of
            # a crown) it falls back smoothly to facing the camera (+view direction)
            nx, ny = -wx + np.float32(0.05 * view[0]), -wy + np.float32(0.05 * view[1])
            wn = np.sqrt(nx * nx + ny * ny)
            nx, ny = nx / wn, ny / wn
            cos_i = cos_i.copy()
            cos_i.ravel()[fi] = np.maximum(nx * lx + ny * ly, 0)
        direct = (cos_i * lit)[..., None] * SUN_RGB
        return direct + sky[..., None] * SKY_RGB


def _surface_colour(scene: Scene, cells, z, facade) -> np.ndarray:
    """Reflectance (…×3) of the surface seen: the top colour, or the side colour with window
    bands (every FLOOR_M m of height) on building walls."""
    lay = scene.layers
    refl = lay["top"].reshape(-1, 3)[cells]
    if facade.any():
        fi = np.flatnonzero(facade)
        fc = cells.ravel()[fi]
        fz = z.ravel()[fi]
        side = lay["side"].reshape(-1, 3)[fc]
        kind = lay["kind"].ravel()[fc]
        top_h = lay["height"].ravel()[fc]
        phase = fmod(fz, FLOOR_M) / np.float32(FLOOR_M)
        bld = kind == KIND_BUILDING
        win = bld & (lay["window"].ravel()[fc] > 0.5) & (phase > 0.3) & (phase < 0.8)
        slab = bld & (phase < 0.08)
        side = np.where(win[:, None], np.float32(WINDOW), side)
        side = side * np.where(slab, np.float32(0.8), np.float32(1.0))[:, None]
        # darker towards the foot of walls and the underside of crowns
        foot = np.clip(fz / np.maximum(top_h, 1e-3), 0, 1)
        occl = np.where(kind == KIND_TREE, 0.55 + 0.45 * foot, 0.8 + 0.2 * np.minimum(fz / 2.0, 1))
        refl.reshape(-1, 3)[fi] = side * occl[:, None].astype(np.float32)
    return refl


_SRGB_LUT = np.power(np.linspace(0.0, 1.0, 65536, dtype=np.float64), 1 / 2.2).astype(np.float32)


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear [0, 1] -> display [0, 1] with gamma 1/2.2 (a 16-bit lookup table)."""
    idx = np.clip(linear * np.float32(65535.0) + np.float32(0.5), 0, 65535).astype(np.uint16)
    return _SRGB_LUT[idx]


def _sensor(img: np.ndarray, rng_seed: int) -> np.ndarray:
    """Haze, colour gain, optics blur, gamma and read/shot noise of a linear image -> uint8."""
    rng = np.random.default_rng(rng_seed)
    haze = np.float32(rng.uniform(0.005, 0.03))
    sigma = float(rng.uniform(0.5, 0.9))
    gain = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    noise = np.float32(rng.uniform(1.0, 3.0) / math.sqrt(128.0))
    img = img * gain + haze * SKY_RGB * 3
    img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    out = _to_srgb(img) * np.float32(255.0)
    grain = rng.standard_normal(out.shape, dtype=np.float32)
    out += grain * noise * np.sqrt(np.maximum(out, np.float32(1.0)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _clean(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(_to_srgb(img) * np.float32(255.0)), 0, 255).astype(np.uint8)


def render(
    scene: Scene,
    angle: float,
    scale: float,
    sun: float | None = None,
    sensor: bool = False,
    seed: int = 0,
    elevation: float = DEFAULT_ELEVATION,
    nadir: bool = True,
) -> Rendered:
    """Render ``scene`` as seen with flow angle ``angle`` (rad) and ``scale`` (px/m).

    ``sun`` (rad): the direction shadows are cast along, in the flow-angle convention; None
    puts the sun overhead (no cast shadows). ``elevation``: sun elevation (rad).
    ``sensor=True`` adds optics blur, haze, colour gain and noise drawn from ``seed``
    (identically to the oblique and the nadir view); ``False`` gives a clean, exact render.
    ``nadir=False`` skips the nadir view (``nadir_rgb`` is None), for speed.
    """
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0 px/m, got {scale}")
    cells, agl, facade = march(scene.height_full, scene.margin, angle, scale)
    light = _Light(scene, sun, elevation)
    view = (math.sin(angle), math.cos(angle))
    linear = _surface_colour(scene, cells, agl, facade) * light.irradiance(cells, agl, facade, view)
    finish = (lambda img: _sensor(img, seed)) if sensor else _clean
    rgb, nadir_rgb = finish(linear), None
    nadir_h = scene.height.astype(np.float32)
    if nadir:
        m, size, n = scene.margin, scene.size, scene.full_size
        own = (np.arange(size)[:, None] + m) * n + np.arange(size)[None, :] + m
        flat = np.zeros_like(facade)
        nadir_lin = _surface_colour(scene, own, nadir_h, flat) * light.irradiance(
            own, nadir_h, flat
        )
        nadir_rgb = finish(nadir_lin)
    return Rendered(
        rgb=rgb,
        agl=agl,
        nadir_agl=nadir_h,
        nadir_rgb=nadir_rgb,
        angle=float(angle),
        scale=float(scale),
        sun=float("nan") if sun is None else float(sun),
        kind=scene.layers["kind"].ravel()[cells],
        obj=scene.layers["obj"].ravel()[cells],
        facade=facade,
    )
