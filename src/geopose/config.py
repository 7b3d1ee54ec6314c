"""Training configuration: defaults of the ``data:`` and ``train:`` sections, merged with a
recipe (``model:``/``loss:`` and optional ``data:``/``train:``) and ``key=value`` overrides.

Every section has the same typed schema (:class:`~geopose.models.schema.Opt`: default, kind,
bounds, choices, help): ``data:``/``train:`` here, ``model:``/``loss:`` in
:mod:`geopose.models.options`.

Precedence: defaults < recipe < overrides. An override is a dotted key and a YAML value
(``train.lr=3e-4``, ``data.zoom_range=[0.8,1.25]``, ``model.encoder=resnet34``); a bare key
(``lr=3e-4``) is accepted when it names exactly one ``data``/``train`` key. An unknown key or a
bad value raises :class:`~geopose.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from geopose.errors import ConfigError
from geopose.models import schema
from geopose.models.schema import Opt, check_value, defaults_of, did_you_mean

AUG_LEVELS = ("none", "light", "heavy")


DATA: dict[str, Opt] = {
    "root": Opt(None, "path", "data folder (competition layout) or prepared cache", nullable=True),
    "crop": Opt(512, "int", "training crop side, px (after augmentation)", min=32),
    "crop_early": Opt(
        None,
        "int",
        "crop side, px, for the first data.crop_early_share of training (null: data.crop)",
        min=32,
        nullable=True,
    ),
    "crop_early_share": Opt(
        0.0,
        "float",
        "share of training (of its steps or of train.max_minutes, whichever is further along) "
        "on data.crop_early crops, switched at epoch starts",
        min=0,
        max=1,
    ),
    "batch_size": Opt(8, "int", "training batch per process", min=1),
    "val_batch_size": Opt(1, "int", "validation batch (full images)", min=1),
    "workers": Opt(4, "int", "DataLoader worker processes per training process", min=0),
    "samples_per_epoch": Opt(
        None, "int", "crops per epoch (null: one per image)", min=1, nullable=True
    ),
    "folds": Opt(5, "int", "number of folds K", min=2),
    "fold": Opt(
        0, "int", "validation fold (null: train on all, no validation)", min=0, nullable=True
    ),
    "fold_scheme": Opt(
        "stratified",
        "str",
        "stratified (by city) | city (hold out cities)",
        choices=("stratified", "city"),
    ),
    "fold_seed": Opt(0, "int", "seed of the stratified split", min=0),
    "folds_csv": Opt(None, "path", "folds csv, written once (null: RUN/folds.csv)", nullable=True),
    "val_max_images": Opt(None, "int", "validate on at most N images", min=1, nullable=True),
    "downsample": Opt(
        None, "int", "train at 1/N resolution (null: as the data is)", min=1, nullable=True
    ),
    "aug": Opt("heavy", "str", "augmentation level for both kinds", choices=AUG_LEVELS),
    "geometric": Opt(
        None, "str", "geometric level (null: = aug)", choices=AUG_LEVELS, nullable=True
    ),
    "photometric": Opt(
        None, "str", "photometric level (null: = aug)", choices=AUG_LEVELS, nullable=True
    ),
    "d4": Opt(None, "bool", "random flips/transposes/quarter turns (null: level's)", nullable=True),
    "rotate_p": Opt(
        None, "float", "probability of an arbitrary-angle rotation", min=0, max=1, nullable=True
    ),
    "zoom_range": Opt(
        None, "range", "[lo, hi] zoom factors (gsd / f, scale * f)", min=0.05, nullable=True
    ),
    "zoom_p": Opt(None, "float", "probability of a zoom", min=0, max=1, nullable=True),
    "height_p": Opt(None, "float", "probability of height scaling", min=0, max=1, nullable=True),
    "height_range": Opt(None, "range", "[lo, hi] height factors k", min=0.1, nullable=True),
}

TRAIN: dict[str, Opt] = {
    "epochs": Opt(100, "int", "maximum epochs", min=1),
    "max_steps": Opt(-1, "int", "maximum optimizer steps (-1: by epochs)", min=-1),
    "max_minutes": Opt(None, "float", "wall-clock budget, minutes", min=0, nullable=True),
    "optimizer": Opt("adamw", "str", "optimizer", choices=("adamw", "adam", "sgd")),
    "lr": Opt(1e-4, "float", "peak learning rate", min=0),
    "weight_decay": Opt(1e-2, "float", "weight decay", min=0),
    "momentum": Opt(0.9, "float", "SGD momentum", min=0, max=1),
    "scheduler": Opt(
        "cosine_restarts",
        "str",
        "learning-rate schedule",
        choices=("cosine_restarts", "cosine", "step", "plateau", "constant"),
    ),
    "restart_epochs": Opt(25, "float", "cosine_restarts period, epochs", min=0.01),
    "restart_mult": Opt(1.0, "float", "cosine_restarts period growth per restart", min=1),
    "step_epochs": Opt(30, "float", "step: epochs between decays", min=0.01),
    "gamma": Opt(0.1, "float", "step/plateau: decay factor", min=0, max=1),
    "patience": Opt(5, "int", "plateau: epochs without improvement", min=0),
    "warmup_steps": Opt(0, "int", "linear warm-up steps", min=0),
    "min_lr": Opt(1e-6, "float", "floor of the cosine schedules", min=0),
    "grad_clip": Opt(1.0, "float", "max gradient norm (null: no clipping)", min=0, nullable=True),
    "accumulate": Opt(1, "int", "batches per optimizer step", min=1),
    "ema_decay": Opt(
        None,
        "float",
        "exponential moving average of the weights, decay per step (validated, checkpointed "
        "and predicted with; null: off)",
        min=0,
        lt=1,
        nullable=True,
    ),
    "precision": Opt(
        "auto",
        "str",
        "auto: bf16-mixed on GPU and on CPUs with native bf16, else 32-true",
        choices=("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
    ),
    "accelerator": Opt("auto", "str", "auto | cpu | gpu", choices=("auto", "cpu", "gpu", "cuda")),
    "devices": Opt("auto", "devices", "auto (all GPUs / torchrun's) or a count"),
    "num_nodes": Opt(1, "int", "nodes (torchrun / SLURM)", min=1),
    "strategy": Opt(
        "auto",
        "str",
        "auto | ddp | ddp_find_unused_parameters_true | ddp_spawn",
        choices=("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_spawn"),
    ),
    "seed": Opt(0, "int", "seed of data order, augmentation and initialisation", min=0),
    "save_top_k": Opt(3, "int", "best checkpoints kept by validation score", min=0),
    "ckpt_every_steps": Opt(
        None, "int", "also refresh last.ckpt every N steps", min=1, nullable=True
    ),
    "val_every": Opt(1, "int", "validate every N epochs", min=1),
    "log_every": Opt(20, "int", "log every N steps", min=1),
    "progress": Opt(True, "bool", "rich progress bar"),
    "deterministic": Opt(False, "bool", "deterministic torch algorithms"),
    "init_from": Opt(
        None, "path", "start from these weights: a checkpoint, a published model", nullable=True
    ),
}

SECTIONS: dict[str, dict[str, Opt]] = {"data": DATA, "train": TRAIN}


def defaults() -> dict[str, dict[str, Any]]:
    """The ``data:`` and ``train:`` sections with every default filled in."""
    return {name: defaults_of(spec) for name, spec in SECTIONS.items()}


# --- checks -------------------------------------------------------------------------------


def _unknown(key: str, known: list[str]) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}{did_you_mean(key, known)}")


def check_section(name: str, section: Any) -> dict[str, Any]:
    """Check a whole ``data:``/``train:`` section (keys and values) and fill its defaults."""
    spec = SECTIONS[name]
    for key in section if isinstance(section, dict) else ():
        if key not in spec:
            raise _unknown(f"{name}.{key}", [f"{name}.{k}" for k in spec])
    return schema.check_section(name, spec, section)


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
    owners = [name for name, spec in SECTIONS.items() if key in spec]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    known = [f"{n}.{k}" for n, spec in SECTIONS.items() for k in spec]
    raise _unknown(key, known + [k.split(".", 1)[1] for k in known])


def apply_override(cfg: dict, key: str, value: Any) -> None:
    """Set one dotted ``key`` in ``cfg`` in place, checking ``data``/``train`` keys and values.

    ``model.*`` and ``loss.*`` keys are set as given; the model and loss builders check them
    (see :func:`check_config`).
    """
    key = _full_key(key)
    parts = key.split(".")
    section = parts[0]
    if section in SECTIONS:
        if len(parts) != 2 or parts[1] not in SECTIONS[section]:
            raise _unknown(key, [f"{section}.{k}" for k in SECTIONS[section]])
        cfg.setdefault(section, {})[parts[1]] = check_value(key, value, SECTIONS[section][parts[1]])
        return
    if section not in ("model", "loss"):
        raise _unknown(key, ["data.*", "train.*", "model.*", "loss.*"])
    node = cfg.setdefault(section, {})
    for p in parts[1:-1]:
        nxt = node.get(p)
        if nxt is None or nxt is True:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p!r} is not a mapping in the recipe")
        node = nxt
    node[parts[-1]] = value


def check_config(cfg: dict) -> dict:
    """Check every section of a resolved config: ``data``/``train`` here, ``model``/``loss``
    by the model and loss builders (both raise ConfigError)."""
    from geopose.models import resolve_loss_config, resolve_model_config

    for name in SECTIONS:
        cfg[name] = check_section(name, cfg.get(name))
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

    The result holds ``model``, ``loss``, ``data`` and ``train`` sections (every key filled)
    and the recipe's ``name``; it is what ``geopose train`` saves next to its checkpoints.
    """
    from geopose.models import load_recipe

    base = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    cfg = copy.deepcopy(base)
    for name in SECTIONS:
        cfg[name] = check_section(name, base.get(name))
    for text in overrides or []:
        apply_override(cfg, *parse_override(text))
    return check_config(cfg)


def save_config(cfg: dict, path: str | Path, overwrite: bool = True) -> Path:
    """Write a config as YAML, atomically."""
    from geopose.io import write_text_atomic

    text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
    return write_text_atomic(path, text, overwrite)


def load_config(path: str | Path) -> dict:
    """Read a config YAML written by :func:`save_config` (GeoposeDataError if unreadable)."""
    from geopose.errors import GeoposeDataError

    path = Path(path)
    if not path.is_file():
        raise GeoposeDataError(path, "config file not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GeoposeDataError(path, f"not a readable YAML config ({exc})") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise GeoposeDataError(path, "not a geopose config (no 'model:' mapping)")
    return cfg
