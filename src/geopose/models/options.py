"""Every key of a recipe's ``model:`` and ``loss:`` sections, with its default, kind, bounds,
choices and help (the typed schema of :mod:`geopose.models.schema`, as ``data:``/``train:`` in
:mod:`geopose.config`), and :data:`MODELS`, the registry ``create_model`` builds from.

``resolve_model_config`` and ``resolve_loss_config`` fill a section's defaults and check every
key and value; a bad one raises :class:`~geopose.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import importlib
from typing import Any

from geopose.errors import ConfigError
from geopose.models.decoders import BLOCKS
from geopose.models.heads import (
    ACTIVATIONS,
    AGL_GSD_MODES,
    GSD_REF,
    MAX_SLOPE,
    MIN_SLOPE,
    OUT_ACTIVATIONS,
    RAMP_HUBER,
    RAMP_ITERATIONS,
    SCALE_GSD_MODES,
)
from geopose.models.pose import DIRECTION_HEADS, SCALE_HEADS
from geopose.models.schema import (
    Opt,
    Registry,
    Section,
    check_section,
    defaults_of,
)

GEOPOSE = "geopose"
"""The :data:`MODELS` name of :class:`~geopose.models.GeoposeModel` (a section without
``family:``)."""


def _import_models() -> None:
    importlib.import_module("geopose.models.model")
    importlib.import_module("geopose.models.zoo")  # each family module registers itself


MODELS: Registry[Any] = Registry("model.family", populate=_import_models)
"""Model builders by name: ``MODELS.lookup(name).build(config)`` -> nn.Module. ``geopose``
(GeoposeModel) and each published family of ``geopose.models.zoo``."""


# --- model: ---------------------------------------------------------------------------------

_ACTIVATION = Opt("relu", "str", "hidden activation", choices=tuple(ACTIVATIONS))
_CITY = Opt(False, "bool", "city one-hot as an input cue")
_GSD_REF = Opt(GSD_REF, "float", "GSD (m/px) where the log(gsd / gsd_ref) cue is 0", gt=0)
_HIDDEN = Opt(256, "int", "hidden width of the pooled MLP", min=1)
_DROPOUT = Opt(0.0, "float", "dropout before the MLP's last layer", min=0, max=1)
_DETACH_AGL = Opt(True, "bool", "no gradient into AGL through the pose fit")


def _dense(out_scale: float, **more: Opt) -> dict[str, Opt]:
    """A dense head's options (geopose.models.heads.DenseHead)."""
    return {
        "channels": Opt(64, "int", "channels of the upsampling convolutions", min=1),
        "activation": _ACTIVATION,
        "out_activation": Opt(
            "none", "str", "applied to the raw output", choices=tuple(OUT_ACTIVATIONS)
        ),
        "out_scale": Opt(out_scale, "float", "output unit: raw O(1) values times this"),
        "city": _CITY,
        "upsample": Opt(
            "features",
            "str",
            "features: convolve at every ×2 step; output: at the decoder's stride, then "
            "upsample the output (cheaper)",
            choices=("features", "output"),
        ),
        "depth": Opt(1, "int", "1 + extra 3×3 convolutions at the head's last resolution", min=1),
        "dilation": Opt(1, "int", "dilation of the convolutions after the first", min=1),
        **more,
    }


RAMP_FIT: dict[str, Opt] = {
    "iterations": Opt(RAMP_ITERATIONS, "int", "IRLS iterations of the ramp fit", min=1),
    "huber": Opt(RAMP_HUBER, "float", "Huber threshold of the fit's residual", gt=0),
    "min_slope": Opt(MIN_SLOPE, "float", "flattest facade slope, m/px", min=0),
    "max_slope": Opt(MAX_SLOPE, "float", "steepest facade slope, m/px", gt=0),
    "facade_power": Opt(1.0, "float", "a pixel's weight: facade probability ** this", gt=0),
}
"""The ramp head's fit (geopose.models.heads.ramp_pose), keys of ``model.ramp``."""

