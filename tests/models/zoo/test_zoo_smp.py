"""The smp U-Net families against their reference fixtures (tests/fixtures/zoo): the official
baseline (pubgeo UnetVFLOW, resnet34, half resolution) and the 4th place (kbrodt, senet154 /
efficientnet-b6 / -b7 with city and GSD in the bottleneck, TorchScript archives).

Each fixture's weights are packed in the published container (a bare ``torch.save`` state dict;
a real TorchScript archive for the 4th place), read back with ``load_published`` and compared
with the authors' raw outputs and derived values. One big model is alive at a time (the
module-scoped fixture is parametrised by fixture name)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zoo_fixtures as zf

from geopose.errors import ConfigError, GeoposeDataError
from geopose.models.heads import unit
from geopose.models.zoo import (
    FAMILIES,
    Container,
    build_published,
    convert_container,
    family_of,
    load_published,
)
from geopose.models.zoo.baseline import BaselineFamily, BaselineModel
from geopose.models.zoo.fourth import FourthFamily, FourthModel, identify_encoder

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch\\.jit.*:FutureWarning"
)  # the archive writer

NAMES = ("baseline", "fourth_senet154", "fourth_effb6", "fourth_effb7")
ENCODER = {
    "baseline": "resnet34",
    "fourth_senet154": "senet154",
    "fourth_effb6": "efficientnet-b6",
    "fourth_effb7": "efficientnet-b7",
}
PARAMS = {  # README table of the fixtures
    "baseline": 24_437_540,
    "fourth_senet154": 122_089_171,
    "fourth_effb6": 43_838_459,
    "fourth_effb7": 67_108_787,
}
OUTPUTS = ("xydir", "height", "mag", "scale")
CITY = {"ARG": 0, "ATL": 1, "JAX": 2, "OMA": 3}


# the baseline (resnet34) stays in the quick tests; the 4th place's full-size models are slow
@pytest.fixture(
    scope="module",
    params=[n if n == "baseline" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES],
)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def published(name, tmp_path_factory) -> Path:
    """The fixture in its published container, under a name that is not the published one."""
    return zf.write_published(name, tmp_path_factory.mktemp(name) / "weights.bin")


@pytest.fixture(scope="module")
def model(published):
    torch.manual_seed(0)
    return load_published(published)


@pytest.fixture(scope="module")
def ref(name) -> dict[str, np.ndarray]:
    return zf.io(name)


@pytest.fixture(scope="module")
def out(model, ref):
    """The geopose contract on the fixture tile with its GSD and city JAX."""
    return contract(model, ref)


def image01(ref) -> torch.Tensor:
    """The fixture tile as geopose passes it: 1×3×H×W RGB in [0, 1]."""
    return torch.from_numpy(ref["image_rgb_uint8"]).permute(2, 0, 1)[None].float() / 255.0


def raw(model, ref, alt: bool = False) -> dict[str, torch.Tensor]:
    """The inner network on the authors' exact model input, as their forward returns it."""
    x = torch.from_numpy(ref["model_input"])
    p = "alt_" if alt else ""
    with torch.no_grad():
        if isinstance(model, BaselineModel):
            out = model.raw(x)
        else:
            city = torch.from_numpy(ref[f"{p}city_onehot"])
            out = model.raw(x, city, torch.from_numpy(ref[f"{p}model_input_gsd"]))
    return dict(zip(OUTPUTS, out, strict=True))


def contract(model, ref, alt: bool = False):
    """The geopose contract on the fixture tile with its GSD and city (or the alternatives)."""
    p = "alt_" if alt else ""
    city = CITY.get(str(ref.get(f"{p}city", "")), -1)
    with torch.no_grad():
        return model(image01(ref), torch.tensor([float(ref[f"{p}gsd"])]), torch.tensor([city]))


def assert_raw(out: dict[str, torch.Tensor], ref, prefix: str) -> None:
    for k in OUTPUTS:
        want = ref[f"{prefix}out_{k}"]
        assert tuple(out[k].shape) == want.shape, k
        atol = zf.ATOL_SCALAR if k == "scale" else 0.0
        zf.assert_close(out[k].numpy(), want, f"{prefix}{k}", atol=atol)


