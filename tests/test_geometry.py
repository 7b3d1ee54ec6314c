"""geopose.geometry: angle conventions, flow, and the target-side rules of geometric transforms.

The transform rules are proved on flow fields, not restated: an image transform moves every
pixel, and the flow vector a pixel carries (a displacement in pixels) is moved with it and mapped
by the transform's Jacobian, which is measured from how the transform moves pixel coordinates.
That moved flow must equal ``flow_from_agl`` of the transformed AGL with the transformed angle and
scale given by the rules in geometry.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from geopose.geometry import (
    D4,
    TWO_PI,
    agl_height_scale,
    angle_error_deg,
    angle_fliplr,
    angle_flipud,
    angle_rotate,
    angle_to_vector,
    angle_transpose,
    d4_angle,
    d4_angle_inverse,
    d4_image,
    d4_image_inverse,
    flow_from_agl,
    mean_angle,
    scale_resize,
    vector_to_angle,
    wrap_angle,
)

ANGLES = [0.0, 0.3, 1.2, math.pi / 2, 2.0, math.pi, 4.0, 3 * math.pi / 2, 5.9]


def buildings(h: int = 24, w: int = 32, nan: bool = True, seed: int = 0) -> np.ndarray:
    """A height map (m) of a few blocks on a ramp, optionally with NaN holes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    agl = (0.1 * xx + 0.05 * yy).astype(np.float32)
    for _ in range(4):
        r, c = rng.integers(0, h - 5), rng.integers(0, w - 5)
        agl[r : r + 5, c : c + 4] += rng.uniform(5, 40)
    if nan:
        agl[rng.random((h, w)) < 0.05] = np.nan
    return agl


