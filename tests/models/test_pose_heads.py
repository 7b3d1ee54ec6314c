"""Pose heads by registry, the model/loss schema and the model registry: one forward contract
per head kind, shared fits computed once, every part's options declared next to its class and
checked by one machinery (tested over every registered entry), did-you-mean errors for unknown
names and keys."""

from __future__ import annotations

import pytest
import torch

from geopose.config import (
    LOSS_DEFAULTS,
    MODEL,
    MODEL_DEFAULTS,
    Opt,
    Registry,
    Section,
    check_section,
    defaults_of,
)
from geopose.errors import ConfigError
from geopose.models import MODELS, create_model, resolve_loss_config, resolve_model_config
from geopose.models import pose as pose_module
from geopose.models.pose import DIRECTION_HEADS, SCALE_HEADS, PoseContext, PoseHead

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


def _small(heads, kind: str) -> dict:
    """A pose section of ``kind``, with a narrow MLP when the kind has one."""
    return {"kind": kind, **({"hidden": 8} if "hidden" in heads[kind].options else {})}


def test_every_kind_is_registered_and_builds():
    assert list(DIRECTION_HEADS) == ["pooled", "dense_attention", "flow", "ramp", "ramp_pooled"]
    assert list(SCALE_HEADS) == ["lstsq", "regress", "flow", "ramp"]
    for d in DIRECTION_HEADS:
        for s in SCALE_HEADS:
            cfg = {**TINY, "flow": {"channels": 8}, "ramp": {"channels": 8}}
            cfg["direction"], cfg["scale"] = _small(DIRECTION_HEADS, d), _small(SCALE_HEADS, s)
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
    dense["upsample"] = "features"  # the behaviour before the option
    dense["depth"], dense["dilation"] = 1, 1  # the same
    fit = {"iterations": 5, "huber": 0.3, "min_slope": 0.3, "max_slope": 3.0}
    fit["facade_power"] = 1.0  # the plain weights
    before = {
        "encoder": "resnet34",
        "pretrained": False,
        "encoder_kwargs": {},
        "input_stride": 1,  # the image as it is
        "decoder": {"kind": "unet", "channels": [256, 128, 64, 32], "output_stride": 4},
        "agl": {**dense, "gsd": "concat", "gsd_ref": 0.3},
        "mag": dense,
        "flow": None,
        "ramp": None,
        "facade": None,  # off by default
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
            "ramp_input": False,  # ramp_pooled only; off
            "fit_grad": False,  # ramp_pooled only; off
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
        "facade": None,  # off unless asked for
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


# --- every registered entry ------------------------------------------------------------------

_POSE_HEADS = {"direction": DIRECTION_HEADS, "scale": SCALE_HEADS}
_REQUIRED = {"mapping": {}}
"""A value of each kind of required option, for the entries that have one."""


def _other_value(opt: Opt):
    """A valid value of ``opt`` other than its default."""
    if opt.kind == "bool":
        return not opt.default
    if opt.kind in ("int", "float"):
        step = 1 if opt.kind == "int" else 0.5
        value = opt.default + step
        return value if opt.max is None or value <= opt.max else opt.default - step
    if opt.kind == "str" and list(opt.choices):
        return next(c for c in opt.choices if c != opt.default)
    pytest.fail(f"no other value for an option of kind {opt.kind!r}: add one to _other_value")


@pytest.mark.parametrize(
    "section, kind",
    [(section, kind) for section, heads in _POSE_HEADS.items() for kind in heads],
    ids=lambda v: str(v),
)
def test_every_pose_kind_resolves_its_options_and_refuses_others(section, kind):
    """Each registered direction/scale kind's own options resolve to their defaults; an unknown
    key is refused naming it, and so is an option only other kinds have, naming the kinds."""
    heads = _POSE_HEADS[section]
    cls = heads[kind]
    base = {name: {} for name in cls.requires[:1]}  # the dense head the kind reads
    out = resolve_model_config({**base, section: {"kind": kind}})[section]
    assert out["kind"] == kind
    assert {k: out[k] for k in cls.options} == {k: o.default for k, o in cls.options.items()}
    assert set(out) == set(MODEL_DEFAULTS[section])  # one shape whatever the kind
    for key, opt in cls.options.items():
        given = {"kind": kind, key: _other_value(opt)}
        assert resolve_model_config({**base, section: given})[section][key] == given[key]
    with pytest.raises(ConfigError, match=rf"model\.{section}: unknown key\(s\) \['zz_unknown'\]"):
        resolve_model_config({**base, section: {"kind": kind, "zz_unknown": 1}})
    own = {*cls.options, *MODEL[section].common}
    for other, other_cls in heads.items():
        for key, opt in other_cls.options.items():
            if key in own:
                continue
            message = rf"model\.{section}\.{key}: an option of kind .*{other}.*, not of '{kind}'"
            with pytest.raises(ConfigError, match=message):
                resolve_model_config({**base, section: {"kind": kind, key: _other_value(opt)}})


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_resolves_its_options_and_refuses_unknown_ones(name):
    """Each registered model (geopose and every published family) resolves its declared
    options to their defaults and refuses an unknown key naming it, alone and as a
    ``model:`` section with ``family:``."""
    entry = MODELS[name]
    required = {k: o for k, o in entry.options.items() if isinstance(o, Opt) and o.required}
    given = {}
    for key, opt in required.items():
        if opt.kind not in _REQUIRED:
            pytest.fail(f"no sample value for the required {opt.kind!r} {key}: add one")
        given[key] = _REQUIRED[opt.kind]
        with pytest.raises(ConfigError, match=rf"model: needs '{key}'"):
            entry.resolve({k: v for k, v in given.items() if k != key})
    assert entry.resolve(given) == {**defaults_of(entry.options), **given}
    with pytest.raises(ConfigError, match=r"model: unknown key\(s\) \['zz_unknown'\]"):
        entry.resolve({**given, "zz_unknown": 1})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['zz_unknown'\]"):
        resolve_model_config({"family": name, **given, "zz_unknown": 1})


def test_a_kind_switch_keeps_only_what_the_new_kind_reads():
    """An override that switches a pose head's kind drops the options the new kind does not
    read and keeps the ones it shares; the same options written by hand are refused."""
    from geopose.config import resolve_config

    cfg = resolve_config("cpu_small", ["model.direction.kind=pooled", "model.scale.kind=ramp"])
    assert cfg["model"]["direction"] == {"kind": "pooled", "city": True}  # fit_grad dropped
    assert cfg["model"]["scale"] == {"kind": "ramp"}  # gsd, city: the regress head's
    model = create_model("cpu_small", direction={"kind": "flow"}, flow={"channels": 8})
    assert model.config["direction"]["fit_grad"] is False  # the default, not cpu_small's true
    with pytest.raises(ConfigError, match=r"model\.direction\.fit_grad: .*ramp_pooled.*'pooled'"):
        create_model({**TINY, "direction": {"kind": "pooled", "fit_grad": True}})
    # a resolved section (every kind's options, the others' at their defaults) resolves again
    resolved = resolve_model_config({**TINY, "direction": {"kind": "dense_attention"}})
    assert resolve_model_config(resolved) == resolved


def test_a_checkpoint_whose_section_holds_another_kinds_option_loads(tmp_path):
    """A stored ``model:`` section may carry options of another kind (they never reached the
    model): the checkpoint loads, into the same weights."""
    from geopose.models import load_checkpoint

    model = create_model(TINY)
    stored = {**TINY, "direction": {**TINY["direction"], "beta": 2.0, "fit_grad": True}}
    ckpt = {
        "hyper_parameters": {"config": {"model": stored}},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    loaded, config = load_checkpoint(tmp_path / "x.ckpt", ckpt=ckpt)
    assert config["model"] == stored
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
