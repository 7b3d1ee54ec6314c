"""Inference building blocks: torch D4 helpers against geopose.geometry, exact D4 equivariance
of D4 TTA on a random model, the averaging rule (ensembles), and blended tiling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from geopose.geometry import (
    D4,
    angle_error_deg,
    angle_fliplr,
    angle_flipud,
    angle_to_vector,
    d4_angle,
    d4_image,
    mean_angle,
    vector_to_angle,
)
from geopose.inference import (
    Ensemble,
    Predictor,
    average_outputs,
    d4_direction,
    d4_direction_inverse,
    d4_field,
    d4_field_inverse,
    d4_tensor,
    d4_tensor_inverse,
    predict_tiled,
    predict_tta,
    tile_starts,
    tta_views,
)
from geopose.inference.runner import ModelRunner
from geopose.inference.tiling import axis_weights
from geopose.inference.tta import FLIPLR, FLIPUD
from geopose.models import GeoposeOutput, create_model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A randomly initialised cpu_small model (not D4-equivariant by itself)."""
    torch.manual_seed(0)
    return create_model("cpu_small").eval()


@pytest.fixture(scope="module")
def pooled_model() -> nn.Module:
    """cpu_small with a pooled direction head and a regressed scale, randomly initialised.

    cpu_small's own direction (a fit of its ramp head) is, at random init, almost independent
    of the image: its eight back-transformed D4 views nearly cancel (|mean| ~ 1e-4), so the
    TTA angle is rounding noise magnified 10⁴ times. The pooled head depends on the content
    more (|mean| ~ 0.02), which lets the angle be checked to a tight tolerance.
    """
    torch.manual_seed(0)
    return create_model("cpu_small", direction={"kind": "pooled"}, scale={"kind": "regress"}).eval()


def angle_of(direction: torch.Tensor) -> float:
    return float(vector_to_angle(direction.double().numpy()))


# --- torch D4 == geometry D4 ------------------------------------------------------------------


@pytest.mark.parametrize("k,t", D4)
def test_torch_d4_matches_numpy(k, t):
    x = np.arange(5 * 7 * 2).reshape(5, 7, 2).astype(np.float32)
    want = d4_image(x, k, t)
    got = d4_tensor(torch.from_numpy(x).permute(2, 0, 1), k, t).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, want)
    back = d4_tensor_inverse(torch.from_numpy(np.ascontiguousarray(want)).permute(2, 0, 1), k, t)
    np.testing.assert_array_equal(back.permute(1, 2, 0).numpy(), x)


@pytest.mark.parametrize("k,t", D4)
def test_direction_rule_matches_angle_table(k, t):
    angles = np.random.default_rng(1).uniform(0, 2 * math.pi, 16)
    vec = torch.as_tensor(angle_to_vector(angles))
    got = vector_to_angle(d4_direction(vec, k, t).numpy())
    assert np.max(angle_error_deg(got, d4_angle(angles, k, t))) < 1e-9
    torch.testing.assert_close(d4_direction_inverse(d4_direction(vec, k, t), k, t), vec)


def test_named_views():
    x = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(d4_image(x, *FLIPLR), x[:, ::-1])
    np.testing.assert_array_equal(d4_image(x, *FLIPUD), x[::-1, :])
    assert angle_error_deg(d4_angle(0.3, *FLIPLR), angle_fliplr(0.3)) < 1e-9
    assert angle_error_deg(d4_angle(0.3, *FLIPUD), angle_flipud(0.3)) < 1e-9
    assert [len(set(tta_views(m))) for m in ("none", "flip", "d2", "d4")] == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="unknown TTA"):
        tta_views("d8")


# --- exact D4 equivariance --------------------------------------------------------------------


def _predict(model, x, tta):
    g, c = torch.tensor([0.4]), torch.tensor([2])
    with torch.inference_mode():
        return predict_tta(model, x, g, c, tta, max_batch=8)


# (40, 56): non-square and not a multiple of the model's stride (each view padded differently).
@pytest.mark.parametrize("which,shape", [("model", (40, 56)), ("pooled_model", (64, 64))])
def test_d4_tta_is_exactly_equivariant(request, which, shape):
    model = request.getfixturevalue(which)
    x = torch.rand(1, 3, *shape, generator=torch.Generator().manual_seed(3))
    base = _predict(model, x, "d4")
    a0 = angle_of(base.direction[0])
    for k, t in D4:
        p = _predict(model, d4_tensor(x, k, t), "d4")
        torch.testing.assert_close(p.agl, d4_tensor(base.agl, k, t), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p.mag, d4_tensor(base.mag, k, t), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p.scale, base.scale, atol=1e-5, rtol=1e-5)
        if which == "pooled_model":
            assert angle_error_deg(angle_of(p.direction[0]), d4_angle(a0, k, t)) < 0.01