def assert_direction(direction: torch.Tensor, angle: float, what: str) -> None:
    assert torch.allclose(direction.norm(dim=1), torch.ones(1))
    zf.assert_close(direction[0].numpy(), [math.sin(angle), math.cos(angle)], what)


# --- loading ----------------------------------------------------------------------------------


def test_loads_the_published_container(name, model):
    want = BaselineModel if name == "baseline" else FourthModel
    assert isinstance(model, want) and not model.training
    family = "baseline" if name == "baseline" else "fourth"
    assert model.config["family"] == family and model.config["encoder"] == ENCODER[name]
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    assert model.uses_gsd == model.uses_city == (family == "fourth")


def test_raw_outputs_match_the_authors(name, model, ref):
    assert_raw(raw(model, ref), ref, "")
    if name != "baseline":
        assert_raw(raw(model, ref, alt=True), ref, "alt_")


def test_preprocessing_matches_the_authors(model, ref):
    got = model.preprocess(image01(ref))
    assert tuple(got.shape) == ref["model_input"].shape
    np.testing.assert_allclose(got.numpy(), ref["model_input"], rtol=0, atol=1e-6)


# --- the geopose contract ---------------------------------------------------------------------


def test_geopose_contract(name, out, ref):
    assert tuple(out.agl.shape) == (1, 1, 128, 128) and tuple(out.mag.shape) == (1, 1, 128, 128)
    assert tuple(out.direction.shape) == (1, 2) and tuple(out.scale.shape) == (1,)
    assert float(out.agl.min()) == 0.0  # the fixture's AGL is partly negative: clipped at 0
    zf.assert_close(out.agl[0, 0].numpy(), ref["agl_m"], "agl")
    scale = [float(ref["scale_px_per_m"])]
    zf.assert_close(out.scale.numpy(), scale, "scale", atol=zf.ATOL_SCALAR)
    assert_direction(out.direction, float(ref["angle_rad"]), "direction")
    got = math.atan2(float(out.direction[0, 0]), float(out.direction[0, 1]))
    assert abs(math.remainder(got - float(ref["angle_rad_native"]), 2 * math.pi)) < 1e-3
    if name == "baseline":  # MAG px at full resolution: 2 × the half-resolution head
        mag = 2 * F.interpolate(torch.from_numpy(ref["out_mag"]), scale_factor=2.0)
        zf.assert_close(out.mag.numpy(), mag.numpy(), "mag")
    else:  # MAG = scale × (clipped) AGL, what the submitted AGL and scale imply
        assert torch.equal(out.mag, out.scale[:, None, None, None] * out.agl)
        zf.assert_close(out.mag[0, 0].numpy(), ref["out_scale"][0] * ref["agl_m"], "mag")


def test_gsd_and_city_change_the_outputs_as_the_authors_say(name, model, ref, out):
    if name == "baseline":
        with torch.no_grad():
            other = model(image01(ref), torch.tensor([0.5]), torch.tensor([0]))
            none = model(image01(ref))
        for k in ("agl", "mag", "direction", "scale"):
            assert torch.equal(getattr(other, k), getattr(out, k)), k
            assert torch.equal(getattr(none, k), getattr(out, k)), k
        return
    alt = contract(model, ref, alt=True)  # gsd 0.5, city ARG
    height = torch.from_numpy(ref["alt_out_height"])
    zf.assert_close(alt.agl.numpy(), height.clamp(0.0, 100.0).numpy(), "alt agl")
    zf.assert_close(alt.scale.numpy(), ref["alt_out_scale"], "alt scale", atol=zf.ATOL_SCALAR)
    want = unit(torch.from_numpy(ref["alt_out_xydir"]))[0]
    zf.assert_close(alt.direction[0].numpy(), want.numpy(), "alt direction")
    checks = zf.manifest(name)["checks"]["alt_vs_main_max_rel_diff"]
    assert min(checks.values()) > 5 * zf.RTOL  # the comparisons above are not vacuous
    for a, b in ((alt.agl, out.agl), (alt.scale, out.scale), (alt.direction, out.direction)):
        assert zf.max_rel(a.numpy(), b.numpy()) > 5 * zf.RTOL
    with pytest.raises(ValueError, match="gsd"):
        model(image01(ref))


