"""The training config (geopose.config): defaults, recipe sections, overrides, errors, saving
and loading."""

from __future__ import annotations

import pytest

from geopose.config import (
    DATA,
    TRAIN,
    defaults,
    load_config,
    parse_override,
    resolve_config,
    save_config,
)
from geopose.errors import ConfigError, GeoposeDataError


def test_defaults_follow_the_seeds():
    d = defaults()
    assert d["train"]["optimizer"] == "adamw" and d["train"]["lr"] == 1e-4
    assert d["train"]["scheduler"] == "cosine_restarts" and d["train"]["restart_epochs"] == 25
    assert d["train"]["save_top_k"] == 3 and d["data"]["crop"] == 512
    assert set(d["data"]) == set(DATA) and set(d["train"]) == set(TRAIN)


def test_precedence_defaults_recipe_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "extends: cpu_small\ndata: {crop: 128, aug: light}\ntrain: {lr: 5.0e-4, epochs: 7}\n"
    )
    cfg = resolve_config(recipe, ["train.lr=3e-4", "batch_size=2", "data.zoom_range=[0.9, 1.1]"])
    assert cfg["data"]["crop"] == 128 and cfg["data"]["aug"] == "light"  # recipe
    assert cfg["train"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 7  # override > recipe
    assert cfg["data"]["batch_size"] == 2  # bare key resolved to data.batch_size
    assert cfg["data"]["zoom_range"] == [0.9, 1.1]
    assert cfg["train"]["weight_decay"] == TRAIN["weight_decay"].default  # default
    assert cfg["model"]["encoder"] == "resnet18" and "loss" in cfg


def test_override_values_are_yaml_with_number_coercion():
    assert parse_override("train.lr=1e-4") == ("train.lr", "1e-4")  # YAML 1.1 string
    cfg = resolve_config(
        "cpu_small",
        [
            "train.lr=1e-4",
            "data.fold=null",
            "train.progress=false",
            "train.devices=2",
            "train.epochs=3.0",
        ],
    )
    assert cfg["train"]["lr"] == 1e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["data"]["fold"] is None and cfg["train"]["progress"] is False
    assert cfg["train"]["devices"] == 2 and cfg["train"]["epochs"] == 3
    cfg = resolve_config("cpu_small", ["model.decoder.channels=[64,32,16]", "loss.agl.kind=mse"])
    assert (
        cfg["model"]["decoder"]["channels"] == [64, 32, 16]
        and cfg["loss"]["agl"]["kind"] == "mse"  # cpu_small's own is huber
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'; did you mean train.lr"),
        ("data.crop=16", "data.crop: 16 is below the minimum 32"),
        ("data.crop=1.5", "data.crop: expected an integer"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("train.progress=3", "train.progress: expected true or false"),
        ("data.aug=extreme", "data.aug: 'extreme' is not one of"),
        ("data.zoom_range=[2, 1]", "data.zoom_range: lo 2.0 is above hi 1.0"),
        ("data.zoom_range=1.2", "data.zoom_range: expected [lo, hi]"),
        ("data.rotate_p=1.5", "data.rotate_p: 1.5 is above the maximum 1"),
        ("data.crop_early_share=2", "data.crop_early_share: 2.0 is above the maximum 1"),
        ("data.crop_early=8", "data.crop_early: 8 is below the minimum 32"),
        ("data.crop_early=96", "set both (a side in px and a share above 0) or neither"),
        ("data.crop_early_share=0.5", "set both (a side in px and a share above 0) or neither"),
        ("train.epochs=null", "train.epochs: may not be null"),
        ("data.fold=5", "data.fold: 5 is not below data.folds (5)"),
        ("optimizer.lr=1", "unknown config key 'optimizer.lr'"),
        ("nonsense", "is not key=value"),
        ("model.colour=red", "model: unknown key(s) ['colour']"),
        (
            "model.direction.hiden=8",
            "model.direction: unknown key(s) ['hiden']; did you mean hidden?",
        ),
        ("model.direction.kind=pooledd", "model.direction.kind: 'pooledd' is not one of"),
        ("model.direction.kind=pooledd", "; did you mean pooled, ramp_pooled?"),
        ("model.scale.kind=flow", "model.scale.kind 'flow' needs a flow head (model.flow: {...})"),
        ("model.scale.hidden=0", "model.scale.hidden: 0 is below the minimum 1"),
        ("model.agl.gsd_ref=0", "model.agl.gsd_ref: 0.0 must be > 0"),
        ("model.agl.city=3", "model.agl.city: expected true or false, got 3"),
        ("model.decoder.channels=[]", "model.decoder.channels: expected a non-empty list"),
        ("model.family=baselin", "model.family: 'baselin' is not one of"),
        ("model.family=baselin", "did you mean baseline"),
        ("loss.agl.kind=cubic", "loss.agl.kind: 'cubic' is not one of"),
        ("loss.agl.trim=1.0", "loss.agl.trim: 1.0 must be < 1"),
        ("loss.agl.weight=-1", "loss.agl.weight: -1.0 is below the minimum 0"),
        ("loss.scale.kind=r2", "loss.scale.kind: 'r2' is not one of ['mse', 'huber', 'l1']"),
        ("loss.vflw.weight=1", "loss: unknown key(s) ['vflw']; did you mean vflow"),
        ("train.devices=0", "train.devices: expected 'auto' or a count"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        resolve_config("cpu_small", [override])
    assert message in str(exc.value)


def test_bad_recipe_sections(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: cpu_small\ntrain: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        resolve_config(recipe)
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve_config("no_such_recipe")


def test_save_and_load_round_trip(tmp_path):
    cfg = resolve_config("cpu_small", ["data.root=/some/data", "train.lr=3e-4"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert resolve_config(str(tmp_path / "config.yaml")) == cfg  # a saved config is a recipe
    (tmp_path / "bad.yaml").write_text("model: [")
    with pytest.raises(GeoposeDataError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