def test_random_model_alone_is_not_equivariant(model):
    """Without TTA the same check fails: the equivariance above comes from the TTA."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    base = _predict(model, x, "none")
    p = _predict(model, d4_tensor(x, 1, False), "none")
    assert (p.agl - d4_tensor(base.agl, 1, False)).abs().max() > 1e-3
    flip = _predict(model, d4_tensor(x, *FLIPLR), "flip")
    flip0 = _predict(model, x, "flip")
    torch.testing.assert_close(flip.agl, d4_tensor(flip0.agl, *FLIPLR), atol=1e-5, rtol=1e-5)


def test_predictor_d4_equivariant_on_uint8_images(pooled_model):
    """The full path (uint8 image, ensemble of runners, TTA, numpy results) is D4-equivariant."""
    rgb = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pred = Predictor([pooled_model], tta="d4", max_batch=8)
    base = pred.predict(rgb, 0.5, 1)
    for k, t in [(1, False), FLIPLR, (2, True)]:
        p = pred.predict(np.ascontiguousarray(d4_image(rgb, k, t)), 0.5, 1)
        np.testing.assert_allclose(p.agl, d4_image(base.agl, k, t), atol=1e-5)
        np.testing.assert_allclose(p.mag, d4_image(base.mag, k, t), atol=1e-5)
        assert angle_error_deg(p.angle, d4_angle(base.angle, k, t)) < 0.01
        assert p.scale == pytest.approx(base.scale, rel=1e-5)


# --- averaging / ensembles ----------------------------------------------------------------


class Constant(nn.Module):
    """Stand-in model returning fixed outputs: AGL ``h`` m, direction at ``angle`` (length
    ``length``), scale ``s`` px/m."""

    def __init__(self, h: float, angle: float, s: float, length: float = 1.0) -> None:
        super().__init__()
        self.h, self.angle, self.s, self.length = h, angle, s, length

    def forward(self, image, gsd, city):
        b, _, hh, ww = image.shape
        agl = torch.full((b, 1, hh, ww), self.h)
        vec = torch.tensor(angle_to_vector(self.angle) * self.length, dtype=torch.float32)
        return GeoposeOutput(agl, agl * self.s, vec.expand(b, 2), torch.full((b,), self.s))


def test_ensemble_averages_opposite_ish_angles_as_unit_vectors():
    a1, a2 = math.radians(10), math.radians(200)  # 190° apart
    ens = Ensemble([Constant(2.0, a1, 1.0, length=5.0), Constant(6.0, a2, 3.0, length=0.2)])
    out = ens(torch.zeros(1, 3, 8, 8), torch.tensor([0.3]), None)
    # Unit vectors first (the lengths 5 and 0.2 must not matter): the mean is 285°, not the
    # naive 105°, nor the long-vector-dominated 10°.
    assert angle_error_deg(angle_of(out.direction[0]), math.radians(285)) < 1e-4
    assert angle_error_deg(angle_of(out.direction[0]), mean_angle([a1, a2])) < 1e-4
    assert float(out.direction[0].norm()) == pytest.approx(1.0)
    assert float(out.agl.mean()) == pytest.approx(4.0) and float(out.scale) == pytest.approx(2.0)


def test_shrink_scale_is_the_length_of_the_mean_flow_direction():
    """Views that agree keep their scale; opposite ones cancel it; perpendicular ones give √½;
    the direction is the same with and without shrinking."""

    def out(angle: float, scale: float) -> GeoposeOutput:
        d = torch.tensor([[math.sin(angle), math.cos(angle)]])
        z = torch.zeros(1, 1, 4, 4)
        return GeoposeOutput(z, z, d, torch.tensor([scale]))

    for angles, factor in (
        ([0.3, 0.3], 1.0),
        ([0.3, 0.3 + math.pi], 0.0),
        ([0.0, math.pi / 2], 0.5**0.5),
    ):
        views = [out(a, s) for a, s in zip(angles, (1.0, 3.0), strict=True)]
        plain, shrunk = average_outputs(views), average_outputs(views, shrink_scale=True)
        assert float(plain.scale) == pytest.approx(2.0)
        assert float(shrunk.scale) == pytest.approx(2.0 * factor, abs=1e-6)
        if factor > 0:
            torch.testing.assert_close(shrunk.direction, plain.direction)


def test_shrunk_d4_scale_is_still_invariant(pooled_model):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    g, c = torch.tensor([0.4]), torch.tensor([2])
    with torch.inference_mode():
        base = predict_tta(pooled_model, x, g, c, "d4", 8, shrink_scale=True)
        plain = predict_tta(pooled_model, x, g, c, "d4", 8)
        moved = predict_tta(pooled_model, d4_tensor(x, 1, True), g, c, "d4", 8, shrink_scale=True)
    assert float(base.scale) < float(plain.scale)  # a random model's views disagree
    torch.testing.assert_close(moved.scale, base.scale, atol=1e-5, rtol=1e-5)


def test_ensemble_weights():
    a1, a2 = math.radians(30), math.radians(150)
    ens = Ensemble([Constant(2.0, a1, 1.0), Constant(6.0, a2, 3.0)], weights=[3, 1])
    out = ens(torch.zeros(2, 3, 8, 8), torch.tensor([0.3, 0.3]), None)
    assert angle_error_deg(angle_of(out.direction[1]), mean_angle([a1, a2], [3, 1])) < 1e-4
    assert float(out.agl.mean()) == pytest.approx(3.0)  # (3·2 + 6) / 4
    assert float(out.mag.mean()) == pytest.approx((3 * 2 + 18) / 4)
    assert out.scale.tolist() == pytest.approx([1.5, 1.5])
    with pytest.raises(ValueError, match="weights"):
        average_outputs([out, out], weights=[1, -1])


# --- tiling -------------------------------------------------------------------------------


class LocalConv(nn.Module):
    """A smooth, local stand-in model (receptive radius 2 px): maps from two 3×3 convs,
    direction/scale from the mean colour."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, image, gsd, city):
        y = self.c2(torch.tanh(self.c1(image)))
        m = image.mean(dim=(2, 3))
        direction = torch.stack([m[:, 0] + 0.2, m[:, 1] - 0.2], -1)
        return GeoposeOutput(y[:, :1], y[:, 1:], direction, 1.0 + m[:, 2])


