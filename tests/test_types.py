"""geopose.types: the types that cross layers and their one-rule helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geopose import types as T


def test_city_index_one_rule():
    assert [T.city_index(c) for c in T.CITIES] == [0, 1, 2, 3]
    assert T.city_index(2) == 2 and T.city_index(np.int64(3)) == 3
    for unknown in (None, "XYZ", "jax", -1, 4, np.int32(7), float("nan"), True):
        assert T.city_index(unknown) == -1, unknown


def test_cities_are_read_in_one_order():
    """The city codes the io layer reads are those of city_index, in its order."""
    from geopose.io import CITIES as io_cities
    from geopose.io.layout import CITIES as layout_cities

    for cities in (io_cities, layout_cities):
        assert [T.city_index(c) for c in cities] == list(range(len(T.CITIES)))


def test_unit_vector_rule():
    v = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-14, 0.0], [0.0, -2.0]], dtype=torch.float64)
    u = T.unit_vector(v)
    torch.testing.assert_close(u[0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    assert u[1].tolist() == [0.0, 0.0]  # zero: no direction, stays zero
    assert float(u[2].norm()) < 1e-1  # zero up to rounding: stays short, still "unknown"
    assert u[3].tolist() == [0.0, -1.0]
    assert [T.direction_known(d) for d in u] == [True, False, False, True]
    # Along another axis (a B×2×H×W field), and with a head's fallback for zero.
    field = torch.zeros(1, 2, 3, 3)
    field[0, 0, 1, 1] = 5.0
    out = T.unit_vector(field, dim=1)
    assert out[0, :, 1, 1].tolist() == [1.0, 0.0] and out[0, :, 0, 0].tolist() == [0.0, 0.0]
    fb = T.unit_vector(torch.zeros(2, 2), dim=1, fallback=(0.0, 1.0))
    assert fb.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_unit_vector_has_finite_gradients_at_zero():
    v = torch.zeros(2, 2, requires_grad=True)
    T.unit_vector(v).sum().backward()
    assert torch.isfinite(v.grad).all()


def test_direction_known_reads_nan_and_tensors():
    assert not T.direction_known([float("nan"), 0.0])
    assert T.direction_known(torch.tensor([0.0, 1.0]))
    assert not T.direction_known(np.zeros(2))


def test_image_to_unit_is_the_same_in_numpy_and_torch():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    a = T.image_to_unit(x)
    b = T.image_to_unit(torch.from_numpy(x)).numpy()
    assert a.dtype == np.float32 and b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, x.astype(np.float32) / np.float32(255))
    assert a.min() == 0.0 and a.max() == 1.0
    f = torch.rand(3, 4)
    assert T.image_to_unit(f) is f  # already in [0, 1]
    t = torch.from_numpy(x)
    T.image_to_unit(t)
    assert t.dtype == torch.uint8  # the input is not changed


def test_window_pads_outside():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(T.window(arr, 1, 1, 2, 2, -1), [[5, 6], [9, 10]])
    out = T.window(arr, -1, 3, 2, 2, np.nan)
    assert np.isnan(out[0]).all() and out[1, 0] == 3 and np.isnan(out[1, 1])
    inside = T.window(arr, 0, 0, 3, 4, 0)
    assert inside is not arr and np.shares_memory(inside, arr) is False


def test_item_seed_is_stable():
    a = T.item_seed(1, 2, 3)
    assert a == T.item_seed(1, 2, 3) and 0 <= a < 2**63
    assert len({T.item_seed(1, e, p) for e in range(5) for p in range(5)}) == 25
    from geopose.data.dataset import item_seed  # the data set's name for it

    assert [item_seed(1, e, 2) for e in range(3)] == [T.item_seed(1, e, 2) for e in range(3)]


def test_env_rank(monkeypatch):
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert T.env_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert T.env_rank() == 2  # a DDP child Lightning started on one node
    monkeypatch.setenv("RANK", "5")
    assert T.env_rank() == 5
    from geopose.inference.distributed import env_info

    assert env_info().rank == 5


def _output(flow: bool = True) -> T.GeoposeOutput:
    z = torch.zeros(2, 1, 4, 4)
    f = torch.ones(2, 2, 4, 4) if flow else None
    return T.GeoposeOutput(z, z + 1, torch.tensor([[0.0, 1.0]] * 2), torch.ones(2), f, None)


def test_output_map_keeps_optional_fields():
    out = _output()
    half = out.map(lambda name, x: x[:1])
    assert half.flow.shape == (1, 2, 4, 4) and half.ramp is None
    assert half.agl.shape == (1, 1, 4, 4) and half.scale.shape == (1,)
    names = []
    out.map(lambda name, x: names.append(name) or x)
    assert names == ["agl", "mag", "direction", "scale", "flow"]
    assert set(T.FIELD_KINDS) == set(T.GeoposeOutput._fields)


def test_output_combine_keeps_fields_every_output_has():
    both = T.GeoposeOutput.combine([_output(), _output()], lambda _, xs: torch.cat(xs))
    assert both.flow.shape == (4, 2, 4, 4) and both.agl.shape == (4, 1, 4, 4)
    mixed = T.GeoposeOutput.combine([_output(), _output(flow=False)], lambda _, xs: xs[0])
    assert mixed.flow is None and mixed.ramp is None
    with pytest.raises(ValueError):
        T.GeoposeOutput.combine([], lambda _, xs: xs[0])


def test_old_import_paths_still_work():
    from geopose.data.sources import ImageSource, downsample_agl, open_source  # noqa: F401
    from geopose.inference import ImagePrediction
    from geopose.inference.predictor import NO_DIRECTION_ANGLE
    from geopose.training.datamodule import _collate
    from geopose.transforms import Sample
    from geopose.transforms.geometric import window

    pred = ImagePrediction(np.zeros((2, 2)), np.zeros((2, 2)), 0.5, 1.0)
    assert isinstance(pred, T.ImagePrediction) and pred.direction_known
    sample = Sample(np.zeros((2, 2, 3), np.uint8), None, 0.5, 1.0, 0.3)
    assert isinstance(sample, T.Sample) and sample.replace(gsd=0.6).gsd == 0.6
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(window(arr, -1, 2, 2, 3, -1), T.window(arr, -1, 2, 2, 3, -1))
    assert NO_DIRECTION_ANGLE == T.NO_DIRECTION_ANGLE
    items = [{"x": torch.ones(2), "stem": "a"}, {"x": torch.zeros(2), "stem": "b"}]
    batch = _collate(items)
    assert batch["stem"] == ["a", "b"] and batch["x"].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_the_torch_free_layers_load_without_torch():
    """io, metrics (scoring), synth, validate and rectify serve light commands (evaluate,
    validate, synth workers): importing them must not load torch (about 2 s to import)."""
    import subprocess
    import sys

    code = (
        "import sys, geopose.io, geopose.types, geopose.metrics.evaluate, geopose.synth, "
        "geopose.validate, geopose.rectify; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
