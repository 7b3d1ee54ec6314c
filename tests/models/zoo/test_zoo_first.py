"""The 1st place family (TimmUnet on tf_efficientnetv2_l_in21k) against its reference fixture
(tests/fixtures/zoo/first.*): published container -> load_published -> the authors' outputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo_fixtures as zf

from geopose.errors import GeoposeDataError
from geopose.models.zoo import (
    Container,
    build_published,
    convert_container,
    family_of,
    load_published,
    read_container,
)
from geopose.models.zoo.first import FirstFamily, FirstPlaceModel, preprocess

pytestmark = pytest.mark.slow  # nearly every test builds the full-size published model

NAME = "first"


def published_state() -> dict[str, torch.Tensor]:
    """The fixture's state dict with the manifest's shapes (0-D ``num_batches_tracked``)."""
    shapes = {e["key"]: tuple(e["shape"]) for e in zf.manifest(NAME)["state_dict"]["entries"]}
    return {k: v.reshape(shapes[k]) for k, v in zf.rebuild(NAME).items()}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return published_state()


@pytest.fixture(scope="module")
def published(tmp_path_factory, state) -> Path:
    """The published layout, under a name that is not the published one (recognised by content)."""
    path = tmp_path_factory.mktemp("first") / "some_checkpoint.bin"
    torch.save(zf.container_object(NAME, state), path)
    return path


@pytest.fixture(scope="module")
def model(published) -> FirstPlaceModel:
    return load_published(published)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return zf.io(NAME)


def image01(ref) -> torch.Tensor:
    """The fixture tile as geopose passes it: 1×3×H×W RGB in [0, 1]."""
    rgb = torch.from_numpy(ref["image_rgb_uint8"]).permute(2, 0, 1)[None]
    return rgb.float() / 255.0


@pytest.fixture(scope="module")
def out(model, ref):
    """The geopose contract on the fixture tile with its GSD and city JAX."""
    with torch.no_grad():
        return model(image01(ref), torch.tensor([float(ref["gsd"])]), torch.tensor([2]))


def test_loads_published_layout_with_numpy_metric(published, model):
    container = read_container(published)
    assert isinstance(container.obj["metrics"]["r2"], np.floating)
    assert family_of(container) is FirstFamily
    assert isinstance(model, FirstPlaceModel) and not model.training
    assert model.config == {"family": "first", "encoder": "tf_efficientnetv2_l_in21k"}
    assert sum(p.numel() for p in model.parameters()) == 120_581_988


def test_raw_outputs_match_the_authors(model, ref):
    x = torch.from_numpy(ref["model_input"])
    with torch.no_grad():
        out = model.raw(x)
    assert set(out) == {"xydir", "height", "mag", "scale"}
    for k in ("xydir", "height", "mag"):
        assert tuple(out[k].shape) == ref[f"out_{k}"].shape
        zf.assert_close(out[k].numpy(), ref[f"out_{k}"], k)
    assert tuple(out["scale"].shape) == (1,)
    zf.assert_close(out["scale"].numpy(), ref["out_scale"], "scale", atol=zf.ATOL_SCALAR)


def test_preprocessing_matches_the_authors(ref):
    got = preprocess(image01(ref))
    np.testing.assert_allclose(got.numpy(), ref["model_input"], rtol=0, atol=1e-6)


def test_geopose_contract(out, ref):
    assert tuple(out.agl.shape) == (1, 1, 128, 128) and tuple(out.mag.shape) == (1, 1, 128, 128)
    assert float(out.agl.min()) >= 0.0  # clipped at 0 in eval
    zf.assert_close(out.agl[0, 0].numpy(), ref["agl_m"], "agl")
    zf.assert_close(out.mag.numpy(), ref["out_mag"], "mag")
    zf.assert_close(out.scale.numpy(), [ref["scale_px_per_m"]], "scale", atol=zf.ATOL_SCALAR)
    a = float(ref["angle_rad"])
    assert torch.allclose(out.direction.norm(dim=1), torch.ones(1))
    zf.assert_close(out.direction[0].numpy(), [math.sin(a), math.cos(a)], "direction")
    got = math.atan2(float(out.direction[0, 0]), float(out.direction[0, 1])) % (2 * math.pi)
    assert abs(got - a) < 1e-3


def test_gsd_and_city_do_not_change_outputs(model, ref, out):
    x = image01(ref)
    with torch.no_grad():
        other = model(x, torch.tensor([0.5]), torch.tensor([0]))
        none = model(x)
    for k in ("agl", "mag", "direction", "scale"):
        assert torch.equal(getattr(other, k), getattr(out, k)), k
        assert torch.equal(getattr(none, k), getattr(out, k)), k


def test_odd_size_is_padded_and_cropped(model, ref):
    with torch.no_grad():
        out = model(image01(ref)[..., :100, :90])
    assert tuple(out.agl.shape) == (1, 1, 100, 90) and tuple(out.mag.shape) == (1, 1, 100, 90)
    assert tuple(out.direction.shape) == (1, 2) and tuple(out.scale.shape) == (1,)


def test_rebuild_from_config_has_the_same_keys_and_shapes(model):
    other = build_published(model.config)
    assert isinstance(other, FirstPlaceModel)
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in other.state_dict().items()} == mine


def _broken(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    bad = dict(state)
    if how == "missing":
        del bad["module.decoder_stages.0.layer.1.bias"]
    elif how == "extra":
        bad["module.scale_head.weight"] = torch.zeros(1)
    else:
        bad["module.height_head.0.weight"] = torch.zeros(1, 32, 3, 3)
    return bad


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("missing", "missing key(s) (decoder_stages.0.layer.1.bias)"),
        ("extra", "unexpected key(s) (scale_head.weight)"),
        ("shape", "height_head.0.weight (1, 32, 3, 3) vs (1, 64, 3, 3)"),
    ],
)
def test_bad_weights_give_one_line_error_naming_the_file(tmp_path, state, how, says):
    path = tmp_path / "folds_TimmUnet_tf_efficientnetv2_l_in21k_5_r2"
    obj = zf.container_object(NAME, _broken(state, how))
    with pytest.raises(GeoposeDataError) as err:
        convert_container(Container(path, "pickle", obj))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and says in msg, msg


def test_other_layouts_are_not_this_family(tmp_path, state):
    path = tmp_path / "x.pth"
    bare = {k[len("module.") :]: v for k, v in state.items()}
    assert not FirstFamily.matches(Container(path, "pickle", {"state_dict": bare}))
    assert not FirstFamily.matches(Container(path, "pickle", state))
    assert not FirstFamily.matches(Container(path, "torchscript", state))
    smp_like = {
        "module.encoder.conv1.weight": torch.zeros(1),
        "module.xydir_head.3.weight": torch.zeros(1),
    }
    assert not FirstFamily.matches(Container(path, "pickle", {"state_dict": smp_like}))
