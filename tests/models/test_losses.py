"""Losses: NaN truth pixels change neither loss nor gradient; R2, Huber, trimming and the
direction loss give the hand-computed numbers; GeoposeLoss weights and reads its config."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import r2_score

from geopose.errors import ConfigError
from geopose.models import GeoposeLoss, GeoposeOutput, direction_loss, masked_loss, r2_loss

NAN = float("nan")


def _pred_truth(seed: int = 0, shape=(2, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    true = torch.rand(shape, generator=g) * 10
    true[0, 0, :3, :] = NAN
    true[1, 0, 5, 5] = NAN
    pred = torch.rand(shape, generator=g) * 10
    return pred, true


CASES = [
    {"kind": "mse"},
    {"kind": "huber", "delta": 2.0},
    {"kind": "l1"},
    {"kind": "r2"},
    {"kind": "mse", "trim": 0.2},
    {"kind": "r2", "trim": 0.1},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_nan_truth_pixels_change_neither_loss_nor_gradient(case):
    pred, true = _pred_truth()
    nan = torch.isnan(true)
    other = torch.where(nan, pred * 7 - 100, pred)  # wildly different where the truth is NaN
    a, b = pred.clone().requires_grad_(), other.clone().requires_grad_()
    la, lb = masked_loss(a, true, **case), masked_loss(b, true, **case)
    la.backward()
    lb.backward()
    assert torch.isfinite(la)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[nan] == 0).all() and torch.isfinite(a.grad).all()
    assert a.grad[~nan].abs().sum() > 0


def test_mse_and_huber_values_by_hand():
    pred = torch.tensor([0.0, 1.0, 5.0, 9.0])
    true = torch.tensor([0.0, 3.0, 5.0, NAN])
    assert masked_loss(pred, true, "mse").item() == pytest.approx(4.0 / 3)
    # Huber, delta 1: |r| = 2 -> 1 · (2 - 0.5) = 1.5; others 0.
    assert masked_loss(pred, true, "huber", delta=1.0).item() == pytest.approx(1.5 / 3)
    # delta 10: quadratic 0.5 · r² = 2.
    assert masked_loss(pred, true, "huber", delta=10.0).item() == pytest.approx(2.0 / 3)


def test_r2_loss_is_one_minus_pooled_r2_by_hand():
    true = torch.tensor([[1.0, 2.0, NAN], [3.0, 6.0, NAN]])
    pred = torch.tensor([[1.0, 3.0, 50.0], [3.0, 4.0, -7.0]])
    # SSE = 0 + 1 + 0 + 4 = 5; mean = 3; SST = 4 + 1 + 0 + 9 = 14.
    assert r2_loss(pred, true).item() == pytest.approx(5 / 14)
    assert masked_loss(pred, true, "r2").item() == pytest.approx(5 / 14)
    ok = ~torch.isnan(true)
    assert r2_loss(pred, true).item() == pytest.approx(1 - r2_score(true[ok], pred[ok]))


def test_trimmed_loss_drops_the_worst_fraction():
    true = torch.zeros(12)
    true[10:] = NAN  # not counted: 10 valid values
    pred = torch.tensor([0.1 * (i + 1) for i in range(10)] + [99.0, 99.0], requires_grad=True)
    loss = masked_loss(pred, true, "mse", trim=0.2)  # drops residuals 0.9 and 1.0
    expected = sum((0.1 * (i + 1)) ** 2 for i in range(8)) / 8
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert (pred.grad[8:] == 0).all() and (pred.grad[:8] > 0).all()
    # Ties at the threshold do not keep more than the kept fraction.
    tied = masked_loss(torch.ones(10), torch.zeros(10), "l1", trim=0.5)
    assert tied.item() == pytest.approx(1.0)


def test_direction_loss_cosine_plus_tenth_mse():
    t = torch.tensor([[0.0, 1.0]])
    assert direction_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # Orthogonal: 1 - cos = 1; MSE over the two components = (1 + 1) / 2 = 1.
    assert direction_loss(torch.tensor([[1.0, 0.0]]), t).item() == pytest.approx(1.1)
    # Opposite: 1 - cos = 2; MSE = (0 + 4) / 2 = 2.
    assert direction_loss(torch.tensor([[0.0, -1.0]]), t).item() == pytest.approx(2.2)
    # A row with unknown truth is ignored.
    both = direction_loss(
        torch.tensor([[1.0, 0.0], [5.0, 5.0]]), torch.tensor([[0.0, 1.0], [NAN, NAN]])
    )
    assert both.item() == pytest.approx(1.1)


def _output_and_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, h, w = 2, 8, 8
    agl = torch.rand(b, 1, h, w, generator=g) * 10
    agl[0, 0, 0, :] = NAN
    angle = torch.tensor([0.5, 2.0])
    direction = torch.stack([torch.sin(angle), torch.cos(angle)], 1)
    scale = torch.tensor([1.0, 2.0])
    batch = {
        "agl": agl,
        "mag": agl * scale[:, None, None, None],
        "direction": direction,
        "scale": scale,
    }
    p_agl = (torch.rand(b, 1, h, w, generator=g) * 10).requires_grad_()
    p_mag = (torch.rand(b, 1, h, w, generator=g) * 10).requires_grad_()
    p_dir = torch.nn.functional.normalize(torch.randn(b, 2, generator=g), dim=1).requires_grad_()
    p_scale = torch.tensor([1.2, 1.5], requires_grad=True)
    return GeoposeOutput(p_agl, p_mag, p_dir, p_scale), batch


def test_geopose_loss_is_the_weighted_sum_of_its_parts():
    out, batch = _output_and_batch()
    cfg = {
        "agl": {"kind": "huber", "delta": 10.0, "weight": 2.0},
        "mag": {"kind": "huber", "delta": 5.0, "weight": 0.5},
        "direction": {"weight": 3.0},
        "scale": {"kind": "mse", "weight": 0.25},
        "vflow": {"kind": "r2", "weight": 1.0},
    }
    total, parts = GeoposeLoss(cfg)(out, batch)
    assert set(parts) == {"agl", "mag", "direction", "scale", "vflow"}
    expected = (
        2 * parts["agl"]
        + 0.5 * parts["mag"]
        + 3 * parts["direction"]
        + 0.25 * parts["scale"]
        + parts["vflow"]
    )
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["scale"], ((out.scale - batch["scale"]) ** 2).mean())
    total.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in out[:4])


def test_geopose_loss_vflow_is_zero_for_the_true_pose():
    out, batch = _output_and_batch()
    truth = GeoposeOutput(
        torch.nan_to_num(batch["agl"]), batch["mag"], batch["direction"], batch["scale"]
    )
    _, parts = GeoposeLoss(
        {"vflow": {"kind": "r2", "weight": 1.0}, "flow": {"kind": "mse", "weight": 1.0}}
    )(truth, batch)
    assert parts["vflow"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["flow"].item() == pytest.approx(0.0, abs=1e-6)


def test_geopose_loss_skips_null_and_zero_weight_targets_and_rejects_unknown_keys():
    out, batch = _output_and_batch()
    _, parts = GeoposeLoss({"mag": None, "scale": {"weight": 0.0}})(out, batch)
    assert set(parts) == {"agl", "direction"}
    with pytest.raises(ConfigError, match="height"):
        GeoposeLoss({"height": {}})
    with pytest.raises(ConfigError, match="kind"):
        GeoposeLoss({"agl": {"kind": "cubic"}})
    with pytest.raises(ConfigError, match="trim"):
        GeoposeLoss({"agl": {"trim": 1.5}})


def test_r2_loss_matches_the_score_for_a_constant_offset():
    true = torch.arange(10.0)
    pred = true + 1.0
    # SSE = 10, SST = Σ (i - 4.5)² = 82.5
    assert r2_loss(pred, true).item() == pytest.approx(10 / 82.5)
    assert math.isfinite(r2_loss(torch.zeros(3), torch.full((3,), NAN)).item())
