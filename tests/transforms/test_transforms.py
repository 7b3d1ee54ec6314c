"""Geometric augmentation proved by physics: render a synthetic scene, transform the *scene*
and render again, and compare with the augmentation applied to the first render and its
targets. Each test also checks that the wrong rule (opposite sign, the baseline's scale / f,
the opposite flow direction) is clearly worse, so the comparison can fail."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from geopose.data.dataset import to_item
from geopose.geometry import D4, d4_angle, d4_image
from geopose.synth import Scene, make_scene, render
from geopose.transforms import (
    GeometricAugment,
    GeometricPlan,
    PhotometricAugment,
    Sample,
    affine,
    d4,
    fliplr,
    flipud,
    height_scale,
    rot90,
    transpose,
)
from geopose.transforms.geometric import affine_matrix

ANGLE, SCALE = 0.7, 1.5  # rad, px/m


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene("JAX", 96, 3)


@pytest.fixture(scope="module")
def sample(scene) -> Sample:
    r = render(scene, ANGLE, SCALE)
    return Sample(r.rgb, r.agl, ANGLE, SCALE, scene.gsd)


def _agreement(out: Sample, truth, tol_m: float = 1.0) -> tuple[float, float]:
    """(fraction of output pixels defined, fraction of defined AGL within tol_m of truth)."""
    ok = np.isfinite(out.agl)
    return float(ok.mean()), float((np.abs(out.agl - truth.agl)[ok] < tol_m).mean())


# --- the D4 group: exact -----------------------------------------------------------------------


@pytest.mark.parametrize(("k", "t"), D4)
def test_d4_matches_rendering_the_transformed_scene(scene, sample, k, t):
    truth = render(scene.apply(lambda a: d4_image(a, k, t)), d4_angle(ANGLE, k, t), SCALE)
    out = d4(sample, k, t)
    assert math.isclose(out.angle, truth.angle, abs_tol=1e-9)
    np.testing.assert_array_equal(out.agl, truth.agl)
    np.testing.assert_array_equal(out.rgb, truth.rgb)
    assert out.scale == SCALE and out.gsd == sample.gsd


@pytest.mark.parametrize(
    ("fn", "scene_fn", "angle_of"),
    [
        (fliplr, np.fliplr, lambda a: -a),
        (flipud, np.flipud, lambda a: math.pi - a),
        (transpose, lambda a: np.swapaxes(a, 0, 1), lambda a: math.pi / 2 - a),
        (rot90, np.rot90, lambda a: a + math.pi / 2),
    ],
    ids=["fliplr", "flipud", "transpose", "rot90"],
)
def test_flips_and_turns_follow_the_conventions_table(scene, sample, fn, scene_fn, angle_of):
    truth = render(scene.apply(scene_fn), angle_of(ANGLE), SCALE)
    out = fn(sample)
    np.testing.assert_array_equal(out.agl, truth.agl)
    assert math.isclose(math.cos(out.angle - angle_of(ANGLE)), 1.0, abs_tol=1e-12)
    # The picture alone (angle kept) would not render like this: the rule matters.
    wrong = render(scene.apply(scene_fn), ANGLE, SCALE)
    assert np.mean(np.abs(out.agl - wrong.agl) > 1.0) > 0.02


# --- arbitrary rotation and zoom ---------------------------------------------------------------


def _rotated_scene(scene: Scene, theta: float) -> Scene:
    n = scene.full_size
    c = (n - 1) / 2.0
    m = affine_matrix(theta, 1.0, (c, c), (c, c))
    return scene.apply(lambda a: cv2.warpAffine(a, m, (n, n), flags=cv2.INTER_NEAREST))


@pytest.mark.parametrize("theta_deg", [30.0, -75.0, 143.0])
def test_rotation_adds_theta_to_the_angle(scene, sample, theta_deg):
    theta = math.radians(theta_deg)
    truth = render(_rotated_scene(scene, theta), ANGLE + theta, SCALE)
    out = affine(sample, theta)
    assert math.isclose(math.cos(out.angle - truth.angle), 1.0, abs_tol=1e-12)
    assert out.scale == SCALE
    defined, good = _agreement(out, truth)
    assert defined > 0.8 and good > 0.97
    # Rotating the picture the other way (or the angle by -θ) does not match.
    _, wrong = _agreement(affine(sample, -theta), truth)
    assert wrong < 0.7
    # RGB agrees where the heights do (bilinear vs nearest resampling at edges aside).
    ok = np.isfinite(out.agl) & (np.abs(out.agl - truth.agl) < 0.1)
    diff = np.abs(out.rgb.astype(int) - truth.rgb.astype(int)).max(-1)[ok]
    assert np.median(diff) <= 6


@pytest.mark.parametrize("zoom", [2.0, 0.5])
def test_zoom_multiplies_scale_and_divides_gsd(scene, sample, zoom):
    truth = render(scene.resized(zoom), ANGLE, SCALE * zoom)
    n = truth.rgb.shape[0]
    out = affine(sample, 0.0, zoom, (n, n))
    assert math.isclose(out.scale, SCALE * zoom) and math.isclose(out.gsd, sample.gsd / zoom)
    defined, good = _agreement(out, truth)
    assert defined > 0.99 and good > 0.9  # area-averaged vs nearest-sampled edges
    # The public baseline's rule (scale / f) renders differently.
    baseline = render(scene.resized(zoom), ANGLE, SCALE / zoom)
    assert float((np.abs(out.agl - baseline.agl) < 1.0).mean()) < good - 0.15


# --- height scaling ----------------------------------------------------------------------------


def _taller(scene: Scene, k: float) -> Scene:
    layers = dict(scene.layers)
    layers["height"] = scene.layers["height"] * np.float32(k)
    return Scene(scene.city, scene.gsd, scene.margin, layers)


@pytest.mark.parametrize("k", [1.5, 2.0, 0.6])
def test_height_scaling_matches_rendering_taller_buildings(scene, sample, k):
    truth = render(_taller(scene, k), ANGLE, SCALE)
    out = height_scale(sample, k)
    assert out.angle == ANGLE and out.scale == SCALE
    ok = np.isfinite(out.agl)
    # Defined: everything but the band whose surface may come from outside the tile, and
    # (k < 1) the ground that was hidden behind buildings.
    assert ok.mean() > 0.6
    err = np.abs(out.agl - truth.agl)[ok]
    assert np.median(err) < 0.01 and (err < 0.5).mean() > 0.97
    # Colours of the ground moved into place (façade textures stretch by k and the renderer
    # shades roofs by their height, which an augmentation cannot re-light).
    ground = ok & ~truth.facade & (truth.agl == 0) & (out.agl == 0)
    diff = np.abs(out.rgb.astype(int) - truth.rgb.astype(int)).max(-1)[ground]
    assert ground.mean() > 0.2 and (diff <= 8).mean() > 0.95
    # Moving roofs the opposite way along the flow does not match.
    wrong = height_scale(sample.replace(angle=ANGLE + math.pi), k)
    okw = np.isfinite(wrong.agl)
    assert (np.abs(wrong.agl - truth.agl)[okw] < 0.5).mean() < 0.85


def test_height_scaling_by_one_is_the_identity(sample):
    out = height_scale(sample, 1.0)
    np.testing.assert_array_equal(out.rgb, sample.rgb)
    np.testing.assert_array_equal(out.agl, sample.agl)


def test_height_scaling_marks_disocclusions_as_holes(scene, sample):
    out = height_scale(sample, 0.5)
    truth = render(_taller(scene, 0.5), ANGLE, SCALE)
    holes = ~np.isfinite(out.agl)
    assert (out.rgb[holes] == 0).all()
    # Ground newly visible next to buildings (hidden before) is among the holes.
    newly_ground = (truth.agl == 0) & (sample.agl > 2)
    assert newly_ground.any() and holes[newly_ground].mean() > 0.8


def test_height_scaling_keeps_missing_heights_missing(sample):
    agl = sample.agl.copy()
    agl[40:44, 40:44] = np.nan
    out = height_scale(sample.replace(agl=agl), 1.3)
    assert np.isnan(out.agl[40:44, 40:44]).any()
    assert np.isfinite(out.agl).mean() > 0.6


# --- plans and targets -------------------------------------------------------------------------


def test_plan_applies_every_rule_and_crops(scene):
    big = render(make_scene("OMA", 128, 5), 2.0, 1.2)
    s = Sample(big.rgb, big.agl, 2.0, 1.2, 0.5)
    plan = GeometricPlan(k=3, transposed=True, theta=0.4, zoom=1.25, height=1.2)
    side = plan.source_side(48, s.scale, float(np.nanmax(big.agl)))
    assert 48 < side <= 128
    r0 = (128 - side) // 2
    win = s.replace(
        rgb=big.rgb[r0 : r0 + side, r0 : r0 + side], agl=big.agl[r0 : r0 + side, r0 : r0 + side]
    )
    out = plan.apply(win, 48, float(np.nanmax(big.agl)))
    assert out.rgb.shape == (48, 48, 3) and out.agl.shape == (48, 48)
    assert math.isclose(out.angle, d4_angle(2.0 + 0.4, 3, True), abs_tol=1e-9)
    assert math.isclose(out.scale, 1.2 * 1.25) and math.isclose(out.gsd, 0.5 / 1.25)
    assert np.nanmax(out.agl) <= 1.2 * np.nanmax(big.agl) + 1e-3
    assert np.isfinite(out.agl).mean() > 0.9  # the window was large enough


def test_augment_levels_and_reproducibility():
    heavy = GeometricAugment("heavy")
    plans = [heavy.sample(np.random.default_rng(i)) for i in range(200)]
    assert plans[7] == heavy.sample(np.random.default_rng(7))
    assert len({(p.k, p.transposed) for p in plans}) == 8
    assert 0.3 < np.mean([p.theta != 0 for p in plans]) < 0.7
    assert all(1.0 <= p.height <= 2.0 for p in plans)
    assert all(
        p == GeometricPlan()
        for p in (GeometricAugment("none").sample(np.random.default_rng(i)) for i in range(20))
    )
    rot = GeometricAugment("light", rotate_p=1.0)
    assert all(rot.sample(np.random.default_rng(i)).theta != 0 for i in range(20))
    with pytest.raises(ValueError):
        GeometricAugment("extreme")


def test_height_factor_limited_to_plausible_heights():
    plan = GeometricPlan(height=2.0).limited(150.0)
    assert math.isclose(plan.height, 200.0 / 150.0)


def test_to_item_builds_mag_and_direction(sample):
    item = to_item(sample, 2, "JAX_1")
    assert item["image"].shape == (3, 96, 96) and float(item["image"].max()) <= 1.0
    np.testing.assert_allclose(item["mag"].numpy()[0], sample.agl * SCALE, rtol=1e-6)
    np.testing.assert_allclose(
        item["direction"].numpy(), [math.sin(ANGLE), math.cos(ANGLE)], rtol=1e-6
    )
    assert int(item["city"]) == 2 and float(item["gsd"]) == pytest.approx(sample.gsd)


# --- photometric -------------------------------------------------------------------------------


def test_photometric_changes_colours_only_and_is_seeded(sample):
    aug = PhotometricAugment("heavy", crop=96)
    a, b, c = aug(sample.rgb, 1), aug(sample.rgb, 1), aug(sample.rgb, 2)
    assert a.shape == sample.rgb.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(aug(sample.rgb, s), sample.rgb) for s in range(12)]
    assert any(changed) and not np.array_equal(a, c)
    assert np.array_equal(PhotometricAugment("none")(sample.rgb, 3), sample.rgb)


def test_photometric_transforms_switch_on_independently():
    aug = PhotometricAugment("heavy", crop=96)
    leaves = aug.compose.transforms
    aug.reseed(5)
    first = [t.py_random.random() for t in leaves]
    assert len(set(first)) == len(leaves)  # not one shared stream
    aug.reseed(5)
    assert [t.py_random.random() for t in leaves] == first


def test_coarse_dropout_holes_scale_with_the_crop():
    import albumentations as A

    for crop, biggest in ((512, 128), (64, 16)):
        drop = [
            t
            for t in PhotometricAugment("heavy", crop).compose.transforms
            if isinstance(t, A.CoarseDropout)
        ][0]
        assert drop.hole_height_range[1] == biggest