def moved_flow(flow: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The flow field (H×W×2 as dx, dy) after an image ``transform`` (acting on H×W[×C]).

    ``transform`` applied to the column/row index maps gives, at each new pixel, the old pixel's
    coordinates. An affine fit of those over the central half gives d(old)/d(new), whose inverse
    maps old displacement vectors to new ones. Each vector is moved with its pixel, then mapped.
    """
    h, w = flow.shape[:2]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    old_x, old_y = transform(cols), transform(rows)
    nh, nw = old_x.shape
    inner = (slice(nh // 4, nh - nh // 4), slice(nw // 4, nw - nw // 4))
    new_y, new_x = np.mgrid[0:nh, 0:nw]
    design = np.stack([new_x[inner].ravel(), new_y[inner].ravel(), np.ones(new_x[inner].size)], 1)
    fit, *_ = np.linalg.lstsq(design, np.stack([old_x[inner].ravel(), old_y[inner].ravel()], 1))
    d_old_d_new = fit[:2].T  # rows: old x, old y; columns: d/d new x, d/d new y
    jac = np.linalg.inv(d_old_d_new)
    return transform(flow) @ jac.T.astype(np.float32)


def assert_flow_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, atol=1e-3, rtol=1e-5, equal_nan=True)


# --- angles and vectors --------------------------------------------------------------------


def test_wrap_angle():
    assert wrap_angle(-0.5) == pytest.approx(TWO_PI - 0.5)
    assert wrap_angle(TWO_PI) == 0.0 and wrap_angle(3 * TWO_PI + 1) == pytest.approx(1.0)
    assert 0.0 <= wrap_angle(-1e-18) < TWO_PI
    a = wrap_angle(np.array([-TWO_PI, -1e-17, 7.0]))
    assert np.all((a >= 0) & (a < TWO_PI))
    assert isinstance(wrap_angle(1.0), float)


def test_angle_vector_convention_and_round_trip():
    # angle 0 points down the rows (+y), π/2 along the columns (+x)
    np.testing.assert_allclose(angle_to_vector(0.0), [0, 1], atol=1e-12)
    np.testing.assert_allclose(angle_to_vector(math.pi / 2), [1, 0], atol=1e-12)
    a = np.array(ANGLES)
    np.testing.assert_allclose(vector_to_angle(angle_to_vector(a)), a, atol=1e-12)
    assert vector_to_angle([-3.0, 0.0]) == pytest.approx(3 * math.pi / 2)  # any length


def test_mean_angle_wraps_and_weights():
    assert angle_error_deg(mean_angle([math.radians(350), math.radians(10)]), 0.0) < 1e-9
    assert mean_angle([0.2, 0.4], weights=[3, 1]) == pytest.approx(
        vector_to_angle(3 * angle_to_vector(0.2) + angle_to_vector(0.4))
    )


@pytest.mark.parametrize("a", [0.1, 2.5, 6.0])
def test_mean_angle_of_near_opposite_vectors(a):
    """Two directions δ short of opposite: the mean is the bisector of the short way round."""
    delta = 0.02
    b = a + math.pi - delta
    mean = mean_angle([a, b])
    assert angle_error_deg(mean, a + (math.pi - delta) / 2) < 1e-6
    assert 0 <= mean < TWO_PI


def test_angle_error_deg():
    assert angle_error_deg(math.radians(359), math.radians(1)) == pytest.approx(2.0)
    assert angle_error_deg(0.0, math.pi) == pytest.approx(180.0)
    np.testing.assert_allclose(angle_error_deg(np.array([0.0, 1.0]), 1.0), [57.29578, 0], 1e-5)


def test_flow_from_agl_values_and_nan():
    agl = np.array([[2.0, np.nan]], np.float32)
    flow = flow_from_agl(agl, math.pi / 2, 1.5)
    assert flow.shape == (1, 2, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(flow[0, 0], [3.0, 0.0], atol=1e-6)  # 2 m * 1.5 px/m along +x
    assert np.isnan(flow[0, 1]).all()


# --- the CONVENTIONS table, proved on flow fields -----------------------------------------


def rot_ccw_as_displayed(k: int):
    return lambda img: np.rot90(img, k, axes=(0, 1))


def test_rot90_turns_the_picture_counter_clockwise():
    """What the table's 'counter-clockwise as displayed' means for np.rot90 (rows down)."""
    img = np.zeros((3, 3))
    img[1, 2] = 1  # right of centre
    assert rot_ccw_as_displayed(1)(img)[0, 1] == 1  # now above centre


FLIPS = {
    "fliplr": (np.fliplr, angle_fliplr),
    "flipud": (np.flipud, angle_flipud),
    "transpose": (lambda img: np.swapaxes(img, 0, 1), angle_transpose),
    "rot90": (rot_ccw_as_displayed(1), lambda a: angle_rotate(a, math.pi / 2)),
    "rot180": (rot_ccw_as_displayed(2), lambda a: angle_rotate(a, math.pi)),
    "rot270": (rot_ccw_as_displayed(3), lambda a: angle_rotate(a, 3 * math.pi / 2)),
}


@pytest.mark.parametrize("name", list(FLIPS))
@pytest.mark.parametrize("angle", ANGLES)
def test_flip_transpose_rotate_rules_move_the_flow(name, angle):
    image_fn, angle_fn = FLIPS[name]
    agl, scale = buildings(), 1.7
    expected = moved_flow(flow_from_agl(agl, angle, scale), image_fn)
    got = flow_from_agl(image_fn(agl), angle_fn(angle), scale)
    assert_flow_equal(got, expected)


def test_a_wrong_rule_is_caught():
    """The check has teeth: the mirrored rule for the other axis fails it."""
    agl, angle = buildings(nan=False), 1.0
    expected = moved_flow(flow_from_agl(agl, angle, 2.0), np.fliplr)
    wrong = flow_from_agl(np.fliplr(agl), angle_flipud(angle), 2.0)
    assert not np.allclose(wrong, expected, atol=1e-3)


@pytest.mark.parametrize(("k", "transpose"), D4)
@pytest.mark.parametrize("angle", ANGLES)
def test_d4_rules_move_the_flow(k, transpose, angle):
    agl, scale = buildings(h=20, w=28), 0.9
    expected = moved_flow(flow_from_agl(agl, angle, scale), lambda a: d4_image(a, k, transpose))
    got = flow_from_agl(d4_image(agl, k, transpose), d4_angle(angle, k, transpose), scale)
    assert_flow_equal(got, expected)


@pytest.mark.parametrize("theta_deg", [30.0, -50.0, 135.0])
def test_free_rotation_rule_moves_the_flow(theta_deg):
    """Rotation by any θ counter-clockwise as displayed (bilinear resampling about the centre)."""
    from scipy import ndimage

    size, t = 64, math.radians(theta_deg)
    centre = np.array([(size - 1) / 2, (size - 1) / 2])
    # output (row, col) -> input (row, col): the inverse rotation
    inv = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    offset = centre - inv @ centre

    def rotate(img):
        planes = img[..., None] if img.ndim == 2 else img
        out = [
            ndimage.affine_transform(p, inv, offset, order=1) for p in np.moveaxis(planes, -1, 0)
        ]
        return np.stack(out, -1).reshape(img.shape)

    probe = np.zeros((size, size), np.float32)
    probe[32, 50] = 1  # right of centre: turning counter-clockwise lifts it (row decreases)
    r, _ = np.unravel_index(np.argmax(rotate(probe)), probe.shape)
    assert (r < 32) == (0 < theta_deg < 180)
    agl, angle, scale = buildings(size, size, nan=False), 2.2, 1.3
    expected = moved_flow(flow_from_agl(agl, angle, scale), rotate)
    got = flow_from_agl(rotate(agl), angle_rotate(angle, t), scale)
    inner = (slice(16, 48), slice(16, 48))  # away from the fill at the borders
    assert_flow_equal(got[inner], expected[inner])


@pytest.mark.parametrize("factor", [2.0, 0.5, 1.5])
def test_resize_rule_moves_the_flow(factor):
    """Resizing by f multiplies displacements in pixels by f: scale (px/m) * f, AGL unchanged."""
    agl, angle, scale = buildings(32, 32, nan=False), 4.1, 1.2
    size = int(32 * factor)

    def resize(img):
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)

    expected = moved_flow(flow_from_agl(agl, angle, scale), resize)
    got = flow_from_agl(resize(agl), angle, scale_resize(scale, factor))
    inner = (slice(4, size - 4), slice(4, size - 4))
    assert_flow_equal(got[inner], expected[inner])
    assert scale_resize(scale, factor) == pytest.approx(scale * factor)  # not scale / f


