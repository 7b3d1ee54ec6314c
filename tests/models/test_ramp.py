"""Facade ramps: direction and scale read off the height field by physics.

A ground point at height z is seen at ``p - z · scale · (sin a, cos a)``, so on every facade
``∇AGL · scale · (sin a, cos a) = -1``. Rendered synthetic scenes (exact AGL truth, walls
included) must give back the angle and scale they were rendered with; the ramp head, its loss
and its config are checked around that."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geopose.errors import ConfigError
from geopose.models import GeoposeLoss, create_model
from geopose.models.heads import agl_gradient, facade_mask, ramp_pose, ramp_target
from geopose.models.pose import PoseContext
from geopose.synth import make_scene, render
from geopose.types import GeoposeOutput

TINY_RAMP = {
    "encoder": "resnet18",
    "decoder": {"channels": [32, 16, 16], "output_stride": 4},
    "agl": {"channels": 8},
    "mag": None,
    "ramp": {"channels": 8},
    "direction": {"kind": "ramp"},
    "scale": {"kind": "ramp"},
}


def _angle_error_deg(a: float, b: float) -> float:
    d = abs(a - b) % (2 * math.pi)
    return math.degrees(min(d, 2 * math.pi - d))


def _fit(agl: np.ndarray) -> tuple[float, float]:
    z = torch.from_numpy(np.ascontiguousarray(agl, dtype=np.float32))[None, None]
    g = torch.nan_to_num(ramp_target(z), nan=0.0)
    direction, scale = ramp_pose(g)
    return math.atan2(float(direction[0, 0]), float(direction[0, 1])) % (2 * math.pi), float(
        scale[0]
    )


# ARG's pitched (gable, hip) roofs are ramps too, which biases the fit by ~12°.
@pytest.mark.parametrize(
    "city, seed, angle, scale, max_deg",
    [
        ("ARG", 1, 0.6, 0.8, 15.0),
        ("ATL", 2, 2.3, 0.95, 4.0),
        ("JAX", 3, 3.9, 0.72, 4.0),
        ("OMA", 4, 5.4, 1.0, 4.0),
        ("ATL", 5, 1.2, 0.7, 4.0),
    ],
)
def test_rendered_facades_give_back_the_angle_and_scale(city, seed, angle, scale, max_deg):
    scene = make_scene(city, 192, seed)
    r = render(scene, angle, scale, nadir=False)
    got_angle, got_scale = _fit(r.agl)
    assert _angle_error_deg(got_angle, angle) < max_deg
    assert abs(got_scale - scale) < 0.15 * scale
    # The sign matters: the same map seen the other way round (rotated 180°) flips the angle.
    got_rot, _ = _fit(np.rot90(r.agl, 2))
    assert _angle_error_deg(got_rot, angle + math.pi) < max_deg


def test_flat_ground_gives_no_flow_and_no_direction():
    """No ramps, no evidence: direction (0, 0), "unknown"
    (tests/inference/test_direction_fallback.py)."""
    direction, scale = ramp_pose(torch.zeros(2, 2, 16, 16))
    torch.testing.assert_close(direction, torch.zeros(2, 2))
    assert float(scale.max()) < 1e-3


def test_agl_gradient_units_and_nan():
    rows = torch.arange(6.0).reshape(1, 1, 6, 1).expand(1, 1, 6, 5)  # +1 m per row
    g = agl_gradient(rows * 2.0)
    torch.testing.assert_close(g[:, 0], torch.zeros(1, 6, 5))
    torch.testing.assert_close(g[:, 1], torch.full((1, 6, 5), 2.0))
    z = torch.zeros(1, 1, 5, 5)
    z[0, 0, 2, 2] = float("nan")
    t = ramp_target(z)
    assert torch.isnan(t[0, 0, 2, 1]) and torch.isnan(t[0, 1, 1, 2]) and t[0, 0, 0, 0] == 0
    # A height jump is not a ramp: 20 m in one pixel is steeper than max_slope.
    step = torch.zeros(1, 1, 4, 8)
    step[..., 4:] = 20.0
    assert float(ramp_target(step).abs().max()) == 0.0


def test_ramp_model_outputs_loss_and_gradients():
    model = create_model(TINY_RAMP)
    image, gsd, city = torch.rand(2, 3, 64, 64), torch.tensor([0.3, 0.4]), torch.tensor([0, 2])
    out = model(image, gsd, city)
    assert out.ramp.shape == (2, 2, 64, 64) and out.flow is None
    norm = out.direction.norm(dim=1)  # unit, or 0 where the untrained head has no ramps
    assert bool(((norm - 1).abs() < 1e-5).logical_or(norm == 0).all()), norm
    torch.testing.assert_close(out.mag, out.agl * out.scale[:, None, None, None])
    agl = torch.rand(2, 1, 64, 64) * 10
    agl[:, :, :4] = float("nan")
    loss = GeoposeLoss({"ramp": {"weight": 5.0}, "mag": None, "scale": None, "direction": None})
    batch = {"agl": agl}
    total, parts = loss(out, batch)
    assert set(parts) == {"agl", "ramp"} and torch.isfinite(total)
    total.backward()
    assert model.ramp_head.body[-1].weight.grad.abs().sum() > 0
    # A perfect ramp prediction has zero ramp loss (NaN truth ignored).
    perfect = out._replace(ramp=ramp_target(agl))
    _, parts = loss(perfect, batch)
    assert float(parts["ramp"]) == 0.0


def test_ramp_config_errors():
    with pytest.raises(ConfigError, match="ramp head"):
        create_model({**TINY_RAMP, "ramp": None})
    no_head = {
        **TINY_RAMP,
        "ramp": None,
        "direction": {"kind": "pooled"},
        "scale": {"kind": "lstsq"},
    }
    model = create_model({**no_head, "mag": {"channels": 8}}).eval()
    out = model(torch.rand(1, 3, 64, 64), torch.tensor([0.3]))
    with pytest.raises(ConfigError, match="ramp head"):
        loss = GeoposeLoss({"ramp": {"weight": 1.0}, "mag": None, "direction": None, "scale": None})
        loss(out, {"agl": torch.zeros(1, 1, 64, 64)})


@pytest.mark.parametrize(
    "ramp, message",
    [
        ({"min_slope": 3.0, "max_slope": 1.0}, "min_slope < max_slope"),
        ({"min_slope": -0.1}, r"model\.ramp\.min_slope: -0\.1 is below the minimum 0"),
        ({"huber": 0.0}, r"model\.ramp\.huber: 0\.0 must be > 0"),
        ({"iterations": 0}, r"model\.ramp\.iterations: 0 is below the minimum 1"),
    ],
)
def test_bad_ramp_fit_settings_are_config_errors(ramp, message):
    with pytest.raises(ConfigError, match=message):
        create_model({**TINY_RAMP, "ramp": {"channels": 8, **ramp}})
    with pytest.raises(ConfigError, match=r"loss\.ramp\.max_slope: 0\.0 must be > 0"):
        GeoposeLoss({"ramp": {"weight": 1.0, "max_slope": 0.0}})


def _flow(angle: float, scale: float) -> torch.Tensor:
    return torch.tensor([[scale * math.sin(angle), scale * math.cos(angle)]])


@pytest.mark.parametrize(
    "city, seed, angle, scale", [("ARG", 1, 0.6, 0.8), ("ATL", 2, 2.3, 0.95), ("OMA", 4, 5.4, 1.0)]
)
def test_facade_mask_finds_the_rendered_walls_and_unbiases_the_fit(city, seed, angle, scale):
    """Under the true pose the pixels that obey the facade equation are nearly all walls (the
    renderer's facade mask), where half the sloped pixels are crowns, pitched roofs and edges;
    the fit weighted by the mask reads the angle to 4° (ARG's pitched roofs bias the unweighted
    fit by ~12°); a wrong pose finds few facades; an unknown pose gives NaN (no truth)."""
    r = render(make_scene(city, 192, seed), angle, scale, nadir=False)
    z = torch.from_numpy(r.agl)[None, None]
    g = torch.nan_to_num(ramp_target(z))
    sloped = ((g.norm(dim=1)[0] >= 0.3) & (g.norm(dim=1)[0] <= 3.0)).numpy()
    mask = facade_mask(z, _flow(angle, scale))
    on = (mask[0, 0] == 1).numpy()
    assert r.facade[on].mean() > 0.85 > 0.6 > r.facade[sloped].mean()
    assert on.sum() > 0.5 * (sloped & r.facade).sum()  # most walls are found
    direction, _ = ramp_pose(g, weights=torch.nan_to_num(mask))
    got = math.atan2(float(direction[0, 0]), float(direction[0, 1]))
    assert _angle_error_deg(got, angle) < 4.0
    wrong = facade_mask(z, _flow(angle + math.pi / 2, scale))
    assert float(torch.nan_to_num(wrong).sum()) < 0.5 * on.sum()
    assert bool(torch.isnan(facade_mask(z, torch.full((1, 2), float("nan")))).all())


def test_facade_head_weighs_the_ramp_fit_and_learns_from_the_true_facades():
    cfg = {**TINY_RAMP, "facade": {"channels": 8}}
    model = create_model(cfg).eval()
    image, gsd = torch.rand(2, 3, 64, 64), torch.tensor([0.3, 0.3])
    out = model(image, gsd)
    assert out.facade.shape == (2, 1, 64, 64)
    agl = torch.from_numpy(render(make_scene("OMA", 64, 3), 1.0, 0.9, nadir=False).agl)
    batch = {
        "agl": agl[None, None].repeat(2, 1, 1, 1),
        "direction": torch.tensor([[math.sin(1.0), math.cos(1.0)]] * 2),
        "scale": torch.tensor([0.9, 0.9]),
    }
    loss = GeoposeLoss({"facade": {"weight": 1.0}, "mag": None, "scale": None, "direction": None})
    truth = facade_mask(batch["agl"], 0.9 * batch["direction"])
    _, right = loss(out._replace(facade=(truth * 2 - 1) * 30), batch)
    _, wrong = loss(out._replace(facade=(1 - truth * 2) * 30), batch)
    assert float(right["facade"]) < 1e-6 < 10.0 < float(wrong["facade"])
    model.train()
    total, _ = loss(model(image, gsd), batch)
    total.backward()
    assert model.facade_head.body[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="model.facade .*ramp head"):
        create_model(
            {**cfg, "ramp": None, "direction": {"kind": "pooled"}, "scale": {"kind": "regress"}}
        )
    with pytest.raises(ConfigError, match="facade head"):
        loss(out._replace(facade=None), batch)


class _Fixed(torch.nn.Module):
    """A dense head whose map (B×C×H×W) is given, whatever the decoder shows it."""

    uses_gsd = False

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, dec, gsd=None, city=None) -> torch.Tensor:
        return self.out


def _facade_ramps(angle: float, scale: float, rows: int, cols: int) -> torch.Tensor:
    """2×rows×cols height gradients (m/px, (d/dcol, d/drow)) of walls of two orientations, every
    one a facade of the pose (angle rad, scale px/m): ``∇z · scale·(sin a, cos a) = -1``."""
    u = torch.tensor([math.sin(angle), math.cos(angle)])
    across = torch.tensor([math.cos(angle), -math.sin(angle)])  # ⟂ u: free along the wall
    g = torch.stack([-u / scale + 0.5 * across, -u / scale - 0.5 * across])  # 2 walls × 2
    return g[torch.arange(rows) % 2].T[:, :, None].expand(2, rows, cols)


def test_the_facade_head_decides_whose_facades_the_fit_reads():
    """The model weighs each pixel of its ramp fit by the facade head's probability. An image
    whose left half holds the facades of one pose and right half those of another: facade
    logits that keep one half give that half's direction and scale (px/m), where the fit over
    every sloped pixel (no facade head) gives neither."""
    poses = [(0.6, 0.8), (2.5, 1.0)]  # (angle rad, scale px/m): left half, right half
    ramp = torch.cat([_facade_ramps(a, s, 64, 32) for a, s in poses], dim=2)
    model = create_model({**TINY_RAMP, "facade": {"channels": 8}}).eval()
    model.ramp_head = _Fixed(ramp.expand(2, -1, -1, -1))
    image, gsd = torch.rand(2, 3, 64, 64), torch.tensor([0.3, 0.3])
    for half, (angle, scale) in enumerate(poses):
        logits = torch.full((2, 1, 64, 64), -20.0)
        logits[..., 32 * half : 32 * (half + 1)] = 20.0
        model.facade_head = _Fixed(logits)
        with torch.no_grad():
            out = model(image, gsd)
        want = torch.tensor([[math.sin(angle), math.cos(angle)]] * 2)
        torch.testing.assert_close(out.direction, want, atol=1e-3, rtol=0)
        torch.testing.assert_close(out.scale, torch.full((2,), scale), atol=0, rtol=1e-3)
    model.facade_head = None
    with torch.no_grad():
        mixed = model(image, gsd).direction[0]
    got = math.atan2(float(mixed[0]), float(mixed[1]))
    assert min(_angle_error_deg(got, a) for a, _ in poses) > 10.0


def test_facade_power_trusts_the_surest_pixels_more():
    """A facade head that is sure of the walls (0.9) and unsure of everything else sloped (0.5):
    ARG's pitched roofs bias the fit at power 1; squaring the probabilities (0.81 vs 0.25)
    halves the others' share and the angle comes closer; power 1 is the plain weighting."""
    angle, scale = 0.6, 0.8
    r = render(make_scene("ARG", 192, 1), angle, scale, nadir=False)
    z = torch.from_numpy(r.agl)[None, None]
    g = torch.nan_to_num(ramp_target(z))
    walls = torch.nan_to_num(facade_mask(z, _flow(angle, scale)))
    p = 0.5 + 0.4 * walls
    errors = {}
    for power in (1.0, 2.0, 4.0):
        direction, _ = ramp_pose(g, weights=p, facade_power=power)
        errors[power] = _angle_error_deg(math.atan2(*direction[0].tolist()), angle)
    plain, _ = ramp_pose(g, weights=p)
    assert _angle_error_deg(math.atan2(*plain[0].tolist()), angle) == pytest.approx(errors[1.0])
    assert errors[4.0] < errors[2.0] < errors[1.0]
    assert errors[1.0] - errors[4.0] > 1.0  # degrees: a visible gain, not rounding
    model = create_model({**TINY_RAMP, "facade": {"channels": 8}, "ramp": {"facade_power": 2}})
    assert model._fits["ramp_fit"]["facade_power"] == 2.0


def test_ramp_pooled_starts_as_the_ramps_and_learns_a_city_correction():
    """``ramp_pooled`` begins exactly at the ramp fit's direction; trained by the direction
    loss alone it moves each city to its own true direction (the pass the facades left in
    doubt), while no gradient reaches the ramp map through it."""
    cfg = {
        **TINY_RAMP,
        "direction": {"kind": "ramp_pooled", "city": True, "hidden": 16},
        "scale": {"kind": "regress", "hidden": 8},
    }
    torch.manual_seed(0)
    model = create_model(cfg).train()
    image, gsd, city = torch.rand(2, 3, 64, 64), torch.tensor([0.3, 0.3]), torch.tensor([0, 1])
    out = model(image, gsd, city)
    ramp_only = create_model({**cfg, "direction": {"kind": "ramp"}})
    ramp_only.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(out.direction, ramp_only.train()(image, gsd, city).direction)
    ramp = out.ramp.detach().requires_grad_(True)
    # Through the head: the direction depends on the ramp map only via the detached fit.
    ctx = PoseContext(
        feats=model.encoder(image),
        dec=None,
        pad_hw=(64, 64),
        gsd=gsd,
        city=city,
        agl=out.agl.detach(),
        ramp=ramp,
    )
    model.direction_head(ctx).sum().backward()
    assert ramp.grad is None or float(ramp.grad.abs().sum()) == 0.0
    true = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # city 0 east, city 1 south
    loss = GeoposeLoss({"direction": {"weight": 1.0}, "agl": None, "mag": None, "scale": None})
    opt = torch.optim.Adam(model.direction_head.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        total, _ = loss(model(image, gsd, city), {"direction": true})
        total.backward()
        opt.step()
    cos = (model(image, gsd, city).direction * true).sum(dim=1)
    assert bool((cos > 0.95).all()), cos


def test_ramp_pooled_without_ramps_trains_with_finite_gradients():
    """An untrained model on a flat image: no sloped pixels, so no ramp direction, and a zero
    correction; the direction is (0, 0), "unknown", and the direction loss's gradients stay
    bounded (a unit vector of a zero sum would have a normalisation gradient of 1/|v|, which
    made the tiny demo's first step diverge)."""
    cfg = {
        **TINY_RAMP,
        "direction": {"kind": "ramp_pooled", "city": True, "hidden": 16},
        "scale": {"kind": "regress", "hidden": 8},
    }
    torch.manual_seed(0)
    model = create_model(cfg).train()
    with torch.no_grad():
        model.ramp_head.body[-1].weight.zero_()
        model.ramp_head.body[-1].bias.zero_()
    image, gsd, city = (
        torch.full((2, 3, 64, 64), 0.5),
        torch.tensor([0.3, 0.3]),
        torch.tensor([0, 1]),
    )
    out = model(image, gsd, city)
    assert out.direction.abs().max() == 0.0
    loss = GeoposeLoss({"direction": {"weight": 10.0}, "agl": None, "mag": None, "scale": None})
    total, _ = loss(out, {"direction": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
    assert math.isfinite(norm) and norm < 1e4, norm  # 1/|v| at v = 0 would be ~1e12 per element


@pytest.mark.parametrize("ramp_input", [True, False])
def test_ramp_pooled_with_the_fit_as_input_learns_a_bias_per_pass(ramp_input):
    """One city, three passes whose facades the fit reads off by the biases a demo's model had
    on Argentina's passes (-24°, +17°, -13°; BENCHMARKS.md), on images whose pooled
    features tell nothing: the correction can undo the three biases only when the fit's
    direction is one of its inputs (``ramp_input``); without it one vector is added to all
    three (which can undo any two biases, not three)."""
    cfg = {
        **TINY_RAMP,
        "direction": {"kind": "ramp_pooled", "city": True, "hidden": 32, "ramp_input": ramp_input},
        "scale": {"kind": "regress", "hidden": 8},
    }
    torch.manual_seed(0)
    head = create_model(cfg).direction_head
    true_deg, fit_deg = torch.tensor([35.0, 165.0, 250.0]), torch.tensor([11.0, 182.0, 237.0])

    def vec(deg: torch.Tensor) -> torch.Tensor:
        r = torch.deg2rad(deg)
        return torch.stack([torch.sin(r), torch.cos(r)], dim=1)

    feats = [torch.zeros(3, 512, 2, 2)]  # the pooled features tell nothing
    ctx_args = {"dec": None, "pad_hw": (64, 64), "gsd": torch.full((3,), 0.3)}
    ctx_args.update(city=torch.zeros(3, dtype=torch.long), agl=torch.zeros(3, 1, 64, 64))

    def direction() -> torch.Tensor:
        ctx = PoseContext(feats=feats, **ctx_args)
        ctx._fits["ramp"] = (vec(fit_deg), torch.ones(3))
        return head(ctx)

    loss = GeoposeLoss({"direction": {"weight": 1.0}, "agl": None, "mag": None, "scale": None})
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        out = GeoposeOutput(None, None, direction(), None)
        loss(out, {"direction": vec(true_deg)})[0].backward()
        opt.step()
    d = direction().detach()
    errors = [
        _angle_error_deg(math.atan2(*d[i].tolist()), math.radians(true_deg[i])) for i in range(3)
    ]
    if ramp_input:
        assert max(errors) < 2.0, errors
    else:
        assert max(errors) > 10.0, errors


@pytest.mark.parametrize("fit_grad", [True, False])
def test_ramp_pooled_passes_the_direction_loss_to_the_ramps_only_with_fit_grad(fit_grad):
    """Two walls of a 30° view: the fit's direction is the truth's turned by nothing, a loss
    against a 60° truth moves the ramp map (the ramp head's output) only with ``fit_grad``."""
    cfg = {
        **TINY_RAMP,
        "direction": {"kind": "ramp_pooled", "city": True, "hidden": 8, "fit_grad": fit_grad},
        "scale": {"kind": "regress", "hidden": 8},
    }
    head = create_model(cfg).direction_head
    a = math.radians(30.0)
    v = 0.8 * torch.tensor([math.sin(a), math.cos(a)])
    along = -v / float(v @ v)  # ∇z · v = -1 on both walls
    across = torch.tensor([-v[1], v[0]]) * 0.5
    ramp = torch.zeros(1, 2, 8, 8)
    ramp[0, :, :4] = along[:, None, None]
    ramp[0, :, 4:] = (along + across)[:, None, None]
    ramp.requires_grad_(True)
    ctx = PoseContext(
        feats=[torch.zeros(1, 512, 2, 2)],
        dec=None,
        pad_hw=(8, 8),
        gsd=torch.full((1,), 0.3),
        city=torch.zeros(1, dtype=torch.long),
        agl=torch.zeros(1, 1, 8, 8),
        ramp=ramp,
    )
    d = head(ctx)
    assert abs(math.degrees(math.atan2(*d[0].tolist())) - 30.0) < 0.5
    loss = GeoposeLoss({"direction": {"weight": 1.0}, "agl": None, "mag": None, "scale": None})
    b = math.radians(60.0)
    loss(
        GeoposeOutput(None, None, d, None),
        {"direction": torch.tensor([[math.sin(b), math.cos(b)]])},
    )[0].backward()
    moved = ramp.grad is not None and float(ramp.grad.abs().max()) > 1e-6
    assert moved == fit_grad
