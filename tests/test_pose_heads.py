"""Pose heads by registry, the model/loss schema and the model registry (issue 16): one forward
contract per head kind, shared fits computed once, every default in one table, did-you-mean
errors for unknown names and keys."""

from __future__ import annotations

import pytest
import torch

from geopose.errors import ConfigError
from geopose.models import create_model, resolve_loss_config, resolve_model_config
from geopose.models import pose as pose_module
from geopose.models.options import LOSS_DEFAULTS, MODEL_DEFAULTS, MODELS
from geopose.models.pose import DIRECTION_HEADS, SCALE_HEADS, PoseContext, PoseHead
from geopose.models.schema import Opt, Registry, Section, check_section, defaults_of

TINY = {
    "encoder": "resnet18",
    "decoder": {"channels": [16, 16, 16, 8], "output_stride": 2},
    "agl": {"channels": 8},
    "mag": {"channels": 8},
    "direction": {"kind": "pooled", "hidden": 8},
    "scale": {"kind": "regress", "hidden": 8},
}


def _run(cfg: dict):
    model = create_model(cfg).eval()
    with torch.no_grad():
        return model, model(torch.rand(2, 3, 64, 64), torch.tensor([0.3, 0.5]))


def test_every_kind_is_registered_and_builds():
    assert list(DIRECTION_HEADS) == ["pooled", "dense_attention", "flow", "ramp", "ramp_pooled"]
    assert list(SCALE_HEADS) == ["lstsq", "regress", "flow", "ramp"]
    for d in DIRECTION_HEADS:
        for s in SCALE_HEADS:
            cfg = {**TINY, "flow": {"channels": 8}, "ramp": {"channels": 8}}
            cfg["direction"], cfg["scale"] = {"kind": d, "hidden": 8}, {"kind": s, "hidden": 8}
            model, out = _run(cfg)
            assert isinstance(model.direction_head, DIRECTION_HEADS[d])
            assert isinstance(model.scale_head, SCALE_HEADS[s])
            assert out.direction.shape == (2, 2) and out.scale.shape == (2,)


def test_weightless_kinds_hold_nothing_in_the_state_dict():
    cfg = {**TINY, "flow": {"channels": 8}, "direction": {"kind": "flow"}}
    keys = create_model({**cfg, "scale": {"kind": "flow"}}).state_dict()
    assert not [k for k in keys if k.startswith(("direction_head", "scale_head"))]
    keys = create_model(TINY).state_dict()
    assert "direction_head.mlp.mlp.0.weight" in keys and "scale_head.mlp.mlp.3.bias" in keys
    keys = create_model({**TINY, "direction": {"kind": "dense_attention"}}).state_dict()
    assert "direction_head.log_beta" in keys and "direction_head.field.0.weight" in keys


@pytest.mark.parametrize("fit, kind", [("flow_pose", "flow"), ("ramp_pose", "ramp")])
def test_a_shared_fit_runs_once_per_forward(monkeypatch, fit, kind):
    calls = []
    real = getattr(pose_module, fit)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pose_module, fit, counted)
    cfg = {**TINY, "mag": None, kind: {"channels": 8}}
    cfg["direction"], cfg["scale"] = {"kind": kind}, {"kind": kind}
    _run(cfg)
    assert len(calls) == 1  # direction, scale (and MAG from the flow) share one fit