def crops(ref) -> torch.Tensor:
    """Four 32×32 crops of the tile, 4×3×32×32: the small batch of the tests below (one shape,
    so the CPU kernels are set up once per model)."""
    x = image01(ref)[0]
    return torch.stack([x[:, i : i + 32, j : j + 32] for i in (0, 64) for j in (0, 64)])


def test_unknown_city_is_the_mean_over_the_four_cities(name, model, ref):
    if name == "baseline":
        pytest.skip("the baseline takes no city")
    x, gsd = crops(ref), torch.full((4,), float(ref["gsd"]))
    city = torch.tensor([2, -1, 0, 3])
    with torch.no_grad():
        out = model(x, gsd, city)
        pre = model.preprocess(x)
        known = model.raw(pre, F.one_hot(city.clamp_min(0), 4), gsd)  # rows 0, 2, 3 alone
        four = model.raw(pre[1:2].expand(4, -1, -1, -1), torch.eye(4), gsd)  # row 1, each city
    rows = [0, 2, 3]
    zf.assert_close(out.agl[rows].numpy(), known[1][rows].clamp_min(0.0).numpy(), "agl")
    zf.assert_close(out.scale[rows].numpy(), known[3][rows].numpy(), "scale", atol=1e-6)
    zf.assert_close(out.direction[rows].numpy(), unit(known[0][rows]).numpy(), "direction")
    xydir, height, _, scale = (t.mean(0, keepdim=True) for t in four)
    zf.assert_close(out.agl[1:2].numpy(), height.clamp(0.0, 200.0).numpy(), "mean agl")
    zf.assert_close(out.scale[1:2].numpy(), scale.numpy(), "mean scale", atol=zf.ATOL_SCALAR)
    zf.assert_close(out.direction[1:2].numpy(), unit(xydir).numpy(), "mean direction")
    assert torch.equal(out.mag, out.scale[:, None, None, None] * out.agl)


def test_agl_clip_per_city_in_eval_only(name, model, ref):
    head = model.height_head[0] if name == "baseline" else model.height_head
    x, gsd = crops(ref), torch.full((4,), float(ref["gsd"]))
    city = torch.tensor([0, 2, -1, 3])  # ARG, JAX, unknown, OMA
    with torch.no_grad():
        head.bias += 250.0
        try:
            high = model(x, gsd, city)
        finally:
            head.bias -= 250.0
        model.training = True  # the wrapper's flag only: the network stays in eval mode
        try:
            train = model(x, gsd, city)
        finally:
            model.training = False
    if name == "baseline":  # clipped at 0 only
        assert float(high.agl.min()) > 240.0
    else:  # ARG 100 m, the others and unknown 200 m
        limits = [100.0, 200.0, 200.0, 200.0]
        assert [float(high.agl[i].max()) for i in range(4)] == limits
        assert [float(high.agl[i].min()) for i in range(4)] == limits
    assert float(train.agl.min()) < 0.0  # train mode: the raw head, no clip


def test_odd_sizes_are_padded_and_cropped(model, ref):
    with torch.no_grad():
        out = model(crops(ref)[..., :20, :30], torch.full((4,), 0.35), torch.tensor([1, 1, 2, 3]))
    assert tuple(out.agl.shape) == (4, 1, 20, 30) and tuple(out.mag.shape) == (4, 1, 20, 30)
    assert tuple(out.direction.shape) == (4, 2) and tuple(out.scale.shape) == (4,)
    assert torch.isfinite(out.agl).all() and torch.isfinite(out.scale).all()


# --- rebuilding and bad files -----------------------------------------------------------------


