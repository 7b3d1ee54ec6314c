"""Geocentric-pose geometry on the targets (CONVENTIONS.md).

Angles are radians in [0, 2π). A direction is the unit vector ``(sin a, cos a)`` = (dx, dy) in
(column, row) image axes, rows growing downwards. The flow of a pixel is
``agl * scale * (sin a, cos a)`` pixels and carries the pixel from where it is seen to its ground
footprint. The functions below are the target-side rules of every geometric transform: how the
angle, scale and AGL values change when the image is flipped, transposed, rotated or resized.
They work on floats or numpy arrays alike.
"""

from __future__ import annotations

import math

import numpy as np

TWO_PI = 2.0 * math.pi


def wrap_angle(angle):
    """Wrap an angle (radians, scalar or array) into [0, 2π)."""
    a = np.mod(angle, TWO_PI)
    # np.mod of a tiny negative number can return exactly 2π in floating point.
    a = np.where(a >= TWO_PI, 0.0, a)
    return float(a) if np.ndim(a) == 0 else a


def angle_to_vector(angle) -> np.ndarray:
    """Angle (radians) -> unit direction ``(sin a, cos a)`` on the last axis."""
    angle = np.asarray(angle, dtype=np.float64)
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1)


def vector_to_angle(vec) -> float | np.ndarray:
    """Direction ``(x, y) = (sin a, cos a)`` (any length) -> angle in [0, 2π) via atan2(x, y)."""
    vec = np.asarray(vec, dtype=np.float64)
    return wrap_angle(np.arctan2(vec[..., 0], vec[..., 1]))


def mean_angle(angles, weights=None) -> float:
    """Average angles as unit vectors (optionally weighted), renormalised, back to [0, 2π)."""
    v = angle_to_vector(np.asarray(angles, dtype=np.float64))
    w = np.ones(len(v)) if weights is None else np.asarray(weights, dtype=np.float64)
    m = (v * w[:, None]).sum(0) / w.sum()
    return float(vector_to_angle(m))


def angle_error_deg(pred, true) -> float | np.ndarray:
    """Absolute angular difference in degrees, in [0, 180]."""
    d = np.abs(np.mod(np.asarray(pred) - np.asarray(true) + math.pi, TWO_PI) - math.pi)
    out = np.degrees(d)
    return float(out) if np.ndim(out) == 0 else out


def flow_from_agl(agl: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Per-pixel flow (H, W, 2) as (dx, dy) pixels from AGL (m), angle (rad), scale (px/m).

    NaN heights give NaN flow.
    """
    mag = np.asarray(agl, dtype=np.float32) * np.float32(scale)
    return np.stack([mag * np.float32(math.sin(angle)), mag * np.float32(math.cos(angle))], -1)


# --- target-side rules of the geometric transforms (CONVENTIONS.md table) -----------------


def angle_fliplr(angle):
    """Mirror left-right (columns reversed): a -> -a."""
    return wrap_angle(-np.asarray(angle, dtype=np.float64))


def angle_flipud(angle):
    """Mirror up-down (rows reversed): a -> π - a."""
    return wrap_angle(math.pi - np.asarray(angle, dtype=np.float64))


def angle_transpose(angle):
    """Transpose (rows <-> columns): a -> π/2 - a."""
    return wrap_angle(math.pi / 2 - np.asarray(angle, dtype=np.float64))


def angle_rotate(angle, theta: float):
    """Rotate the picture by ``theta`` radians counter-clockwise as displayed: a -> a + θ."""
    return wrap_angle(np.asarray(angle, dtype=np.float64) + theta)


def scale_resize(scale, factor: float):
    """Resize the image by ``factor`` (GSD becomes gsd / factor): scale (px/m) -> scale * f."""
    return np.asarray(scale, dtype=np.float64) * factor if np.ndim(scale) else scale * factor


def agl_height_scale(agl, k: float):
    """Multiply all heights by ``k`` (synthetic height augmentation): AGL -> AGL * k.

    Angle and scale stay the same; the flow magnitude grows by ``k``.
    """
    return np.asarray(agl) * k


# D4: the eight symmetries of the square, each written as (k, t): the picture is first
# transposed if t, then rotated k quarter turns counter-clockwise as displayed
# (np.rot90(img, k) on rows/columns axes).
D4 = tuple((k, t) for t in (False, True) for k in range(4))


def d4_angle(angle, k: int, transpose: bool):
    """Angle after the D4 element (transpose first if asked, then k×90° counter-clockwise)."""
    a = angle_transpose(angle) if transpose else angle
    return angle_rotate(a, k * math.pi / 2)


def d4_angle_inverse(angle, k: int, transpose: bool):
    """Undo :func:`d4_angle`: rotate back, then transpose back."""
    a = angle_rotate(angle, -k * math.pi / 2)
    return angle_transpose(a) if transpose else wrap_angle(a)


def d4_image(img: np.ndarray, k: int, transpose: bool) -> np.ndarray:
    """Apply the D4 element to an (H, W, ...) array: transpose first if asked, then np.rot90 k."""
    out = np.swapaxes(img, 0, 1) if transpose else img
    return np.rot90(out, k, axes=(0, 1))


def d4_image_inverse(img: np.ndarray, k: int, transpose: bool) -> np.ndarray:
    """Undo :func:`d4_image`."""
    out = np.rot90(img, -k, axes=(0, 1))
    return np.swapaxes(out, 0, 1) if transpose else out