MODEL: dict[str, Opt | Section] = {
    "encoder": Opt("resnet34", "str", "timm model name"),
    "pretrained": Opt(False, "bool", "start from timm's ImageNet weights"),
    "encoder_kwargs": Opt({}, "mapping", "more keyword arguments of timm.create_model"),
    "input_stride": Opt(
        1, "int", "the encoder reads the image area-averaged by this (a power of 2)", min=1
    ),
    "decoder": Section(
        {
            "kind": Opt("unet", "str", "decoder block", choices=tuple(BLOCKS)),
            "channels": Opt([256, 128, 64, 32], "ints", "block channels, deepest first", min=1),
            "output_stride": Opt(4, "int", "stride of the decoder map (a power of 2)", min=1),
        },
        "UNet decoder",
    ),
    "agl": Section(
        _dense(
            10.0,
            gsd=Opt("concat", "str", "how the GSD enters", choices=AGL_GSD_MODES),
            gsd_ref=_GSD_REF,
        ),
        "height above ground (m) head",
    ),
    "mag": Section(_dense(10.0), "MAG (px) head; null: MAG = AGL · scale", optional=True),
    "flow": Section(_dense(10.0), "dense flow (px) head", optional=True, present=False),
    "ramp": Section(
        {**_dense(1.0), **RAMP_FIT}, "facade-ramp (m/px) head", optional=True, present=False
    ),
    "facade": Section(
        _dense(1.0),
        "facade logits head: weighs the ramp fit's pixels by sigmoid(logit)",
        optional=True,
        present=False,
    ),
    "direction": Section(
        {
            "kind": Opt("pooled", "str", "direction head", choices=DIRECTION_HEADS),
            "hidden": _HIDDEN,
            "activation": _ACTIVATION,
            "dropout": _DROPOUT,
            "gsd": Opt(False, "bool", "pooled: log-GSD cue"),
            "city": _CITY,
            "gsd_ref": _GSD_REF,
            "channels": Opt(64, "int", "dense_attention: field channels", min=1),
            "beta": Opt(1.0, "float", "dense_attention: initial softmax sharpness, 1/m", gt=0),
            "detach_agl": _DETACH_AGL,
            "ramp_input": Opt(
                False, "bool", "ramp_pooled: the fit's direction is an input of the MLP too"
            ),
            "fit_grad": Opt(
                False,
                "bool",
                "ramp_pooled: the direction loss reaches the ramp and facade heads through the fit",
            ),
        },
        "image-level direction",
    ),
    "scale": Section(
        {
            "kind": Opt("lstsq", "str", "scale head", choices=SCALE_HEADS),
            "hidden": _HIDDEN,
            "activation": _ACTIVATION,
            "dropout": _DROPOUT,
            "gsd": Opt("concat", "str", "regress: how the GSD enters", choices=SCALE_GSD_MODES),
            "gsd_ref": _GSD_REF,
            "city": _CITY,
            "out_scale": Opt(1.0, "float", "regress: output unit, px/m"),
            "detach_agl": _DETACH_AGL,
        },
        "image-level scale (px/m)",
    ),
}
"""Every key of a GeoposeModel's ``model:`` section."""

MODEL_DEFAULTS: dict[str, Any] = defaults_of(MODEL)
"""The ``model:`` section with every default (None for a head that is off by default)."""


def resolve_model_config(cfg: dict | None) -> dict:
    """Fill a ``model:`` section with defaults and check every key; returns a new dict.

    A section with ``family:`` describes a published model (``geopose.models.zoo``); it is
    returned as it is once the family is known (its ``build`` checks the rest).
    """
    cfg = dict(cfg or {})
    if cfg.get("family", GEOPOSE) != GEOPOSE:
        MODELS.lookup(cfg["family"])
        return cfg
    cfg.pop("family", None)
    if isinstance(cfg.get("encoder"), dict):  # encoder: {name: ..., pretrained: ..., ...}
        enc = dict(cfg.pop("encoder"))
        cfg["encoder"] = enc.pop("name", MODEL["encoder"].default)
        cfg["pretrained"] = enc.pop("pretrained", cfg.get("pretrained", False))
        cfg["encoder_kwargs"] = {**cfg.get("encoder_kwargs", {}), **enc}
    out = check_section("model", MODEL, cfg)
    _check_consistency(out)
    return out


