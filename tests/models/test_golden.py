"""Forward preservation: every recipe's model and every pose-head kind give the golden outputs
of tests/fixtures/golden on the golden image, and a checkpoint in an older layout
(legacy_cpu_small.ckpt) still loads and predicts the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import golden
from zoo_fixtures import RTOL, assert_close


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(golden.VARIANTS))
def test_model_outputs_equal_the_golden_ones(name):
    got, ref = golden.run(golden.build(name)), golden.load(name)
    assert sorted(got) == sorted(ref), "the model's outputs (fields) changed"
    for field, want in ref.items():
        assert got[field].shape == want.shape, field
        assert_close(got[field], want, f"{name}.{field}", rtol=RTOL, atol=1e-6)


def test_every_recipe_has_a_golden_output():
    from geopose.models import list_recipes

    assert set(list_recipes()) <= set(golden.VARIANTS)


def test_the_comparison_tells_other_weights_apart():
    """Weights filled with another salt do not pass as golden: the tolerance discriminates."""
    model = golden.fill(golden.build("cpu_small"), salt="other")
    got, ref = golden.run(model), golden.load("cpu_small")
    with pytest.raises(AssertionError):
        assert_close(got["agl"], ref["agl"], "agl", rtol=RTOL)


def test_a_checkpoint_in_an_older_layout_predicts_the_same():
    from geopose.inference import Predictor
    from geopose.models import load_checkpoint

    path = golden.GOLDEN / "legacy_cpu_small.ckpt"
    model, config = load_checkpoint(path)
    assert config["model"]["encoder"] == "test_efficientnet"
    predictor, _ = Predictor.from_checkpoints([(path, 1.0)], tta="none", device="cpu")
    p = predictor.predict(golden.golden_image(), golden.GSD, golden.CITY)
    with np.load(golden.GOLDEN / "legacy_cpu_small.npz") as ref:
        assert_close(p.agl, ref["agl"], "agl", atol=1e-6)
        assert_close(p.mag, ref["mag"], "mag", atol=1e-6)
        assert abs(math.remainder(p.angle - float(ref["angle"]), math.tau)) < 1e-4
        assert p.scale == pytest.approx(float(ref["scale"]), rel=RTOL)
    assert p.direction_known and p.scale > 0 and p.agl.max() > 0  # a real pose to compare
