"""Geometric augmentation that moves the image, AGL, MAG, angle and scale together.

Every function takes and returns a :class:`geopose.types.Sample` (RGB, AGL in metres, angle
in radians, scale in px/m, GSD in m/px); MAG is ``agl * scale`` and is derived from these when
a batch is made, so it always follows. The target rules are :mod:`geopose.geometry`'s
(CONVENTIONS.md):

- the D4 group (flips, transpose, quarter turns): pixels moved exactly, angle by the table;
- :func:`affine`: rotation by θ counter-clockwise as displayed and zoom by f: angle + θ,
  scale × f, GSD / f;
- :func:`height_scale`: every height × k, seen from the same direction: each surface point
  moves along the flow by ``(k - 1) · agl · scale`` pixels, the tallest surface wins where
  several land on one pixel (occlusion), and pixels whose surface was hidden in the input
  (only possible for k < 1) become holes (RGB 0, AGL NaN).

:class:`GeometricAugment` draws a random :class:`GeometricPlan` per sample at a ``level``
(``none | light | heavy``) and tells the data set which window of the source image to read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from geopose.geometry import (
    agl_height_scale,
    angle_fliplr,
    angle_flipud,
    angle_rotate,
    angle_transpose,
    d4_angle,
    d4_image,
    scale_resize,
    wrap_angle,
)
from geopose.types import Sample, window  # their owner; re-exported for transforms' users

MAX_AGL_M = 200.0
"""Height scaling is limited so that the tallest height stays below this (m), as the baseline."""


def _contig(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a)


def _spatial(sample: Sample, fn) -> Sample:
    agl = None if sample.agl is None else _contig(fn(sample.agl))
    return sample.replace(rgb=_contig(fn(sample.rgb)), agl=agl)


# --- the D4 group -----------------------------------------------------------------------------


def fliplr(sample: Sample) -> Sample:
    """Mirror left-right (columns reversed): angle -> -a."""
    out = _spatial(sample, lambda a: a[:, ::-1])
    return out.replace(angle=float(angle_fliplr(sample.angle)))


def flipud(sample: Sample) -> Sample:
    """Mirror up-down (rows reversed): angle -> π - a."""
    out = _spatial(sample, lambda a: a[::-1])
    return out.replace(angle=float(angle_flipud(sample.angle)))


def transpose(sample: Sample) -> Sample:
    """Swap rows and columns: angle -> π/2 - a."""
    out = _spatial(sample, lambda a: np.swapaxes(a, 0, 1))
    return out.replace(angle=float(angle_transpose(sample.angle)))


def d4(sample: Sample, k: int, transposed: bool = False) -> Sample:
    """The D4 element ``(k, transposed)`` of :data:`geopose.geometry.D4`: transpose first if
    asked, then ``k`` quarter turns counter-clockwise as displayed (angle + k·π/2)."""
    out = _spatial(sample, lambda a: d4_image(a, k, transposed))
    return out.replace(angle=float(d4_angle(sample.angle, k, transposed)))


def rot90(sample: Sample, k: int = 1) -> Sample:
    """``k`` quarter turns counter-clockwise as displayed: angle -> a + k·π/2."""
    return d4(sample, k, False)


# --- affine: arbitrary rotation and zoom ------------------------------------------------------


def affine_matrix(
    theta: float, zoom: float, center_in: tuple[float, float], center_out: tuple[float, float]
) -> np.ndarray:
    """2×3 matrix (cv2 convention, source (x, y) -> destination) of a rotation by ``theta``
    radians counter-clockwise as displayed and a zoom ``zoom`` about ``center_in`` (x, y px),
    which lands on ``center_out``."""
    c, s = math.cos(theta) * zoom, math.sin(theta) * zoom
    # Rows grow downwards: counter-clockwise on screen is (dx, dy) -> (c dx + s dy, -s dx + c dy).
    lin = np.array([[c, s], [-s, c]])
    shift = np.asarray(center_out) - lin @ np.asarray(center_in)
    return np.hstack([lin, shift[:, None]])


def warp_agl(agl: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp an AGL map (m, NaN) with a 2×3 matrix to ``size`` (w, h): bilinear over the valid
    neighbours only; NaN where less than half the interpolation weight is valid or outside."""
    valid = np.isfinite(agl)
    filled = np.where(valid, agl, 0.0).astype(np.float32)
    flags = cv2.INTER_LINEAR
    num = cv2.warpAffine(filled, matrix, size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
    den = cv2.warpAffine(
        valid.astype(np.float32), matrix, size, flags=flags, borderMode=cv2.BORDER_CONSTANT
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~(den > 0.5)] = np.nan
    return out.astype(np.float32)


def affine(
    sample: Sample,
    theta: float = 0.0,
    zoom: float = 1.0,
    out_shape: tuple[int, int] | None = None,
    center: tuple[float, float] | None = None,
) -> Sample:
    """Rotate by ``theta`` radians counter-clockwise as displayed and zoom by ``zoom`` about
    ``center`` (x, y px; default the image centre), onto an ``out_shape`` (rows, cols) image
    centred there. Angle -> a + θ, scale -> scale·f (px/m), GSD -> gsd / f; AGL values are
    unchanged. Outside the input: RGB 0 and AGL NaN."""
    h, w = sample.shape
    oh, ow = out_shape or (h, w)
    cin = center if center is not None else ((w - 1) / 2.0, (h - 1) / 2.0)
    m = affine_matrix(theta, zoom, cin, ((ow - 1) / 2.0, (oh - 1) / 2.0))
    rgb = cv2.warpAffine(
        sample.rgb,
        m,
        (ow, oh),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    agl = None if sample.agl is None else warp_agl(sample.agl, m, (ow, oh))
    return sample.replace(
        rgb=rgb,
        agl=agl,
        angle=float(angle_rotate(sample.angle, theta)),
        scale=float(scale_resize(sample.scale, zoom)),
        gsd=sample.gsd / zoom,
    )


# --- height scaling ---------------------------------------------------------------------------


def _fill_nan_nearest(agl: np.ndarray) -> np.ndarray:
    """NaN heights replaced by the nearest valid height (0 if none is valid)."""
    valid = np.isfinite(agl)
    if valid.all():
        return agl.astype(np.float32)
    if not valid.any():
        return np.zeros_like(agl, dtype=np.float32)
    from scipy.ndimage import distance_transform_edt

    _, (ri, ci) = distance_transform_edt(~valid, return_indices=True)
    return agl[ri, ci].astype(np.float32)


def height_scale(sample: Sample, k: float, step_px: float = 1.0, max_steps: int = 256) -> Sample:
    """Re-render the image as if every height were ``k`` times taller, seen the same way.

    A surface point of height h seen at pixel p (ground footprint p + h·scale·d, d = (sin a,
    cos a)) appears, with heights × k, at ``q = p - (k-1)·scale·h·d``. For each output pixel q
    the surface seen is the tallest solution h of ``h = H(q + (k-1)·scale·h·d)`` (H the input
    AGL, bilinear); it is found by marching h downwards in steps of ``step_px`` pixels along the
    flow and refining each sign change linearly (exact on flat roofs and on facades). A sign
    change across a height jump is not a surface (a disocclusion, k < 1): such pixels, and
    pixels whose surface lies outside the input, are holes (RGB 0, AGL NaN). The output AGL is
    k × the surface height; angle and scale are unchanged (MAG grows by k).
    """
    if sample.agl is None:
        raise ValueError("height_scale needs the AGL")
    if k == 1.0:
        return sample.replace(rgb=sample.rgb.copy(), agl=sample.agl.copy())
    h_in = _fill_nan_nearest(sample.agl)
    rows, cols = h_in.shape
    c = (k - 1.0) * sample.scale  # px of displacement per metre of height
    dx, dy = math.sin(sample.angle), math.cos(sample.angle)
    h_top = float(h_in.max())
    qx = np.broadcast_to(np.arange(cols, dtype=np.float32)[None, :], (rows, cols))
    qy = np.broadcast_to(np.arange(rows, dtype=np.float32)[:, None], (rows, cols))

    def heights_at(u: float | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mx = (qx + np.float32(c * dx) * u).astype(np.float32)
        my = (qy + np.float32(c * dy) * u).astype(np.float32)
        hv = cv2.remap(
            h_in, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan")
        )
        return hv, mx, my

    found = np.zeros((rows, cols), bool)
    root = np.zeros((rows, cols), np.float32)
    if abs(c) * h_top < 1e-6:
        found[:] = True
    else:
        du = step_px / abs(c)
        n = max(1, math.ceil(h_top / du))
        if n > max_steps:
            n, du = max_steps, h_top / max_steps
        tol = 1.5 * abs(k - 1.0) * du + 0.5  # a continuous surface changes less per step (m)
        u_prev = h_top
        h_prev, _, _ = heights_at(np.float32(u_prev))
        g_prev = h_prev - u_prev
        top = np.isfinite(g_prev) & (g_prev >= -1e-4)
        root[top], found[top] = u_prev, True
        # A ray that passed outside the input may have missed a taller surface there.
        blind = ~np.isfinite(g_prev)
        for j in range(1, n + 1):
            u = max(h_top - j * du, 0.0)
            hv, _, _ = heights_at(np.float32(u))
            g = hv - u
            blind |= ~found & ~np.isfinite(g)
            cross = ~found & ~blind & (g >= 0) & (g_prev < 0) & (np.abs(hv - h_prev) <= tol)
            if cross.any():
                frac = g[cross] / (g[cross] - g_prev[cross])  # in (0, 1]: from u toward u_prev
                root[cross] = u + frac * (u_prev - u)
                found |= cross
            if (found | blind).all():
                break
            u_prev, g_prev, h_prev = u, g, hv
    src_x = (qx + np.float32(c * dx) * root).astype(np.float32)
    src_y = (qy + np.float32(c * dy) * root).astype(np.float32)
    rgb = cv2.remap(sample.rgb, src_x, src_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid_in = np.isfinite(sample.agl).astype(np.uint8)
    valid = cv2.remap(valid_in, src_x, src_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    agl = agl_height_scale(root, k).astype(np.float32)
    hole = ~found
    rgb[hole] = 0
    agl[hole | (valid == 0)] = np.nan
    return sample.replace(rgb=rgb, agl=agl)


# --- crops ------------------------------------------------------------------------------------


def center_crop(sample: Sample, size: int) -> Sample:
    """The central ``size``×``size`` window (padded with RGB 0 / AGL NaN if smaller)."""
    h, w = sample.shape
    r0, c0 = (h - size) // 2, (w - size) // 2
    agl = None if sample.agl is None else window(sample.agl, r0, c0, size, size, np.nan)
    return sample.replace(rgb=window(sample.rgb, r0, c0, size, size, 0), agl=agl)


# --- random plans -----------------------------------------------------------------------------

LEVELS: dict[str, dict] = {
    "none": {
        "d4": False,
        "rotate_p": 0.0,
        "zoom_p": 0.0,
        "zoom_range": [1.0, 1.0],
        "height_p": 0.0,
        "height_range": [1.0, 1.0],
    },
    "light": {
        "d4": True,
        "rotate_p": 0.0,
        "zoom_p": 0.3,
        "zoom_range": [0.8, 1.25],
        "height_p": 0.0,
        "height_range": [1.0, 1.0],
    },
    "heavy": {
        "d4": True,
        "rotate_p": 0.5,
        "zoom_p": 0.5,
        "zoom_range": [0.75, 1.33],
        "height_p": 0.3,
        "height_range": [1.0, 2.0],
    },
}


def draws_d4(data: dict) -> bool:
    """Whether a ``data:`` config section's geometric augmentation draws D4 elements (flips,
    transposes, quarter turns): ``data.d4`` if set, else its level's (``geometric`` or
    ``aug``). A model trained without them has seen its images in their own orientation only."""
    if data.get("d4") is not None:
        return bool(data["d4"])
    level = data.get("geometric") or data.get("aug") or "heavy"
    return bool(LEVELS.get(level, LEVELS["heavy"])["d4"])


@dataclass(frozen=True)
class GeometricPlan:
    """One draw of the geometric augmentation, applied in this order: rotation ``theta``
    (radians, counter-clockwise as displayed) with ``zoom``, heights × ``height``, then the D4
    element ``(k, transposed)``."""

    k: int = 0
    transposed: bool = False
    theta: float = 0.0
    zoom: float = 1.0
    height: float = 1.0

    def limited(self, agl_max: float) -> GeometricPlan:
        """The plan with the height factor reduced so heights stay below :data:`MAX_AGL_M`."""
        if self.height <= 1.0 or not np.isfinite(agl_max) or agl_max <= 0:
            return self
        return dataclasses.replace(self, height=max(1.0, min(self.height, MAX_AGL_M / agl_max)))

    def margin(self, scale: float, agl_max: float, out: int) -> int:
        """Extra output pixels needed on each side for the height warp (px)."""
        if self.height == 1.0:
            return 0
        top = agl_max if np.isfinite(agl_max) else MAX_AGL_M / 2
        return min(math.ceil(abs(self.height - 1.0) * scale * self.zoom * top) + 1, out)

    def source_side(self, out: int, scale: float, agl_max: float) -> int:
        """Side (px) of the square window of the source image to read for an ``out`` crop."""
        side = out + 2 * self.margin(scale, agl_max, out)
        if self.theta == 0.0 and self.zoom == 1.0:
            return side
        spread = abs(math.cos(self.theta)) + abs(math.sin(self.theta))
        return math.ceil(side / self.zoom * spread) + 2

    def apply(self, sample: Sample, out: int, agl_max: float = float("nan")) -> Sample:
        """Apply the plan to a window read with :meth:`source_side` and crop ``out``×``out``."""
        side = out + 2 * self.margin(sample.scale, agl_max, out)
        if self.theta != 0.0 or self.zoom != 1.0:
            sample = affine(sample, self.theta, self.zoom, (side, side))
        else:
            sample = center_crop(sample, side)
        if self.height != 1.0:
            sample = height_scale(sample, self.height)
        sample = center_crop(sample, out)
        if self.k or self.transposed:
            sample = d4(sample, self.k, self.transposed)
        return sample.replace(angle=float(wrap_angle(sample.angle)))


class GeometricAugment:
    """Draws :class:`GeometricPlan` s at a level, with optional per-key overrides
    (``d4``, ``rotate_p``, ``zoom_p``, ``zoom_range``, ``height_p``, ``height_range``)."""

    def __init__(self, level: str = "heavy", **overrides) -> None:
        if level not in LEVELS:
            raise ValueError(f"augmentation level must be one of {list(LEVELS)}, got {level!r}")
        self.level = level
        self.params = {**LEVELS[level], **{k: v for k, v in overrides.items() if v is not None}}

    def sample(self, rng: np.random.Generator) -> GeometricPlan:
        """A random plan (always the same draws in the same order, for reproducibility)."""
        p = self.params
        u = rng.random(8)
        k, transposed = int(u[0] * 4) % 4, bool(u[1] < 0.5)
        if not p["d4"]:
            k, transposed = 0, False
        theta = float(u[3] * 2 * math.pi) if u[2] < p["rotate_p"] else 0.0
        lo, hi = p["zoom_range"]
        zoom = float(math.exp(math.log(lo) + u[5] * (math.log(hi) - math.log(lo))))
        zoom = zoom if u[4] < p["zoom_p"] else 1.0
        hlo, hhi = p["height_range"]
        height = float(hlo + u[7] * (hhi - hlo)) if u[6] < p["height_p"] else 1.0
        return GeometricPlan(k, transposed, theta, zoom, height)