def test_tile_layout_and_windows():
    assert tile_starts(100, 128, 32) == [0]
    for length, tile, overlap in [(300, 128, 32), (257, 64, 16), (1000, 256, 64)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] == length - tile
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
        total = np.zeros(length)
        for s, w in zip(starts, axis_weights(starts, tile, length, overlap // 4), strict=True):
            total[s : s + tile] += w
            assert w[0] == (1 if s == 0 else 0) and w[-1] == (1 if s + tile == length else 0)
        np.testing.assert_allclose(total, 1.0, atol=1e-12)  # a partition of unity


def test_tiled_matches_untiled_for_a_local_model():
    model = LocalConv()
    rng = np.random.default_rng(5)
    img = torch.from_numpy(rng.integers(0, 256, (3, 150, 200), dtype=np.uint8))
    fn = lambda x, g, c: predict_tta(model, x, g, c, "flip")  # noqa: E731
    with torch.inference_mode():
        whole = fn(img[None].float() / 255, torch.tensor([0.3]), None)
        tiled = predict_tiled(fn, img, 0.3, None, tile=64, overlap=24, tiles_per_call=3)
    assert tiled.agl.shape == (1, 1, 150, 200)
    # Zero weight within margin (6 px) of inner tile edges > receptive radius: exact match.
    torch.testing.assert_close(tiled.agl, whole.agl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled.mag, whole.mag, atol=1e-5, rtol=1e-5)
    # Image-level outputs: weighted means of the tiles' (close to the whole image's).
    assert angle_error_deg(angle_of(tiled.direction[0]), angle_of(whole.direction[0])) < 2
    assert float(tiled.scale) == pytest.approx(float(whole.scale), rel=0.05)


def test_predictor_tiles_large_images(model):
    """An image above tile_size goes through the model only in tiles of at most that size,
    covering it, and comes back whole."""
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, image, gsd, city):
            seen.append((image.shape[0], *image.shape[-2:]))  # (tiles, h, w)
            return self.inner(image, gsd, city)

    rgb = np.random.default_rng(6).integers(0, 256, (96, 136, 3), dtype=np.uint8)
    whole = Predictor([model], tta="none").predict(rgb, 0.5, 0)
    tiled = Predictor([Spy(model)], tta="none", tile_size=64).predict(rgb, 0.5, 0)
    assert tiled.agl.shape == whole.agl.shape == (96, 136)
    assert seen and max(max(h, w) for _, h, w in seen) <= 64
    assert sum(n * h * w for n, h, w in seen) >= 96 * 136  # the tiles cover the image
    assert np.isfinite(tiled.mag).all() and (tiled.agl >= 0).all()


def test_cuda_out_of_memory_falls_back_to_smaller_tiles(monkeypatch):
    """An OOM on the whole image retries in halved tiles (the loop only; no GPU needed)."""
    pred = Predictor([LocalConv()], tta="none", tile_size=0)
    tiles = []

    def run(img, gsd, city, tile):
        tiles.append(tile)
        if tile == 0 or tile > 300:
            raise torch.OutOfMemoryError("fake")
        z = torch.zeros(1, 1, *img.shape[-2:])
        return GeoposeOutput(z, z, torch.tensor([[0.0, 1.0]]), torch.ones(1))

    monkeypatch.setattr(pred, "_run", run)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    rgb = np.random.default_rng(7).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    with pytest.raises(torch.OutOfMemoryError):  # never retried on the CPU
        pred.predict(rgb, 0.3)
    monkeypatch.setattr(pred, "_device", torch.device("cuda"))  # the fallback reads it only
    out = pred.predict(rgb, 0.3)
    assert tiles[1:] == [0, 400, 256] and out.agl.shape == (600, 800)


# --- flow and ramps survive every step ---------------------------------------------------


def _gradient(agl: torch.Tensor) -> torch.Tensor:
    """∇AGL (d/dcol, d/drow) by central differences (as a ramp head's target), B×2×H×W."""
    gx = torch.zeros_like(agl)
    gy = torch.zeros_like(agl)
    gx[..., 1:-1] = (agl[..., 2:] - agl[..., :-2]) / 2
    gy[..., 1:-1, :] = (agl[..., 2:, :] - agl[..., :-2, :]) / 2
    return torch.cat([gx, gy], dim=1)


@pytest.mark.parametrize("k,t", D4)
def test_vector_maps_turn_with_the_image(k, t):
    """A gradient field of a moved height map is the moved gradient field: pixels moved and
    vectors turned by the direction rule; the inverse undoes it."""
    agl = torch.rand(2, 1, 6, 9, generator=torch.Generator().manual_seed(k + 4 * t))
    field = _gradient(agl)
    moved = d4_field(field, k, t)
    torch.testing.assert_close(moved, _gradient(d4_tensor(agl, k, t)), rtol=0, atol=0)
    torch.testing.assert_close(d4_field_inverse(moved, k, t), field, rtol=0, atol=0)


class FlowConv(LocalConv):
    """LocalConv with a dense flow and ramp field (its two map channels, mixed)."""

    def forward(self, image, gsd, city):
        out = super().forward(image, gsd, city)
        both = torch.cat([out.agl, out.mag], dim=1)
        return out._replace(flow=both, ramp=both.flip(1) * 0.5)


def test_runner_ensemble_tta_keep_flow_and_ramp():
    x = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(3))
    g = torch.tensor([0.3, 0.3])
    m1, m2 = FlowConv(), FlowConv()
    with torch.no_grad():
        m2.c2.bias += 1.0
        single = ModelRunner(m1)(x, g, None)
        assert single.flow.dtype == torch.float32 and single.ramp.shape == (2, 2, 16, 20)
        ens = Ensemble([m1, m2], weights=[3, 1])(x, g, None)
        want = (3 * m1(x, g, None).flow + m2(x, g, None).flow) / 4
        torch.testing.assert_close(ens.flow, want)
        tta = predict_tta(m1, x, g, None, "d4", max_batch=5)
    assert tta.flow.shape == tta.ramp.shape == (2, 2, 16, 20)


