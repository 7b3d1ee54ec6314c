"""Per-city styles of the synthetic cities and their satellite pass geometries.

Each style echoes one city of the competition data: street grid, lot sizes, building heights,
roofs, trees, colours, ground sample distance (GSD, m/px) and the few satellite passes
(flow angle, scale, sun direction, sun elevation) the city was imaged from. Heights are metres,
angles are degrees in this table (radians everywhere else), scale is px of image displacement
per metre of height.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geopose.errors import ConfigError

# Linear (not gamma-encoded) reflectances of the materials, RGB in [0, 1].
GRASS = (0.055, 0.095, 0.035)
DRY_GRASS = (0.15, 0.14, 0.075)
SOIL = (0.17, 0.13, 0.09)
SAND = (0.30, 0.26, 0.19)
ASPHALT = (0.065, 0.065, 0.07)
CONCRETE = (0.26, 0.25, 0.23)
WATER = (0.018, 0.035, 0.045)
TREE = (0.035, 0.07, 0.025)
TREE_SIDE = (0.022, 0.045, 0.018)
WINDOW = (0.035, 0.045, 0.06)
MARKING = (0.55, 0.55, 0.5)

SCALE_RANGE = (0.65, 1.05)
"""Scale range (px/m) of the uniform-angle mode and of the city passes."""
SCALE_MAX = 1.15
"""Largest scale (px/m) a scene's margin is sized for (passes plus jitter)."""
FLOOR_M = 3.2
"""Storey height (m): facade window bands repeat every FLOOR_M metres of height."""


@dataclass(frozen=True)
class Pass:
    """One satellite pass: flow angle (deg), scale (px/m), sun azimuth as the shadow direction
    in the flow-angle convention (deg), sun elevation (deg)."""

    angle: float
    scale: float
    sun: float
    elevation: float


@dataclass(frozen=True)
class CityStyle:
    """How one synthetic city looks. Lengths in metres, probabilities in [0, 1]."""

    name: str
    gsd: tuple[float, float]
    passes: tuple[Pass, ...]
    grid_angle_jitter: float  # deg; 0 = streets on the image axes, 45 = any orientation
    block: tuple[float, float]  # street spacing (m)
    road: tuple[float, float]  # road width (m)
    lot: tuple[float, float]  # residential lot size (m) across, deep
    # block types: residential, commercial, downtown, park, parking, water
    block_mix: tuple[float, float, float, float, float, float]
    downtown_chance: float  # chance that a tile lies near a downtown
    house_floors: tuple[float, float]
    commercial_floors: tuple[float, float]
    tower_floors: tuple[float, float]
    house_fill: tuple[float, float]  # building share of the lot per side
    pitched: float  # share of pitched houses
    roofs_pitched: tuple[tuple[float, float, float], ...]
    roofs_flat: tuple[tuple[float, float, float], ...]
    walls: tuple[tuple[float, float, float], ...]
    ground: tuple[tuple[float, float, float], ...]  # yard materials mixed by noise
    tree_cover: tuple[float, float, float]  # tree density in yards, parks, streets
    tree_height: tuple[float, float]
    crown_radius: tuple[float, float]
    max_height: float
    mean_agl: float  # the real city's mean AGL (m), the target of the style


_RED = ((0.42, 0.14, 0.07), (0.36, 0.16, 0.10), (0.48, 0.22, 0.12), (0.30, 0.12, 0.08))
_GREY = ((0.10, 0.10, 0.11), (0.16, 0.15, 0.14), (0.22, 0.21, 0.20), (0.08, 0.085, 0.09))
_BROWN = ((0.18, 0.12, 0.08), (0.13, 0.10, 0.08), (0.24, 0.18, 0.13))
_FLAT = ((0.55, 0.55, 0.53), (0.32, 0.32, 0.31), (0.10, 0.10, 0.10), (0.40, 0.42, 0.45))
_WALLS = (
    (0.42, 0.36, 0.28),
    (0.30, 0.15, 0.10),
    (0.55, 0.53, 0.50),
    (0.30, 0.30, 0.29),
    (0.48, 0.42, 0.33),
)