def test_a_new_kind_plugs_in_by_registering(monkeypatch):
    class Fixed(PoseHead):
        def forward(self, ctx: PoseContext) -> torch.Tensor:
            return ctx.agl.new_tensor([[1.0, 0.0]]).expand(ctx.agl.shape[0], 2)

    monkeypatch.setitem(DIRECTION_HEADS._entries, "fixed", Fixed)
    _, out = _run({**TINY, "direction": {"kind": "fixed"}})
    assert out.direction.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_unknown_kinds_and_keys_get_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"model\.direction\.kind: 'dense' .*did you mean"):
        create_model({**TINY, "direction": {"kind": "dense"}})
    with pytest.raises(ConfigError, match=r"model\.scale\.kind: 'lsq' .*did you mean lstsq"):
        create_model({**TINY, "scale": {"kind": "lsq"}})
    with pytest.raises(ConfigError, match=r"model\.agl: unknown key\(s\) \['chanels'\]; did"):
        create_model({**TINY, "agl": {"chanels": 8}})
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) \['zz'\]; known: \["):
        create_model({**TINY, "zz": 1})
    with pytest.raises(ConfigError, match=r"model\.family: 'fourht' .*did you mean fourth"):
        create_model({"family": "fourht"})
    with pytest.raises(ConfigError, match=r"loss\.direction: unknown key\(s\) .*cos_weight"):
        resolve_loss_config({"direction": {"cos_weigth": 1.0}})


@pytest.mark.parametrize(
    "section, value, message",
    [
        ("direction", {"dropout": 1.5}, r"model\.direction\.dropout: 1\.5 is above the maximum"),
        ("direction", {"beta": 0}, r"model\.direction\.beta: 0\.0 must be > 0"),
        ("scale", {"out_scale": "big"}, r"model\.scale\.out_scale: expected a number"),
        ("agl", {"activation": "rleu"}, r"model\.agl\.activation: 'rleu' .*did you mean relu"),
        ("decoder", {"channels": [16, 0]}, r"model\.decoder\.channels: 0 is below the minimum"),
    ],
)
def test_out_of_bounds_values_name_the_key(section, value, message):
    with pytest.raises(ConfigError, match=message):
        create_model({**TINY, section: value})


def test_the_defaults_are_the_ones_before_the_schema():
    dense = {"channels": 64, "activation": "relu", "out_activation": "none", "out_scale": 10.0}
    dense["city"] = False
    dense["upsample"] = "features"  # added with issue 18, round 5 (the behaviour before)
    dense["depth"], dense["dilation"] = 1, 1  # added with issue 18, round 7 (the same)
    fit = {"iterations": 5, "huber": 0.3, "min_slope": 0.3, "max_slope": 3.0}
    fit["facade_power"] = 1.0  # added with issue 18, round 7 (the plain weights)
    before = {
        "encoder": "resnet34",
        "pretrained": False,
        "encoder_kwargs": {},
        "input_stride": 1,  # added with issue 18, round 17 (the image as it is)
        "decoder": {"kind": "unet", "channels": [256, 128, 64, 32], "output_stride": 4},
        "agl": {**dense, "gsd": "concat", "gsd_ref": 0.3},
        "mag": dense,
        "flow": None,
        "ramp": None,
        "facade": None,  # added with issue 18 (off by default)
        "direction": {
            "kind": "pooled",
            "hidden": 256,
            "activation": "relu",
            "dropout": 0.0,
            "gsd": False,
            "city": False,
            "gsd_ref": 0.3,
            "channels": 64,
            "beta": 1.0,
            "detach_agl": True,
            "ramp_input": False,  # added with issue 18, round 19 (ramp_pooled only; off)
            "fit_grad": False,  # added with issue 18, round 21 (ramp_pooled only; off)
        },
        "scale": {
            "kind": "lstsq",
            "hidden": 256,
            "activation": "relu",
            "dropout": 0.0,
            "gsd": "concat",
            "gsd_ref": 0.3,
            "city": False,
            "out_scale": 1.0,
            "detach_agl": True,
        },
    }
    assert before == MODEL_DEFAULTS
    assert resolve_model_config({"ramp": True})["ramp"] == {**dense, "out_scale": 1.0, **fit}
    target = {"kind": "mse", "weight": 1.0, "delta": 1.0, "trim": 0.0}
    before = {
        "agl": target,
        "mag": target,
        "direction": {"weight": 1.0, "cos_weight": 1.0, "mse_weight": 0.1},
        "scale": {"kind": "mse", "weight": 1.0, "delta": 1.0},
        "flow": {**target, "weight": 0.0},
        "vflow": {**target, "weight": 0.0},
        "ramp": {**target, "weight": 0.0, "max_slope": 3.0},
        "facade": None,  # added with issue 18 (off unless asked for)
    }
    assert before == LOSS_DEFAULTS
    resolved = resolve_loss_config({"flow": {"weight": 2}, "mag": None})
    assert resolved["flow"]["weight"] == 2.0 and resolved["mag"] is None
    assert resolved["vflow"] is None  # weight 0: off


def test_one_registry_builds_every_model():
    from geopose.models.zoo import FAMILIES

    assert {"geopose", "baseline", "first", "second", "fourth"} <= set(MODELS)
    assert "geopose" not in FAMILIES and list(FAMILIES) == [n for n in MODELS if n != "geopose"]
    assert type(create_model({"family": "geopose", **TINY})).__name__ == "GeoposeModel"
    assert resolve_model_config({"family": "baseline"}) == {"family": "baseline"}


def test_schema_sections_and_registry_helpers():
    spec = {
        "n": Opt(1, "int", "a count", min=0),
        "sub": Section({"x": Opt(0.5, "float", "a share", min=0, max=1)}, optional=True),
    }
    assert defaults_of(spec) == {"n": 1, "sub": {"x": 0.5}}
    assert check_section("s", spec, {"sub": None}) == {"n": 1, "sub": None}
    assert check_section("s", spec, {"n": "3", "sub": True}) == {"n": 3, "sub": {"x": 0.5}}
    with pytest.raises(ConfigError, match=r"s\.sub\.x: 2\.0 is above the maximum 1"):
        check_section("s", spec, {"sub": {"x": 2}})
    reg: Registry[int] = Registry("thing.kind")
    reg.register("one")(1)
    with pytest.raises(ValueError, match="taken"):
        reg.register("one")(2)
    assert reg.lookup("one") == 1 and "one" in reg and len(reg) == 1
    with pytest.raises(ConfigError, match=r"thing\.kind: 'on' is not one of \['one'\]; did"):
        reg.lookup("on")
