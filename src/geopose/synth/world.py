"""The synthetic world a render is made from: a city scene in ground (nadir) coordinates.

A :class:`Scene` is a voxel-column world: every ground cell (one pixel of the nadir grid, GSD
metres wide) is a vertical column from the ground up to ``height`` metres, with the colour of
its top surface (roof, tree crown, ground), the colour and window pattern of its sides (walls,
crown sides), its material and the object it belongs to. The grid covers the visible
``size``×``size`` tile plus ``margin`` pixels on every side, so that buildings outside the tile
can lean into the oblique view and cast shadows onto it.

Scenes are procedural and vectorised: the street grid, blocks, ground cover and cars are numpy
expressions over the whole grid; buildings and trees are drawn one by one into their bounding
boxes (a few hundred small array operations per 512² tile).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

import geopose.synth.cities as C
from geopose.synth.cities import FLOOR_M, SCALE_MAX, CityStyle, get_style

KIND_GROUND, KIND_WATER, KIND_BUILDING, KIND_TREE, KIND_CAR = 0, 1, 2, 3, 4
"""Material codes of the ``kind`` layer."""
TREE_ID0 = 1_000_000
"""Object ids of trees start here; buildings are numbered 1, 2, ... below it; 0 = no object."""

# block types
RES, COM, DOWN, PARK, PARKING, POND = range(6)
_SIDEWALK_M = 2.0


@dataclass(frozen=True)
class Scene:
    """Ground-coordinate arrays of a synthetic scene (see the module docstring).

    ``layers`` (all on the padded ``(size + 2·margin)²`` grid):
    ``height`` float32 m; ``top``, ``side``, ``ground`` float32 H×W×3 linear reflectance of the
    top surface, of the column's sides and of the bare ground under objects; ``window`` float32
    in [0, 1] (window columns on walls); ``kind`` uint8 material; ``obj`` int32 object id.
    """

    city: str
    gsd: float
    margin: int
    layers: dict[str, np.ndarray] = field(repr=False)

    @property
    def full_size(self) -> int:
        """Side of the padded grid (px)."""
        return int(self.layers["height"].shape[0])

    @property
    def size(self) -> int:
        """Side of the visible tile (px)."""
        return self.full_size - 2 * self.margin

    def crop(self, arr: np.ndarray) -> np.ndarray:
        """The visible tile of a padded ground array."""
        m, s = self.margin, self.size
        return arr[m : m + s, m : m + s]

    @property
    def height(self) -> np.ndarray:
        """Height above ground (m) of the visible tile, size×size float32 (a view)."""
        return self.crop(self.layers["height"])

    @property
    def height_full(self) -> np.ndarray:
        """Height above ground (m) of the padded grid."""
        return self.layers["height"]

    def apply(self, fn: Callable[[np.ndarray], np.ndarray]) -> Scene:
        """Apply a spatial function acting on the first two axes (np.rot90, np.fliplr,
        np.flipud, ``lambda a: np.swapaxes(a, 0, 1)``) to every layer. A function that changes
        the size rescales the margin in proportion; prefer :meth:`resized` for resizing."""
        layers = {k: np.ascontiguousarray(fn(v)) for k, v in self.layers.items()}
        n = layers["height"].shape[0]
        margin = int(round(self.margin * n / self.full_size))
        return Scene(self.city, self.gsd * self.full_size / n, margin, layers)

    def resized(self, f: float) -> Scene:
        """The scene resampled by ``f`` (GSD becomes gsd / f; heights unchanged).

        Heights, materials, ids and windows use nearest-neighbour (pixel-area convention, so an
        integer ``f`` repeats every cell f×f times exactly); colours use area/linear filtering.
        """
        m2 = int(round(self.margin * f))
        n2 = int(round(self.size * f)) + 2 * m2
        idx = np.minimum(
            ((np.arange(n2) + 0.5) * self.full_size / n2).astype(np.int64), self.full_size - 1
        )
        interp = cv2.INTER_AREA if n2 < self.full_size else cv2.INTER_LINEAR
        layers = {}
        for k, v in self.layers.items():
            if k in ("top", "side", "ground"):
                layers[k] = cv2.resize(v, (n2, n2), interpolation=interp)
            else:
                layers[k] = np.ascontiguousarray(v[idx][:, idx])
        return Scene(self.city, self.gsd * self.full_size / n2, m2, layers)

    def without_objects(self, ids: Iterable[int]) -> Scene:
        """A copy with the given objects (buildings, trees) removed: bare ground in their place."""
        ids = np.asarray(list(ids), dtype=np.int32)
        gone = np.isin(self.layers["obj"], ids) & (ids.size > 0)
        layers = {k: v.copy() for k, v in self.layers.items()}
        layers["height"][gone] = 0.0
        layers["top"][gone] = layers["ground"][gone]
        layers["side"][gone] = layers["ground"][gone]
        layers["window"][gone] = 0.0
        layers["kind"][gone] = KIND_GROUND
        layers["obj"][gone] = 0
        return Scene(self.city, self.gsd, self.margin, layers)


def scene_margin(style: CityStyle, gsd: float) -> int:
    """Pixels of scene kept around the tile: the oblique reach of the tallest building at
    :data:`SCALE_MAX`, and shadow reach up to 1.5× that."""
    ray = style.max_height * SCALE_MAX
    shadow = style.max_height / (math.tan(math.radians(40.0)) * gsd)
    return int(math.ceil(max(ray, min(shadow, 1.5 * ray)))) + 2


def value_noise(rng: np.random.Generator, n: int, cell_px: float, octaves: int = 2) -> np.ndarray:
    """Smooth noise (n×n float32, roughly N(0, 1)) with features of ``cell_px`` pixels, plus
    ``octaves - 1`` finer octaves at half the size and amplitude each."""
    out = np.zeros((n, n), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        k = max(2, int(math.ceil(n / max(cell_px, 1.0))) + 2)
        small = rng.standard_normal((k, k)).astype(np.float32)
        out += amp * cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)
        total += amp * amp
        amp *= 0.5
        cell_px /= 2.0
    return out / np.float32(math.sqrt(total))


def fmod(x: np.ndarray, p: float) -> np.ndarray:
    """``x mod p`` in [0, p) for float32 arrays (numpy's float mod is slow)."""
    p = np.float32(p)
    return x - np.floor(x * (np.float32(1.0) / p)) * p


def _lerp(a, b, t):
    return a + (b - a) * t


class _Builder:
    """Draws one scene; holds the padded layers while they are being filled."""

    def __init__(self, style: CityStyle, rng: np.random.Generator, n: int, gsd: float):
        self.s, self.rng, self.n, self.gsd = style, rng, n, gsd
        self.height = np.zeros((n, n), np.float32)
        self.top = np.zeros((n, n, 3), np.float32)
        self.side = np.zeros((n, n, 3), np.float32)
        self.window = np.zeros((n, n), np.float32)
        self.kind = np.zeros((n, n), np.uint8)
        self.obj = np.zeros((n, n), np.int32)
        self.n_buildings = 0

    # --- street grid and land use -------------------------------------------------------

    def grid(self) -> None:
        """Rotated street-grid coordinates (u, v) in metres and block indices per pixel."""
        s, rng, n = self.s, self.rng, self.n
        phi = math.radians(rng.uniform(-s.grid_angle_jitter, s.grid_angle_jitter))
        self.phi = phi
        self.pu, self.pv = rng.uniform(*s.block, size=2)
        self.road = rng.uniform(*s.road)
        u0, v0 = rng.uniform(0, 1000, size=2)
        self.u0, self.v0 = u0, v0
        xy = (np.arange(n, dtype=np.float32) + np.float32(0.5)) * np.float32(self.gsd)
        c, sn = np.float32(math.cos(phi)), np.float32(math.sin(phi))
        self.U = xy[None, :] * c + xy[:, None] * sn + np.float32(u0)
        self.V = -xy[None, :] * sn + xy[:, None] * c + np.float32(v0)
        bi = np.floor(self.U / np.float32(self.pu)).astype(np.int32)
        bj = np.floor(self.V / np.float32(self.pv)).astype(np.int32)
        self.lu = self.U - bi * np.float32(self.pu)
        self.lv = self.V - bj * np.float32(self.pv)
        self.bi0, self.bj0 = int(bi.min()), int(bj.min())
        self.nbi, self.nbj = int(bi.max()) - self.bi0 + 1, int(bj.max()) - self.bj0 + 1
        self.bid = (bi - self.bi0) * self.nbj + (bj - self.bj0)

    def uv_to_px(self, u: float, v: float) -> tuple[float, float]:
        """Street-grid coordinates (m) -> (row, col) pixel coordinates (continuous)."""
        du, dv = u - self.u0, v - self.v0
        c, sn = math.cos(self.phi), math.sin(self.phi)
        x, y = du * c - dv * sn, du * sn + dv * c
        return y / self.gsd - 0.5, x / self.gsd - 0.5

    def block_types(self) -> None:
        """Draw a type per block (residential, commercial, downtown, park, parking, pond)."""
        s, rng = self.s, self.rng
        nb = self.nbi * self.nbj
        mix = np.asarray(s.block_mix, np.float64)
        types = rng.choice(6, size=nb, p=mix / mix.sum())
        # block centres in (u, v) metres
        ci = (np.arange(nb) // self.nbj + self.bi0 + 0.5) * self.pu
        cj = (np.arange(nb) % self.nbj + self.bj0 + 0.5) * self.pv
        has_down = rng.random() < s.downtown_chance
        cu = self.u0 + rng.uniform(-0.3, 1.3) * self.n * self.gsd * 0.7
        cv = self.v0 + rng.uniform(-0.3, 1.3) * self.n * self.gsd * 0.7
        d2 = ((ci - cu) ** 2 + (cj - cv) ** 2) / 220.0**2
        p_down = 0.9 * np.exp(-d2) if has_down else np.zeros(nb)
        draw = rng.random(nb)
        types = np.where(draw < p_down, DOWN, types)
        types = np.where((draw >= p_down) & (draw < 1.6 * p_down) & (types == RES), COM, types)
        self.btype = types
        self.downtown_boost = 1.0 + 0.8 * np.exp(-d2) if has_down else np.ones(nb)

    def ground_cover(self) -> None:
        """Roads, sidewalks, yards, plazas, parks, parking lots and ponds (top colours)."""
        s, rng, n, gsd = self.s, self.rng, self.n, self.gsd
        r, sw = np.float32(self.road), np.float32(_SIDEWALK_M)
        lu, lv = self.lu, self.lv
        road = (lu < r) | (lv < r)
        pu, pv = np.float32(self.pu), np.float32(self.pv)
        walk = ~road & ((lu < r + sw) | (lv < r + sw) | (lu > pu - sw) | (lv > pv - sw))
        btype = self.btype[self.bid]
        self.road_mask, self.walk_mask, self.btype_px = road, walk, btype
        n_big = value_noise(rng, n, 30.0 / gsd, 2)
        n_mid = value_noise(rng, n, 7.0 / gsd, 2)
        fine = rng.random((n, n), dtype=np.float32) - np.float32(0.5)
        self.n_mid, self.fine = n_mid, fine
        # material per pixel; colour = lerp(A, B, t) * brightness (A = B for plain materials)
        mats = np.asarray(s.ground, np.float32)
        grass, dry = np.float32(C.GRASS), np.float32(C.DRY_GRASS)
        shore_c = _lerp(np.float32(C.SAND), grass, 0.5)
        pal_a = np.stack(
            [
                mats[0],
                grass,
                mats[2],
                mats[3],
                C.ASPHALT,
                C.CONCRETE,
                C.MARKING,
                np.float32(C.MARKING) * 0.8,
                shore_c,
                C.WATER,
            ]
        ).astype(np.float32)
        pal_b = pal_a.copy()
        pal_b[0], pal_b[1] = mats[1], grass + 0.6 * (dry - grass)
        idx = np.zeros((n, n), np.uint8)
        np.putmask(idx, n_mid > 0.9, 2)
        np.putmask(idx, n_big < -1.0, 3)
        com = (btype == COM) | (btype == DOWN)
        asphalt_block = (self.bid % 3) == 0
        np.putmask(idx, com & asphalt_block, 4)
        np.putmask(idx, com & ~asphalt_block, 5)
        np.putmask(idx, btype == PARK, 1)
        parking = btype == PARKING
        np.putmask(idx, parking, 4)
        # parking stall lines: rows 16 m deep, stalls 2.7 m wide
        stall = (fmod(lu - r - sw, np.float32(2.7)) < 0.15) & (
            fmod(lv - r - sw, np.float32(16.0)) < 11.0
        )
        np.putmask(idx, parking & stall, 6)
        np.putmask(idx, walk, 5)
        np.putmask(idx, road, 4)
        # dashed centre lines on the roads (not in the crossings)
        dash_u = (np.abs(lu - r / 2) < 0.12) & (fmod(lv, np.float32(9.0)) < 4.5) & (lv > r)
        dash_v = (np.abs(lv - r / 2) < 0.12) & (fmod(lu, np.float32(9.0)) < 4.5) & (lu > r)
        np.putmask(idx, dash_u | dash_v, 7)
        # ponds: inside POND blocks, away from the block edge, ragged by noise
        pond = btype == POND
        edge = np.minimum(
            np.minimum(lu - r - sw, pu - sw - lu), np.minimum(lv - r - sw, pv - sw - lv)
        )
        water = pond & (edge + 4.0 * n_mid > 7.0)
        np.putmask(idx, pond, 8)
        np.putmask(idx, water, 9)
        t = np.clip(0.5 + 0.45 * n_big, 0, 1)
        bright = 1.0 + 0.12 * n_mid + 0.10 * fine
        col = np.take(pal_a, idx, axis=0)
        col += np.take(pal_b - pal_a, idx, axis=0) * t[..., None]
        col *= bright[..., None]
        self.top[:] = col
        self.ground = col
        self.kind[water] = KIND_WATER
        self.water = water

    # --- buildings ---------------------------------------------------------------------

    def buildings(self) -> None:
        """Lots per block and a building on most of them."""
        for b in range(self.nbi * self.nbj):
            t = int(self.btype[b])
            if t in (PARKING, POND):
                continue
            self._block(b, t)

    def _block(self, b: int, t: int) -> None:
        s, rng = self.s, self.rng
        r, sw = self.road, _SIDEWALK_M
        su, sv = self.pu - r - 2 * sw, self.pv - r - 2 * sw
        u_start = (b // self.nbj + self.bi0) * self.pu + r + sw
        v_start = (b % self.nbj + self.bj0) * self.pv + r + sw
        if t == RES:
            front, deep = s.lot
            if su >= sv:
                nu, nv = max(1, round(su / front)), min(2, max(1, round(sv / deep)))
            else:
                nu, nv = min(2, max(1, round(su / deep))), max(1, round(sv / front))
        elif t == COM:
            nu, nv = max(1, round(su / 40.0)), max(1, round(sv / 40.0))
        elif t == DOWN:
            nu, nv = max(1, round(su / 60.0)), max(1, round(sv / 60.0))
        else:  # park: an occasional pavilion
            nu = nv = 1
        lu_w, lv_w = su / nu, sv / nv
        for i in range(nu):
            for j in range(nv):
                uc = u_start + (i + 0.5) * lu_w
                vc = v_start + (j + 0.5) * lv_w
                if t == PARK and rng.random() > 0.15:
                    continue
                if t == RES and rng.random() > 0.88:
                    continue
                self._building(t, uc, vc, lu_w / 2, lv_w / 2, float(self.downtown_boost[b]))

    def _building(
        self, t: int, uc: float, vc: float, lot_u: float, lot_v: float, boost: float
    ) -> None:
        """One building (with roof, wings, parapet, rooftop units) centred near (uc, vc)."""
        s, rng = self.s, self.rng
        if t == RES:
            fu, fv = rng.uniform(*s.house_fill, size=2)
            floors = rng.uniform(*s.house_floors)
            theta = math.radians(rng.normal(0, 3))
        elif t == COM:
            fu, fv = rng.uniform(0.55, 0.9, size=2)
            floors = rng.uniform(*s.commercial_floors) * boost
            theta = 0.0
        elif t == DOWN:
            fu, fv = rng.uniform(0.75, 0.95, size=2)
            floors = rng.uniform(2, 5)
            theta = 0.0
        else:
            fu, fv = rng.uniform(0.15, 0.3, size=2)
            floors = 1.0
            theta = 0.0
        hu, hv = max(2.5, lot_u * fu), max(2.5, lot_v * fv)
        ou = rng.uniform(-1, 1) * (lot_u - hu) * 0.8
        ov = rng.uniform(-1, 1) * (lot_v - hv) * 0.8
        eave = min(0.3 + floors * FLOOR_M, s.max_height)
        pitched = t == RES and rng.random() < s.pitched
        wing = pitched and rng.random() < 0.5  # a flat-roofed garage wing beside the house
        reach = math.hypot(hu * (2.3 if wing else 1.0), hv) + 1.0
        box = self._bbox(uc + ou, vc + ov, reach)
        if box is None:
            return
        sl, a, bb = box
        if theta != 0.0:
            c, sn = np.float32(math.cos(theta)), np.float32(math.sin(theta))
            a, bb = a * c + bb * sn, -a * sn + bb * c
        abs_a, abs_b = np.abs(a), np.abs(bb)
        inside = (abs_a < hu) & (abs_b < hv)
        dist_edge = np.minimum(hu - abs_a, hv - abs_b)
        h = np.full(a.shape, eave, np.float32)
        roofs = s.roofs_pitched if pitched else s.roofs_flat
        roof_col = np.asarray(roofs[rng.integers(len(roofs))], np.float32)
        roof_col = roof_col * np.float32(rng.uniform(0.85, 1.15))
        pal = np.stack([roof_col, roof_col, np.full(3, 0.45, np.float32)])  # roof, tower, units
        ridx = np.zeros(a.shape, np.uint8)
        shade = np.ones(a.shape, np.float32)
        if pitched:
            slope = rng.uniform(0.35, 0.7)
            gable = rng.random() < 0.6  # else hip
            ridge = (hv - abs_b) if hu >= hv else (hu - abs_a)  # ridge along the long axis
            d = ridge if gable else dist_edge
            h += np.float32(slope) * np.maximum(d, 0)
            # shingle rows: faint stripes parallel to the eaves, 0.9 m apart
            shade += np.float32(0.12) * (fmod(d, 0.9) < 0.45) - np.float32(0.06)
            if wing:
                wu, wv = hu * rng.uniform(0.35, 0.6), hv * rng.uniform(0.4, 0.7)
                side = 1 if rng.random() < 0.5 else -1
                w = (np.abs(a - side * (hu + wu)) < wu) & (np.abs(bb - (hv - wv)) < wv)
                w &= ~inside
                h[w] = min(3.0, eave)
                inside |= w
        else:
            if t != PARK and rng.random() < 0.35:  # L-shaped footprint
                ca, cb = hu * rng.uniform(0.0, 0.5), hv * rng.uniform(0.0, 0.5)
                sa, sb = rng.choice((-1, 1), size=2)
                inside &= ~((sa * a > ca) & (sb * bb > cb))
            if t in (COM, DOWN):  # parapet
                rim = dist_edge < 0.5
                h[rim] += np.float32(0.8)
                shade[rim] = 0.8
            if t == DOWN:  # tower on the podium
                tu, tv = hu * rng.uniform(0.35, 0.7), hv * rng.uniform(0.35, 0.7)
                tou = rng.uniform(-1, 1) * (hu - tu) * 0.7
                tov = rng.uniform(-1, 1) * (hv - tv) * 0.7
                tower = (np.abs(a - tou) < tu) & (np.abs(bb - tov) < tv)
                th = min(eave + rng.uniform(*s.tower_floors) * boost * FLOOR_M, s.max_height)
                h[tower] = th
                pal[1] = s.roofs_flat[rng.integers(len(s.roofs_flat))]
                ridx[tower] = 1
            if min(hu, hv) > 5.0:  # rooftop units
                for _ in range(int(rng.integers(1, 4))):
                    xu, xv = rng.uniform(-0.6, 0.6) * hu, rng.uniform(-0.6, 0.6) * hv
                    bu, bv = rng.uniform(0.8, 2.0, size=2)
                    unit = (np.abs(a - xu) < bu) & (np.abs(bb - xv) < bv) & (dist_edge > 1.0)
                    h[unit] += np.float32(rng.uniform(1.2, 2.5))
                    ridx[unit] = 2
        ii = np.nonzero(inside)
        if ii[0].size == 0:
            return
        self.n_buildings += 1
        bay = np.float32(rng.uniform(2.4, 3.6))
        frac = {RES: 0.35, COM: 0.5, DOWN: 0.7}.get(t, 0.3)
        # window columns along each wall: the coordinate along the nearest wall, in bays
        ea, eb = hu - abs_a[ii], hv - abs_b[ii]
        along = np.where(ea < eb, bb[ii], a[ii])
        win = (fmod(along, bay) < bay * np.float32(frac)).astype(np.float32)
        wall = np.asarray(s.walls[rng.integers(len(s.walls))], np.float32)
        wall = wall * np.float32(rng.uniform(0.85, 1.15))
        if t == DOWN and rng.random() < 0.5:
            wall = np.float32((0.10, 0.13, 0.16))  # glass curtain wall
        self.height[sl][ii] = h[ii]
        self.top[sl][ii] = pal[ridx[ii]] * shade[ii][:, None]
        self.side[sl][ii] = wall
        self.window[sl][ii] = win
        self.kind[sl][ii] = KIND_BUILDING
        self.obj[sl][ii] = self.n_buildings

    def _bbox(self, u: float, v: float, reach_m: float):
        """Pixel slice around a street-grid point and the (u, v) offsets (m) of its pixels."""
        row, col = self.uv_to_px(u, v)
        rp = reach_m / self.gsd + 1
        r0, r1 = max(0, int(row - rp)), min(self.n, int(row + rp) + 2)
        c0, c1 = max(0, int(col - rp)), min(self.n, int(col + rp) + 2)
        if r0 >= r1 or c0 >= c1:
            return None
        sl = (slice(r0, r1), slice(c0, c1))
        return sl, self.U[sl] - np.float32(u), self.V[sl] - np.float32(v)

    # --- trees -------------------------------------------------------------------------

    def trees(self) -> None:
        """Tree crowns (domes on a vertical crown side) where the tree density allows."""
        s, rng, n, gsd = self.s, self.rng, self.n, self.gsd
        yard, park, street = s.tree_cover
        dens = np.select(
            [self.btype_px == RES, self.btype_px == PARK, self.btype_px == COM],
            [yard, park, 0.15 * yard],
            0.03,
        ).astype(np.float32)
        dens = np.where(self.walk_mask, np.float32(street), dens)
        dens = np.where(self.road_mask, np.float32(0.05 * street), dens)
        dens = dens * np.clip(1.0 + 0.6 * self.n_mid, 0.0, 2.0)
        dens[(self.height > 0) | self.water] = 0.0
        dmax = float(dens.max())
        if dmax <= 0:
            return
        r_mean = 0.5 * sum(s.crown_radius)
        # candidates as if the density were dmax everywhere, thinned to the local density
        count = int(rng.poisson(dmax * (n * gsd) ** 2 / (math.pi * r_mean**2)))
        rows = rng.uniform(0, n, count)
        cols = rng.uniform(0, n, count)
        keep = rng.random(count) * dmax < dens[rows.astype(int), cols.astype(int)]
        rows, cols = rows[keep], cols[keep]
        k = len(rows)
        radius = rng.uniform(*s.crown_radius, k) / gsd
        heights = rng.uniform(*s.tree_height, k).astype(np.float32)
        heights = np.minimum(heights, np.float32(2.5 * radius * gsd + 5.0))
        order = np.argsort(heights)  # short first, tall crowns drawn over them
        stamps: dict[int, np.ndarray] = {}
        for idx in order:
            rq = int(round(radius[idx] * 2))  # radius in half pixels
            st = stamps.get(rq)
            if st is None:
                rp = rq / 2.0
                w = int(math.ceil(rp))
                yy, xx = np.mgrid[-w : w + 1, -w : w + 1].astype(np.float32)
                d2 = (yy * yy + xx * xx) / np.float32(rp * rp)
                st = np.where(d2 < 1.0, 0.55 + 0.45 * np.sqrt(np.maximum(1.0 - d2, 0.0)), -1.0)
                st = stamps.setdefault(rq, st.astype(np.float32))
            w = st.shape[0] // 2
            r, c = int(rows[idx]), int(cols[idx])
            r0, r1, c0, c1 = max(0, r - w), min(n, r + w + 1), max(0, c - w), min(n, c + w + 1)
            crown = st[r0 - r + w : r1 - r + w, c0 - c + w : c1 - c + w] * heights[idx]
            sub = self.height[r0:r1, c0:c1]
            up = crown > sub
            sub[up] = crown[up]
            self.obj[r0:r1, c0:c1][up] = TREE_ID0 + idx
        tree = self.obj >= TREE_ID0
        ti = self.obj[tree] - TREE_ID0
        tint = np.stack(
            [rng.uniform(0.75, 1.3, k), rng.uniform(0.8, 1.25, k), rng.uniform(0.7, 1.2, k)], 1
        )
        tint = tint.astype(np.float32)
        leaf = 1.0 + 0.35 * self.fine[tree] + 0.15 * self.n_mid[tree]
        self.top[tree] = np.float32(C.TREE) * tint[ti] * leaf[:, None]
        self.side[tree] = np.float32(C.TREE_SIDE) * tint[ti] * leaf[:, None]
        self.window[tree] = 0.0
        self.kind[tree] = KIND_TREE

    # --- cars ----------------------------------------------------------------------------

    def cars(self) -> None:
        """Cars in the parking-lot stalls and along the roads (1.5 m boxes)."""
        rng = self.rng
        r, sw = np.float32(self.road), np.float32(_SIDEWALK_M)
        lu, lv = self.lu, self.lv
        parking = self.btype_px == PARKING
        cand = np.flatnonzero((parking | self.road_mask) & (self.height == 0))
        lu, lv, bid = lu.ravel()[cand], lv.ravel()[cand], self.bid.ravel()[cand].astype(np.int64)
        on_lot = parking.ravel()[cand]
        # parking lots: stalls 2.7 m wide in rows of 5.5 m, two rows per 16 m
        pu_, pv_ = lu - r - sw, lv - r - sw
        sc = np.floor(pu_ / np.float32(2.7)).astype(np.int64)
        row = np.floor(pv_ / np.float32(16.0)).astype(np.int64)
        in_row = fmod(pv_, np.float32(16.0))
        half = in_row >= 5.5
        du = fmod(pu_, np.float32(2.7)) - np.float32(1.35)
        dv = in_row - np.where(half, np.float32(8.25), np.float32(2.75))
        car_p = on_lot & (in_row < 11.0) & (np.abs(du) < 0.9) & (np.abs(dv) < 2.2)
        car_p &= (pu_ > 0) & (pv_ > 0) & (pu_ < self.pu - self.road - 2 * sw - 2.7)
        # roads: one lane each way, a car every ~9 m where the hash says so
        lane = (np.abs(lu - r * 0.3) < 0.9) | (np.abs(lu - r * 0.7) < 0.9)
        slot_r = np.floor(lv / np.float32(9.0)).astype(np.int64)
        car_r = (
            ~on_lot & (lu < r) & lane & (np.abs(fmod(lv, np.float32(9.0)) - 4.5) < 2.2) & (lv > r)
        )
        key = np.where(
            car_p, bid * 100_003 + sc * 131 + row * 7 + half, bid * 77 + slot_r * 3 + (lu > r / 2)
        )
        salt = int(rng.integers(1 << 30))
        hsh = _hash01(key, salt)
        occupied = np.where(car_p, hsh < 0.5, hsh < 0.12)
        is_car = (car_p | car_r) & occupied
        car = cand[is_car]
        if car.size == 0:
            return
        pal = np.asarray(
            (
                (0.6, 0.6, 0.6),
                (0.05, 0.05, 0.05),
                (0.4, 0.06, 0.05),
                (0.15, 0.2, 0.35),
                (0.5, 0.5, 0.52),
                (0.25, 0.25, 0.25),
            ),
            np.float32,
        )
        colour = pal[(hsh[is_car] * 1e4).astype(np.int64) % len(pal)]
        self.height.ravel()[car] = 1.5
        self.top.reshape(-1, 3)[car] = colour
        self.side.reshape(-1, 3)[car] = colour * 0.7
        self.kind.ravel()[car] = KIND_CAR

    def layers(self) -> dict[str, np.ndarray]:
        return {
            "height": self.height,
            "top": self.top,
            "side": self.side,
            "window": self.window,
            "ground": self.ground,
            "kind": self.kind,
            "obj": self.obj,
        }


def _hash01(key: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic hash of integer keys to uniforms in [0, 1) (splitmix64 finaliser)."""
    z = key.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def make_scene(city: str, size: int, seed: int, gsd: float | None = None) -> Scene:
    """Draw a synthetic scene of ``city`` (ARG, ATL, JAX, OMA) for a ``size``×``size`` tile.

    ``gsd`` (m/px) defaults to a draw from the city's range. The same (city, size, seed, gsd)
    always gives the same scene.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 px, got {size}")
    style = get_style(city)
    rng = np.random.default_rng(seed)
    g = float(rng.uniform(*style.gsd))
    gsd = g if gsd is None else float(gsd)
    if not gsd > 0:
        raise ValueError(f"gsd must be positive, got {gsd}")
    margin = scene_margin(style, gsd)
    b = _Builder(style, rng, size + 2 * margin, gsd)
    b.grid()
    b.block_types()
    b.ground_cover()
    b.side[:] = b.top
    b.buildings()
    b.trees()
    b.cars()
    return Scene(city, gsd, margin, b.layers())