STYLES: dict[str, CityStyle] = {
    "ARG": CityStyle(
        name="San Fernando (ARG)",
        gsd=(0.30, 0.36),
        passes=(Pass(35, 0.80, 10, 55), Pass(165, 0.95, 350, 62), Pass(250, 0.72, 25, 48)),
        grid_angle_jitter=45,
        block=(75, 105),
        road=(9, 13),
        lot=(9, 24),
        block_mix=(0.78, 0.12, 0.0, 0.05, 0.03, 0.02),
        downtown_chance=0.0,
        house_floors=(1.3, 3.7),
        commercial_floors=(1, 4),
        tower_floors=(6, 14),
        house_fill=(0.75, 0.95),
        pitched=0.35,
        roofs_pitched=_RED,
        roofs_flat=((0.38, 0.36, 0.33), (0.28, 0.27, 0.26), (0.45, 0.44, 0.42), (0.34, 0.20, 0.14)),
        walls=_WALLS,
        ground=(SOIL, DRY_GRASS, CONCRETE, GRASS),
        tree_cover=(0.22, 0.5, 0.15),
        tree_height=(5, 12),
        crown_radius=(2.0, 4.5),
        max_height=45.0,
        mean_agl=3.9,
    ),
    "ATL": CityStyle(
        name="Atlanta (ATL)",
        gsd=(0.30, 0.36),
        passes=(Pass(20, 0.90, 215, 60), Pass(125, 0.75, 235, 50), Pass(205, 1.00, 222, 66)),
        grid_angle_jitter=45,
        block=(90, 140),
        road=(10, 16),
        lot=(22, 34),
        block_mix=(0.55, 0.20, 0.0, 0.13, 0.10, 0.02),
        downtown_chance=0.35,
        house_floors=(1, 2.5),
        commercial_floors=(2, 6),
        tower_floors=(10, 22),
        house_fill=(0.45, 0.7),
        pitched=0.75,
        roofs_pitched=_GREY + _BROWN,
        roofs_flat=_FLAT,
        walls=_WALLS,
        ground=(GRASS, GRASS, SOIL, DRY_GRASS),
        tree_cover=(0.75, 0.85, 0.45),
        tree_height=(12, 25),
        crown_radius=(3.0, 6.5),
        max_height=75.0,
        mean_agl=8.4,
    ),
    "JAX": CityStyle(
        name="Jacksonville (JAX)",
        gsd=(0.32, 0.40),
        passes=(Pass(70, 0.85, 220, 62), Pass(160, 0.70, 240, 55), Pass(320, 0.98, 208, 68)),
        grid_angle_jitter=12,
        block=(85, 125),
        road=(10, 15),
        lot=(18, 30),
        block_mix=(0.55, 0.22, 0.0, 0.09, 0.08, 0.06),
        downtown_chance=0.08,
        house_floors=(1, 2.4),
        commercial_floors=(1, 4),
        tower_floors=(8, 18),
        house_fill=(0.5, 0.75),
        pitched=0.6,
        roofs_pitched=_GREY + _BROWN,
        roofs_flat=_FLAT,
        walls=_WALLS,
        ground=(SAND, GRASS, DRY_GRASS, SOIL),
        tree_cover=(0.7, 0.8, 0.4),
        tree_height=(9, 21),
        crown_radius=(2.5, 5.5),
        max_height=60.0,
        mean_agl=4.4,
    ),
    "OMA": CityStyle(
        name="Omaha (OMA)",
        gsd=(0.30, 0.35),
        passes=(Pass(95, 0.78, 230, 52), Pass(190, 1.02, 215, 60), Pass(275, 0.88, 245, 45)),
        grid_angle_jitter=4,
        block=(90, 130),
        road=(10, 14),
        lot=(16, 34),
        block_mix=(0.74, 0.10, 0.0, 0.08, 0.06, 0.02),
        downtown_chance=0.0,
        house_floors=(1, 1.8),
        commercial_floors=(1, 2.5),
        tower_floors=(5, 10),
        house_fill=(0.45, 0.65),
        pitched=0.9,
        roofs_pitched=_GREY + _BROWN,
        roofs_flat=_FLAT,
        walls=_WALLS,
        ground=(GRASS, GRASS, DRY_GRASS, SOIL),
        tree_cover=(0.3, 0.5, 0.2),
        tree_height=(7, 14),
        crown_radius=(2.0, 4.5),
        max_height=40.0,
        mean_agl=2.3,
    ),
}


def get_style(city: str) -> CityStyle:
    """The style of a city code (ARG, ATL, JAX, OMA)."""
    try:
        return STYLES[city]
    except KeyError:
        raise ConfigError(f"unknown city {city!r}; choose from {', '.join(STYLES)}") from None


@dataclass(frozen=True)
class ViewGeometry:
    """The geometry of one image: flow angle (rad), scale (px/m), sun shadow direction (rad),
    sun elevation (rad) and the index of the pass it was drawn from (-1 = uniform)."""

    angle: float
    scale: float
    sun: float
    elevation: float
    pass_index: int


def draw_geometry(
    city: str, rng: np.random.Generator, uniform_angles: bool = False
) -> ViewGeometry:
    """Draw an image's viewing geometry.

    By default one of the city's passes, jittered slightly (angle and sun ±~2°, scale ±~2.5 %,
    elevation ±~2°), so a city's (angle, scale, sun) cluster around a few values as in the real
    collections. ``uniform_angles`` draws angle and sun uniformly in [0, 2π), scale uniformly in
    :data:`SCALE_RANGE` and elevation in [40°, 70°].
    """
    if uniform_angles:
        a, s = rng.uniform(0, 2 * math.pi), rng.uniform(*SCALE_RANGE)
        sun, elev = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(40, 70))
        return ViewGeometry(a, s, sun, elev, -1)
    passes = get_style(city).passes
    k = int(rng.integers(len(passes)))
    p = passes[k]
    j = rng.normal(size=4)
    a = math.radians(p.angle + 2.0 * j[0]) % (2 * math.pi)
    s = p.scale * (1.0 + 0.025 * j[1])
    sun = math.radians(p.sun + 2.0 * j[2]) % (2 * math.pi)
    elev = math.radians(p.elevation + 2.0 * j[3])
    return ViewGeometry(a, s, sun, elev, k)


CITY_CODES = tuple(STYLES)
