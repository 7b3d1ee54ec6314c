"""Rectification physics: render an oblique view of a known scene, rectify, compare with nadir."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geopose.rectify import ground_positions, rectify

# --- a tiny independent forward projection (ray march), used as ground truth ------------------


def boxes_scene(size: int, seed: int, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Flat-roofed boxes on textured ground: nadir height (m) and nadir colour."""
    rng = np.random.default_rng(seed)
    height = np.zeros((size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    colour = np.stack(
        [40 + (xx * 7 + yy * 3) % 60, 90 + (xx * 5) % 50, 60 + (yy * 11) % 40], -1
    ).astype(np.uint8)
    for _ in range(n):
        h = rng.uniform(3, 20)
        bh, bw = rng.integers(8, size // 4, 2)
        r, c = rng.integers(0, size - bh), rng.integers(0, size - bw)
        height[r : r + bh, c : c + bw] = np.maximum(height[r : r + bh, c : c + bw], h)
        colour[r : r + bh, c : c + bw] = rng.integers(120, 255, 3)
    return height, colour


def ray_march(height, colour, angle, scale, step=0.25):
    """Oblique view of the scene: pixel p sees the first surface met coming down the ray
    (ground p + t·d at height t/scale, t from high to 0). Returns rgb, agl (m) and the ground
    pixel (row, col) each oblique pixel saw. Walls are painted one flat blue."""
    n = height.shape[0]
    sy, sx = math.cos(angle), math.sin(angle)
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    agl = np.zeros((n, n), np.float32)
    seen = np.stack([yy, xx], -1).astype(int)
    found = np.zeros((n, n), bool)
    for t in np.arange(float(height.max()) * scale + 1, -step / 2, -step):
        gy, gx = np.rint(yy + t * sy).astype(int), np.rint(xx + t * sx).astype(int)
        inside = (gy >= 0) & (gy < n) & (gx >= 0) & (gx < n)
        hg = np.where(inside, height[gy.clip(0, n - 1), gx.clip(0, n - 1)], 0.0)
        hit = ~found & inside & (hg * scale >= t - 1e-9)
        roof = hg * scale - t < step
        agl[hit] = np.where(roof[hit], hg[hit], t / scale)
        seen[hit] = np.stack([gy[hit], gx[hit]], -1)
        found |= hit
    rgb = colour[seen[..., 0], seen[..., 1]].copy()
    wall = np.abs(height[seen[..., 0], seen[..., 1]] - agl) > 1e-6
    rgb[wall] = (30, 30, 200)
    return rgb, agl, seen, wall


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("angle, scale", [(0.0, 1.0), (1.1, 2.0), (3.7, 0.7)])
def test_zero_heights_is_identity(angle, scale):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = rectify(rgb, np.zeros((37, 53), np.float32), angle, scale)
    np.testing.assert_array_equal(out.rgb, rgb)
    np.testing.assert_array_equal(out.agl, 0.0)
    assert not out.occluded.any() and not out.filled.any()


def test_constant_height_shifts_along_the_flow():
    """A uniform height h moves the picture by h·scale px along (sin a, cos a): ground = seen +
    flow. Angle π/2 points along +columns, angle 0 along +rows (downwards)."""
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    agl = np.full((20, 30), 3.0, np.float32)
    right = rectify(rgb, agl, math.pi / 2, 1.0)  # 3 px to the right
    np.testing.assert_array_equal(right.rgb[:, 3:], rgb[:, :-3])
    assert right.occluded[:, :3].all() and not right.occluded[:, 3:].any()
    down = rectify(rgb, agl, 0.0, 2.0)  # 6 px down
    np.testing.assert_array_equal(down.rgb[6:], rgb[:-6])
    assert down.occluded[:6].all() and not down.occluded[6:].any()
    np.testing.assert_array_equal(down.agl[6:], 3.0)
    assert np.isnan(down.agl[:6]).all() and (down.rgb[:6] == 0).all()


def test_ground_positions_follow_conventions():
    agl = np.array([[0.0, 2.0]], np.float32)
    x, y = ground_positions(agl, math.radians(30), 4.0)
    # pixel (row 0, col 1) at 2 m, 8 px of flow at 30°: dx = 8 sin 30° = 4, dy = 8 cos 30°
    assert x[0, 1] == pytest.approx(1 + 4.0, abs=1e-5)
    assert y[0, 1] == pytest.approx(8 * math.cos(math.radians(30)), abs=1e-5)
    assert (x[0, 0], y[0, 0]) == (0.0, 0.0)


def test_zbuffer_keeps_the_tallest():
    """Three pixels land on ground column 6: the ground pixel itself (0 m), a 2 m pixel from
    column 4 and a 5 m pixel from column 1; the 5 m one must win whatever the order."""
    rgb = np.zeros((1, 10, 3), np.uint8)
    rgb[0, :, 0] = np.arange(10) * 20
    agl = np.zeros((1, 10), np.float32)
    agl[0, 4], agl[0, 1] = 2.0, 5.0
    out = rectify(rgb, agl, math.pi / 2, 1.0, fill_holes=False)
    assert out.agl[0, 6] == 5.0 and out.rgb[0, 6, 0] == 20
    # the 5 m roof hides column 1's own ground; 4's ground is hidden by the 2 m pixel moving away
    assert out.occluded[0, 1] and out.occluded[0, 4]
    flipped = rectify(rgb[:, ::-1], agl[:, ::-1], 3 * math.pi / 2, 1.0, fill_holes=False)
    assert flipped.agl[0, 3] == 5.0 and flipped.rgb[0, 3, 0] == 20


def test_one_pixel_stretch_gaps_are_filled_not_occluded():
    """A ramp stretches the image by 1.5 along the flow: the nearest map leaves one-pixel gaps,
    which are filled with a neighbour's value and not marked occluded."""
    n = 40
    agl = np.tile((np.arange(n, dtype=np.float32) * 0.5)[None, :], (n, 1))  # slope 0.5 m/px
    rgb = np.zeros((n, n, 3), np.uint8)
    rgb[..., 1] = np.arange(n, dtype=np.uint8)[None, :] * 5
    raw = rectify(rgb, agl, math.pi / 2, 1.0, fill_holes=False)
    filled = rectify(rgb, agl, math.pi / 2, 1.0)
    # ground x = c + 0.5c = 1.5c: every third ground column is missed by the nearest map
    assert 0.25 < raw.occluded.mean() < 0.4
    assert not filled.occluded.any()
    np.testing.assert_array_equal(filled.filled, raw.occluded)
    # ground column x holds height x/3 m; filled ones take a neighbour's (within 0.5 m)
    xs = np.arange(n)
    assert np.all(np.abs(filled.agl - xs[None, :] / 3.0) <= 0.5 + 1e-5)
    assert np.all(np.abs(raw.agl - xs[None, :] / 3.0)[~raw.occluded] <= 1 / 6 + 1e-5)


def test_nan_heights_are_skipped():
    agl = np.zeros((8, 8), np.float32)
    agl[2:4, 2:4] = np.nan
    rgb = np.full((8, 8, 3), 7, np.uint8)
    out = rectify(rgb, agl, 0.5, 1.0, fill_holes=False)
    assert out.occluded[2:4, 2:4].all() and out.occluded.sum() == 4
    assert rectify(None, agl, 0.5, 1.0).rgb is None


@pytest.mark.parametrize("angle, scale, seed", [(0.4, 1.5, 0), (2.2, 1.0, 1), (4.4, 2.0, 2)])
def test_ray_marched_scene_rectifies_to_nadir(angle, scale, seed):
    """Tolerance: the rectified AGL is within 0.5 m of the nadir height, and the rectified RGB
    equals the nadir colour, on at least 98% of the non-occluded pixels (the misses are
    one-pixel rounding at roof edges); the occlusion mask agrees with the ground the oblique
    view really saw on at least 97% of the pixels."""
    height, colour = boxes_scene(128, seed)
    rgb, agl, seen, wall = ray_march(height, colour, angle, scale)
    out = rectify(rgb, agl, angle, scale)
    vis = ~out.occluded
    assert 0.6 < vis.mean() < 0.99  # the boxes hide a real part of the ground
    assert (np.abs(out.agl - height)[vis] < 0.5).mean() >= 0.98
    assert np.all(out.rgb == colour, axis=-1)[vis].mean() >= 0.98
    # ground the oblique view saw (roofs and open ground, not the walls' footprints)
    saw = np.zeros_like(vis)
    saw[seen[~wall, 0], seen[~wall, 1]] = True
    assert (saw == vis).mean() >= 0.97
    # against the unrectified image the match is much worse (the test can fail)
    assert (np.abs(agl - height) < 0.5).mean() < 0.97
