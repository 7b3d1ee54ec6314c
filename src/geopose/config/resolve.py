"""A whole config from a recipe: defaults < recipe < ``key=value`` overrides, every section
checked.

An override is a dotted key and a YAML value (``train.lr=3e-4``, ``data.zoom_range=[0.8,1.25]``,
``model.encoder=resnet34``); a bare key (``lr=3e-4``) is accepted when it names exactly one
``data``/``train`` key. An unknown key or a bad value raises
:class:`~geopose.errors.ConfigError` naming the key, with a did-you-mean.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from geopose.config.sections import RUN_SECTIONS
from geopose.errors import ConfigError
from geopose.models.losses import resolve_loss_config
from geopose.models.model import resolve_model_config, switch_kinds
from geopose.schema import check_section, check_value, did_you_mean, load_recipe


def _unknown(key: str, known: list[str]) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}{did_you_mean(key, known)}")


def check_run_section(name: str, section: Any) -> dict[str, Any]:
    """Check a whole ``data:``/``train:`` section (keys and values) and fill its defaults."""
    spec = RUN_SECTIONS[name]
    for key in section if isinstance(section, dict) else ():
        if key not in spec:
            raise _unknown(f"{name}.{key}", [f"{name}.{k}" for k in spec])
    return check_section(name, spec, section)


# --- overrides ------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", "3e-4" parsed as YAML)``."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: value {raw!r} is not valid YAML ({exc})") from None
    return key, value


def _full_key(key: str) -> str:
    if "." in key:
        return key
    owners = [name for name, spec in RUN_SECTIONS.items() if key in spec]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    known = [f"{n}.{k}" for n, spec in RUN_SECTIONS.items() for k in spec]
    raise _unknown(key, known + [k.split(".", 1)[1] for k in known])


def apply_override(cfg: dict, key: str, value: Any) -> None:
    """Set one dotted ``key`` in ``cfg`` in place, checking ``data``/``train`` keys and values.

    ``model.*`` and ``loss.*`` keys are set as given (one that switches a pose head's kind,
    ``model.scale.kind=flow``, drops the options the new kind does not read:
    :func:`~geopose.models.model.switch_kinds`); :func:`check_config` checks them.
    """
    key = _full_key(key)
    parts = key.split(".")
    section = parts[0]
    if section in RUN_SECTIONS:
        spec = RUN_SECTIONS[section]
        if len(parts) != 2 or parts[1] not in spec:
            raise _unknown(key, [f"{section}.{k}" for k in spec])
        cfg.setdefault(section, {})[parts[1]] = check_value(key, value, spec[parts[1]])
        return
    if section not in ("model", "loss"):
        raise _unknown(key, ["data.*", "train.*", "model.*", "loss.*"])
    before = copy.deepcopy(cfg.get(section) or {})
    node = cfg.setdefault(section, {})
    for p in parts[1:-1]:
        nxt = node.get(p)
        if nxt is None or nxt is True:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p!r} is not a mapping in the recipe")
        node = nxt
    node[parts[-1]] = value
    if section == "model":
        given = value
        for p in reversed(parts[1:]):
            given = {p: given}
        cfg["model"] = switch_kinds(before, cfg["model"], given)


# --- the whole config -----------------------------------------------------------------------


def check_config(cfg: dict) -> dict:
    """Check every section of a config in place: ``data``/``train`` are filled in, ``model``
    and ``loss`` checked and kept as given (the model and loss builders fill them)."""
    for name in RUN_SECTIONS:
        cfg[name] = check_run_section(name, cfg.get(name))
    resolve_model_config(cfg.get("model"))
    resolve_loss_config(cfg.get("loss"))
    d = cfg["data"]
    if d["fold"] is not None and d["fold"] >= d["folds"]:
        raise ConfigError(f"data.fold: {d['fold']} is not below data.folds ({d['folds']})")
    if (d["crop_early"] is None) != (d["crop_early_share"] == 0):
        raise ConfigError(  # one without the other would silently do nothing
            "data.crop_early and data.crop_early_share: set both (a side in px and a share "
            f"above 0) or neither; got {d['crop_early']} and {d['crop_early_share']}"
        )
    return cfg


def resolve_config(recipe: str | Path | dict, overrides: list[str] | None = None) -> dict:
    """Recipe (name, YAML path or dict) + defaults + ``key=value`` overrides -> full config.

    The result holds ``model``, ``loss``, ``data`` and ``train`` sections (``data``/``train``
    with every key filled) and the recipe's ``name``; it is what ``geopose train`` saves next
    to its checkpoints.
    """
    base = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    cfg = copy.deepcopy(base)
    for name in RUN_SECTIONS:
        cfg[name] = check_run_section(name, base.get(name))
    for text in overrides or []:
        apply_override(cfg, *parse_override(text))
    return check_config(cfg)