def test_height_scaling_rule():
    agl, angle, scale, k = buildings(), 0.7, 2.0, 1.6
    scaled = agl_height_scale(agl, k)
    np.testing.assert_allclose(scaled, agl * k, equal_nan=True)
    assert_flow_equal(flow_from_agl(scaled, angle, scale), k * flow_from_agl(agl, angle, scale))


# --- D4 ------------------------------------------------------------------------------------


def test_d4_has_eight_distinct_elements():
    img = np.arange(12).reshape(3, 4)
    images = {d4_image(img, k, t).tobytes() + bytes(d4_image(img, k, t).shape) for k, t in D4}
    assert len(D4) == 8 and len(images) == 8
    angles = {round(d4_angle(0.3, k, t), 9) for k, t in D4}
    assert len(angles) == 8


@pytest.mark.parametrize(("k", "transpose"), D4)
def test_d4_inverse_round_trips(k, transpose):
    img = np.random.default_rng(k).random((5, 7, 2))
    out = d4_image(img, k, transpose)
    np.testing.assert_array_equal(d4_image_inverse(out, k, transpose), img)
    for a in ANGLES:
        back = d4_angle_inverse(d4_angle(a, k, transpose), k, transpose)
        assert angle_error_deg(back, a) < 1e-9 and 0 <= back < TWO_PI
        assert 0 <= d4_angle(a, k, transpose) < TWO_PI
