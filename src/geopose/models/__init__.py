"""Geopose models: timm encoders, UNet decoders, geopose heads, losses, recipes, ONNX export.

>>> from geopose.models import create_model, GeoposeLoss, load_recipe
>>> model = create_model("cpu_small")                     # or any recipe name / YAML path
>>> out = model(image, gsd, city)              # GeoposeOutput(agl, mag, direction, scale, ...)
>>> total, parts = GeoposeLoss(load_recipe("cpu_small")["loss"])(out, batch)
>>> model, config = load_model("runs/x/checkpoints/last.ckpt")   # or a published model / file
"""

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
    CONFIG_DIR,
    MODELS,
    GeoposeModel,
    GeoposeOutput,
    create_model,
    deep_merge,
    list_recipes,
    load_checkpoint,
    load_recipe,
    resolve_model_config,
)

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