def test_d4_tta_flow_and_ramp_are_equivariant(model):
    """cpu_small has a ramp head: its D4-TTA ramp field moves and turns with the image."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    g, c = torch.tensor([0.4]), torch.tensor([1])
    with torch.inference_mode():
        base = predict_tta(model, x, g, c, "d4", 8)
        for k, t in ((1, False), (3, True)):
            moved = predict_tta(model, d4_tensor(x, k, t), g, c, "d4", 8)
            assert moved.ramp is not None
            want = d4_field(base.ramp, k, t)
            torch.testing.assert_close(moved.ramp, want, atol=1e-5, rtol=1e-4)


def test_tiled_blends_flow_and_ramp():
    model = FlowConv()
    img = torch.from_numpy(np.random.default_rng(8).integers(0, 256, (3, 150, 200), np.uint8))
    fn = lambda x, g, c: predict_tta(model, x, g, c, "flip")  # noqa: E731
    with torch.inference_mode():
        whole = fn(img[None].float() / 255, torch.tensor([0.3]), None)
        tiled = predict_tiled(fn, img, 0.3, None, tile=64, overlap=24, tiles_per_call=3)
    assert tiled.flow.shape == tiled.ramp.shape == (1, 2, 150, 200)
    torch.testing.assert_close(tiled.flow, whole.flow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled.ramp, whole.ramp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiled.agl, whole.agl, atol=1e-5, rtol=1e-5)
