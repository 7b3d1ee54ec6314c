"""2nd place (bloodaxe GeoposeUNetModel): the published Catalyst checkpoints rebuilt from the
fixtures (tests/fixtures/zoo) reproduce the authors' outputs through geopose's own modules."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo_fixtures import (
    ATOL_SCALAR,
    RTOL,
    assert_close,
    container_object,
    io,
    manifest,
    max_rel,
    rebuild,
)

from geopose.errors import ConfigError, GeoposeDataError
from geopose.models.zoo import (
    Container,
    build_published,
    convert_container,
    load_published,
)
from geopose.models.zoo.second import SecondPlace, SecondPlaceUNet

FIXTURES = ("second_b7_unet", "second_b7_rdtsc_unet", "second_b6_rdtsc_unet")
KEYS = (
    "OUTPUT_VFLOW_DIRECTION",
    "OUTPUT_VFLOW_ANGLE",
    "OUTPUT_AGL_MASK",
    "OUTPUT_MAGNITUDE_MASK",
    "OUTPUT_VFLOW_SCALE",
)


def published_state(name: str) -> dict[str, torch.Tensor]:
    """The fixture's state dict with the manifest's shapes (0-D ``num_batches_tracked`` stay 0-D:
    ``rebuild`` passes them through ``np.ascontiguousarray``, which makes them 1-D)."""
    state = rebuild(name)
    return {
        e["key"]: state[e["key"]].reshape(e["shape"])
        for e in manifest(name)["state_dict"]["entries"]
    }


@dataclass
class Case:
    name: str
    path: Path
    state: dict
    model: SecondPlaceUNet
    io: dict
    raw: dict  # original forward, batch [main gsd, alt gsd]
    out: object  # geopose contract, batch [main gsd, alt gsd]


# every test of a fixture builds its full-size b6/b7 model: slow
@pytest.fixture(scope="module", params=[pytest.param(f, marks=pytest.mark.slow) for f in FIXTURES])
def case(request, tmp_path_factory) -> Case:
    name = request.param
    state = published_state(name)
    path = tmp_path_factory.mktemp(name) / f"{name}_best.pth"
    torch.save(container_object(name, state), path)
    model = load_published(path)
    d = io(name)
    x = torch.from_numpy(d["model_input"]).repeat(2, 1, 1, 1)
    gsd = torch.from_numpy(np.concatenate([d["model_input_gsd"], d["alt_model_input_gsd"]]))
    image = torch.from_numpy(d["image_rgb_uint8"]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        raw = model.raw(x, gsd)
        out = model(image.repeat(2, 1, 1, 1), gsd.reshape(-1), None)
    return Case(name, path, state, model, d, raw, out)


def _angle_close(got, ref, what):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert_close(np.sin(got), np.sin(ref), f"{what} sin", atol=RTOL)
    assert_close(np.cos(got), np.cos(ref), f"{what} cos", atol=RTOL)


def test_family_and_config(case):
    assert isinstance(case.model, SecondPlaceUNet) and not case.model.training
    config = case.model.config
    assert config["family"] == "second"
    stored = manifest(case.name)["container"]["values"]["checkpoint_data"]["config"]["model"]
    assert json.loads(json.dumps(config))["model"] == stored


def test_raw_network_reproduces_outputs(case):
    for i, prefix in enumerate(("", "alt_")):
        for key in KEYS:
            got = case.raw[key][i : i + 1].numpy()
            ref = case.io[f"{prefix}out_{key}"]
            assert got.shape == ref.shape, key
            what = f"{case.name} {prefix}{key}"
            if key == "OUTPUT_VFLOW_ANGLE":
                _angle_close(got, ref, what)
                assert got.min() >= 0 and got.max() < 2 * math.pi
            elif key == "OUTPUT_VFLOW_SCALE":
                assert_close(got, ref, what, atol=ATOL_SCALAR)
            else:
                assert_close(got, ref, what)


def test_contract_and_gsd(case):
    d, out = case.io, case.out
    assert out.agl.shape == (2, 1, 128, 128) and out.mag.shape == (2, 1, 128, 128)
    assert out.direction.shape == (2, 2) and out.scale.shape == (2,)
    assert_close(out.agl[0, 0], d["agl_m"], f"{case.name} agl_m")
    assert_close(out.mag[0], d["out_OUTPUT_MAGNITUDE_MASK"][0], f"{case.name} mag")
    assert_close(out.scale[0], d["scale_px_per_m"], f"{case.name} scale", atol=ATOL_SCALAR)
    torch.testing.assert_close(out.direction.norm(dim=1), torch.ones(2))
    angle = torch.atan2(out.direction[:, 0], out.direction[:, 1]).numpy()
    _angle_close(angle[0], d["angle_rad"], f"{case.name} angle")
    # Another GSD changes AGL and scale as the authors' model does; direction and MAG do not.
    assert_close(out.agl[1], d["alt_out_OUTPUT_AGL_MASK"][0], f"{case.name} alt agl")
    assert_close(out.scale[1], d["alt_out_OUTPUT_VFLOW_SCALE"], "alt scale", atol=ATOL_SCALAR)
    assert max_rel(out.agl[1].numpy(), out.agl[0].numpy()) > 10 * RTOL
    assert abs(float(out.scale[1] - out.scale[0])) > 10 * RTOL * abs(float(out.scale[0]))
    assert_close(out.direction[1], out.direction[0].numpy(), f"{case.name} direction vs GSD")


def test_preprocessing_is_bgr_imagenet(case):
    image = torch.from_numpy(case.io["image_rgb_uint8"]).permute(2, 0, 1)[None].float() / 255
    got = SecondPlaceUNet.preprocess(image).numpy()
    np.testing.assert_allclose(got, case.io["model_input"], rtol=0, atol=1e-6)


def test_build_from_config_same_keys_and_shapes(case):
    rebuilt = build_published(json.loads(json.dumps(case.model.config)))
    assert isinstance(rebuilt, SecondPlaceUNet)
    want = {k: tuple(v.shape) for k, v in case.model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == want
    assert list(want) == [e["key"] for e in manifest(case.name)["state_dict"]["entries"]]


def _one_line_error(obj, path: Path) -> str:
    with pytest.raises(GeoposeDataError) as info:
        convert_container(Container(path, "pickle", obj))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_weights_and_config_name_the_file(case):
    values = manifest(case.name)["container"]["values"]
    key = next(k for k in case.state if k.startswith("decoder."))

    def obj(state, vals=values):
        return {**copy.deepcopy(vals), "model_state_dict": state}

    missing = {k: v for k, v in case.state.items() if k != key}
    assert key in _one_line_error(obj(missing), case.path)
    extra = {**case.state, "agl_head.extra.weight": torch.zeros(1)}
    assert "agl_head.extra.weight" in _one_line_error(obj(extra), case.path)
    shape = {**case.state, key: torch.zeros(3, *case.state[key].shape[1:])}
    assert "shape" in _one_line_error(obj(shape), case.path)
    bad = copy.deepcopy(values)
    bad["checkpoint_data"]["config"]["model"]["config"]["encoder"]["_target_"] = (
        "pytorch_toolbelt.modules.encoders.TimmB9Encoder"
    )
    assert "TimmB9Encoder" in _one_line_error(obj(case.state, bad), case.path)


def test_unknown_encoder_in_a_real_file(tmp_path):
    name = "second_b6_rdtsc_unet"
    obj = container_object(name, {"decoder.x": torch.zeros(1)})
    obj["checkpoint_data"]["config"]["model"]["config"]["encoder"]["_target_"] = "x.ConvNeXtEncoder"
    path = tmp_path / "210714_15_13_b6_rdtsc_unet_fold9_best.pth"
    torch.save(obj, path)
    with pytest.raises(GeoposeDataError) as info:
        load_published(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "ConvNeXtEncoder" in msg


@pytest.mark.parametrize(
    ("where", "value", "needle"),
    [
        (("_target_",), "geopose.models.other.Model", "geopose.models.other.Model"),
        (("config", "decoder", "block_type"), "dc_unet", "dc_unet"),
        (("config", "decoder", "upsample"), "pixelshuffle", "pixelshuffle"),
        (
            ("config", "agl_head", "_target_"),
            "geopose.models.heads.HyperColumnAGLHead",
            "HyperColumn",
        ),
        (("config", "encoder", "activation"), "prelu", "prelu"),
    ],
)
def test_build_rejects_unknown_names(where, value, needle):
    section = copy.deepcopy(
        manifest("second_b6_rdtsc_unet")["container"]["values"]["checkpoint_data"]["config"][
            "model"
        ]
    )
    node = section
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    with pytest.raises(ConfigError, match=needle):
        SecondPlace.build({"model": section})