def _check_consistency(cfg: dict) -> None:
    for section, heads in (("direction", DIRECTION_HEADS), ("scale", SCALE_HEADS)):
        kind = cfg[section]["kind"]
        needs = heads.lookup(kind).requires
        if needs and all(cfg[n] is None for n in needs):
            raise ConfigError(
                f"model.{section}.kind {kind!r} needs a {' or '.join(needs)} head "
                f"(model.{needs[0]}: {{...}})"
            )
    r = cfg["ramp"]
    if r is not None and not r["min_slope"] < r["max_slope"]:
        raise ConfigError(
            f"model.ramp: need min_slope < max_slope (m/px), got {r['min_slope']} and "
            f"{r['max_slope']}"
        )
    if cfg["facade"] is not None and r is None:
        raise ConfigError("model.facade weighs the ramp fit: it needs a ramp head (model.ramp)")


# --- loss: ----------------------------------------------------------------------------------

LOSS_KINDS = ("mse", "huber", "l1", "r2")


def _target(weight: float, kinds: tuple[str, ...] = LOSS_KINDS, **more: Opt) -> dict[str, Opt]:
    """A per-target loss's options (geopose.models.losses.masked_loss)."""
    return {
        "kind": Opt("mse", "str", "pointwise loss, or r2 (1 - pooled R2)", choices=kinds),
        "weight": Opt(weight, "float", "weight in the total (0: off)", min=0),
        "delta": Opt(1.0, "float", "huber: threshold, in the target's unit", gt=0),
        **more,
    }


_TRIM = Opt(0.0, "float", "drop this fraction of the worst valid pixels", min=0, lt=1)
LOSS: dict[str, Opt | Section] = {
    "agl": Section(_target(1.0, trim=_TRIM), "AGL (m)", optional=True),
    "mag": Section(_target(1.0, trim=_TRIM), "MAG (px)", optional=True),
    "direction": Section(
        {
            "weight": Opt(1.0, "float", "weight in the total (0: off)", min=0),
            "cos_weight": Opt(1.0, "float", "weight of mean(1 - cos)", min=0),
            "mse_weight": Opt(0.1, "float", "weight of the vectors' MSE", min=0),
        },
        "direction (unit vectors)",
        optional=True,
    ),
    "scale": Section(_target(1.0, ("mse", "huber", "l1")), "scale (px/m)", optional=True),
    "flow": Section(_target(0.0, trim=_TRIM), "dense flow vs true flow (px)", optional=True),
    "vflow": Section(
        _target(0.0, trim=_TRIM), "agl · scale · direction vs true flow (px)", optional=True
    ),
    "facade": Section(
        {
            "weight": Opt(1.0, "float", "weight in the total (0: off)", min=0),
            "tol": Opt(
                RAMP_HUBER, "float", "a facade obeys ∇z·v = -1 to within this (true pose)", gt=0
            ),
        },
        "facade logits vs the true facades (binary cross-entropy)",
        optional=True,
        present=False,
    ),
    "ramp": Section(
        _target(
            0.0,
            trim=_TRIM,
            max_slope=Opt(MAX_SLOPE, "float", "steepest ramp of the target, m/px", gt=0),
        ),
        "facade-ramp field vs ∇(true AGL) (m/px)",
        optional=True,
    ),
}
"""Every key of a ``loss:`` section, one entry per target."""

LOSS_DEFAULTS: dict[str, dict | None] = defaults_of(LOSS)
"""The ``loss:`` section with every default."""


def resolve_loss_config(cfg: dict | None) -> dict:
    """Fill a ``loss:`` section with defaults; targets with weight 0 or null become None."""
    out = check_section("loss", LOSS, cfg)
    return {k: None if v is None or v["weight"] == 0.0 else v for k, v in out.items()}