def test_rebuild_from_config_has_the_same_keys_and_shapes(model):
    config = json.loads(json.dumps(model.config))
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    other = FAMILIES[config["family"]].build(config)
    assert type(other) is type(model) and other.config == model.config
    assert {k: tuple(v.shape) for k, v in other.state_dict().items()} == mine
    if isinstance(model, BaselineModel):  # the same through the registry's entry point
        assert type(build_published(config)) is BaselineModel


def _published_state(name: str, model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return state if name == "baseline" else {f"module.{k}": v for k, v in state.items()}


def _broken(name: str, state: dict[str, torch.Tensor], how: str) -> tuple[dict, str]:
    """``state`` with one problem -> (the state, what the error must say)."""
    p = "" if name == "baseline" else "module."
    bad = dict(state)
    if how == "missing":
        del bad[f"{p}decoder.blocks.0.conv1.1.bias"]
        return bad, "missing key(s) (decoder.blocks.0.conv1.1.bias)"
    if how == "extra":
        bad[f"{p}scale_head.weight"] = torch.zeros(1)
        return bad, "unexpected key(s) (scale_head.weight)"
    key = f"{p}decoder.blocks.0.conv1.0.weight"  # the 4th place without city and GSD
    shape = tuple(state[key].shape)
    wrong = (shape[0], shape[1] - 5, *shape[2:])
    bad[key] = torch.zeros(wrong)
    return bad, f"decoder.blocks.0.conv1.0.weight {wrong} vs {shape}"


@pytest.mark.parametrize("how", ["missing", "extra", "shape"])
def test_bad_weights_give_one_line_error_naming_the_file(name, model, tmp_path, how):
    if name in ("fourth_senet154", "fourth_effb7") and how != "shape":
        pytest.skip("same code path as fourth_effb6 (each backbone: the no-city shape)")
    bad, says = _broken(name, _published_state(name, model), how)
    path = tmp_path / "model_best.pt"
    if name == "baseline":
        torch.save(bad, path)
        call = lambda: load_published(path)  # noqa: E731
    elif name == "fourth_effb6" and how == "missing":  # one real broken archive
        zf.write_torchscript(bad, path)
        call = lambda: load_published(path)  # noqa: E731
    else:
        call = lambda: convert_container(Container(path, "torchscript", bad))  # noqa: E731
    with pytest.raises(GeoposeDataError) as err:
        call()
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and says in msg, msg


def test_families_recognise_only_their_own_layout(name, model, tmp_path):
    state = _published_state(name, model)
    path = tmp_path / "x.pt"
    if name == "baseline":
        assert family_of(Container(path, "pickle", state)) is BaselineFamily
        assert not FourthFamily.matches(Container(path, "pickle", state))
    else:
        assert family_of(Container(path, "torchscript", state)) is FourthFamily
        assert not BaselineFamily.matches(Container(path, "torchscript", state))
        assert not BaselineFamily.matches(Container(path, "pickle", state))
        bare = {k[len("module.") :]: v for k, v in state.items()}
        assert FourthFamily.matches(Container(path, "pickle", bare))  # an eager state dict
        assert identify_encoder(bare, path) == ENCODER[name]


def test_encoder_identification_and_config_errors(tmp_path):
    from segmentation_models_pytorch.encoders import get_encoder

    for enc in ("efficientnet-b1", "efficientnet-b2"):
        keys = {f"encoder.{k}": v for k, v in get_encoder(enc, weights=None).state_dict().items()}
        assert identify_encoder(keys, tmp_path) == enc
    odd = {"encoder._conv_stem.weight": torch.zeros(50, 3, 3, 3)}
    with pytest.raises(GeoposeDataError, match="no known size"):
        identify_encoder(odd, tmp_path / "f.pt")
    with pytest.raises(ConfigError, match="encoder"):
        FourthFamily.build({"encoder": "resnet34"})
    with pytest.raises(ConfigError, match="unknown key"):
        BaselineFamily.build({"encoder": "resnet34", "use_city": True})
    with pytest.raises(ConfigError, match="family"):
        BaselineFamily.build({"family": "fourth"})
