"""Geopose models: timm encoders, UNet decoders, geopose heads, losses, ONNX export.

>>> from geopose.models import create_model, GeoposeLoss, load_recipe
>>> model = create_model("cpu_small")                     # or any recipe name / YAML path
>>> out = model(image, gsd, city)              # GeoposeOutput(agl, mag, direction, scale, ...)
>>> total, parts = GeoposeLoss(load_recipe("cpu_small")["loss"])(out, batch)
>>> model, config = load_model("runs/x/checkpoints/last.ckpt")   # or a published model / file

Each part declares the config keys it reads next to its class (``options``, tables of
:class:`geopose.schema.Opt`); the ``model:`` and ``loss:`` sections gather them
(``geopose.models.model.MODEL``, ``geopose.models.losses.LOSS``). Importing this package
imports every module that registers a part (the pose heads, ``GeoposeModel``, the published
families of ``geopose.models.zoo``), so its registries are complete. Recipes are read by
:mod:`geopose.schema`; the configuration as a whole is :mod:`geopose.config`.
"""

from geopose.models import zoo  # noqa: F401  (registers the published families in MODELS)
from geopose.models.decoders import UnetDecoder
from geopose.models.encoders import Encoder
from geopose.models.loading import expand_specs, load_model, resolve_spec
from geopose.models.losses import (
    GeoposeLoss,
    direction_loss,
    masked_loss,
    r2_loss,
    resolve_loss_config,
)
from geopose.models.model import (
    GeoposeModel,
    GeoposeOutput,
    create_model,
    load_checkpoint,
    resolve_model_config,
)
from geopose.models.registry import MODELS
from geopose.schema import CONFIG_DIR, deep_merge, list_recipes, load_recipe

__all__ = [
    "CONFIG_DIR",
    "MODELS",
    "Encoder",
    "GeoposeLoss",
    "GeoposeModel",
    "GeoposeOutput",
    "UnetDecoder",
    "create_model",
    "deep_merge",
    "direction_loss",
    "expand_specs",
    "list_recipes",
    "load_checkpoint",
    "load_model",
    "load_recipe",
    "masked_loss",
    "r2_loss",
    "resolve_loss_config",
    "resolve_model_config",
    "resolve_spec",
]
