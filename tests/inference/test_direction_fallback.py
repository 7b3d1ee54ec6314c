"""No evidence of the flow direction (a ramp fit that finds no sloped pixels: an untrained
model, flat farmland, water, cloud): the direction is "unknown" (a zero vector), the written
flow is zero (scale 0, angle 0 as a label), exactly D4-equivariant, and counted per run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from geopose.cli.main import main
from geopose.geometry import D4, d4_image, flow_from_agl
from geopose.inference import Predictor
from geopose.inference.jobs import ImageJob, predict_jobs
from geopose.inference.tta import d4_direction
from geopose.io import read_vflow, write_rgb
from geopose.models import GeoposeOutput, create_model, load_recipe
from geopose.models.heads import flow_pose, ramp_pose


@pytest.fixture(scope="module")
def blind_model() -> nn.Module:
    """cpu_small (ramp direction, regressed scale) whose ramp head outputs 0 everywhere."""
    torch.manual_seed(0)
    model = create_model("cpu_small").eval()
    last = model.ramp_head.body[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return model


def test_pose_fits_without_evidence_give_no_direction():
    direction, scale = ramp_pose(torch.zeros(2, 2, 16, 16))
    torch.testing.assert_close(direction, torch.zeros(2, 2))
    assert float(scale.max()) < 1e-3
    direction, scale, mag = flow_pose(torch.zeros(1, 2, 8, 8), torch.zeros(1, 1, 8, 8))
    torch.testing.assert_close(direction, torch.zeros(1, 2))
    torch.testing.assert_close(mag, torch.zeros(1, 1, 8, 8))
    # One sloped pixel is evidence: a unit direction, gradients stay finite.
    ramp = torch.zeros(1, 2, 8, 8, requires_grad=True)
    g = ramp.detach().clone()
    g[0, 1, 4, 4] = -1.0  # height falls 1 m per row downwards: v = (0, 1) px/m
    direction, _ = ramp_pose(g)
    torch.testing.assert_close(direction, torch.tensor([[0.0, 1.0]]), atol=1e-4, rtol=0)
    ramp_pose(ramp)[0].sum().backward()
    assert torch.isfinite(ramp.grad).all()


def _flow(p) -> np.ndarray:
    return flow_from_agl(p.agl, p.angle, p.scale)


def _moved_flow(flow: np.ndarray, k: int, t: bool) -> np.ndarray:
    """A flow field (H, W, 2) after the D4 element: pixels moved, vectors turned."""
    moved = np.ascontiguousarray(d4_image(flow, k, t))
    return d4_direction(torch.from_numpy(moved), k, t).numpy()


@pytest.mark.parametrize("shrink", [False, True])
def test_no_evidence_d4_prediction_is_exactly_equivariant(blind_model, shrink):
    rgb = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pred = Predictor([blind_model], tta="d4", max_batch=8, shrink_scale=shrink)
    base = pred.predict(rgb, 0.5, 1)
    assert base.direction_known is False
    assert base.scale == 0.0 and 0.0 <= base.angle < 2 * math.pi
    for k, t in D4:
        p = pred.predict(np.ascontiguousarray(d4_image(rgb, k, t)), 0.5, 1)
        np.testing.assert_allclose(p.agl, d4_image(base.agl, k, t), atol=1e-5)
        np.testing.assert_allclose(p.mag, d4_image(base.mag, k, t), atol=1e-5)
        np.testing.assert_allclose(_flow(p), _moved_flow(_flow(base), k, t), atol=1e-5)
        assert p.direction_known is False and p.scale == base.scale


@pytest.mark.parametrize("tta", ["none", "flip", "d2"])
def test_no_evidence_is_zero_flow_with_any_tta(blind_model, tta):
    """Fewer views must not turn "unknown" into a confident angle 0 with the full scale."""
    rgb = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = Predictor([blind_model], tta=tta).predict(rgb, 0.5, 1)
    assert p.direction_known is False and p.scale == 0.0
    assert float(np.abs(p.mag).max()) == 0.0


class Spotty(nn.Module):
    """Stand-in model: direction (1, 0) (angle π/2) on bright images, none on dark ones."""

    def forward(self, image, gsd, city):
        b, _, h, w = image.shape
        agl = torch.full((b, 1, h, w), 5.0)
        bright = (image.mean(dim=(1, 2, 3)) > 0.5).float()[:, None]
        direction = bright * torch.tensor([[1.0, 0.0]])
        scale = torch.full((b,), 2.0)
        return GeoposeOutput(agl, agl * scale[:, None, None, None], direction, scale)


def test_run_summary_lists_images_without_direction(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    jobs = []
    for stem, value in (("bright", 220), ("dark", 30)):
        path = write_rgb(images / f"{stem}.png", np.full((32, 32, 3), value, np.uint8))
        jobs.append(ImageJob(path, stem, 0.5, -1))
    summary = predict_jobs(Predictor([Spotty()], tta="none"), jobs, tmp_path / "out")
    assert summary.written == ["bright", "dark"]
    assert summary.no_direction == ["dark"]
    bright, dark = (read_vflow(tmp_path / "out" / f"{s}_VFLOW.json") for s in ("bright", "dark"))
    # The bright image keeps its direction and scale ...
    assert bright.scale == pytest.approx(2.0) and bright.angle == pytest.approx(math.pi / 2)
    # ... the dark one gets zero flow with an angle in [0, 2π).
    assert dark.scale == 0.0 and 0.0 <= dark.angle < 2 * math.pi


def test_predict_command_counts_images_without_direction(tmp_path, blind_model, capsys):
    ckpt = tmp_path / "blind.ckpt"
    state = {f"model.{k}": v for k, v in blind_model.state_dict().items()}
    torch.save(
        {"hyper_parameters": {"config": load_recipe("cpu_small")}, "state_dict": state}, ckpt
    )
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        rgb = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        write_rgb(images / f"tile{i}.png", rgb)
    out = tmp_path / "out"
    try:
        main(["predict", str(ckpt), "--images", str(images), "--out", str(out), "--gsd", "0.5"])
    except SystemExit as exc:
        assert not exc.code
    text = capsys.readouterr().out
    assert "2 image(s) with no evidence of the flow direction" in text
    assert read_vflow(out / "tile0_VFLOW.json").scale == 0.0
