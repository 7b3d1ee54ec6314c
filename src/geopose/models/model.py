"""GeoposeModel (encoder + decoder + heads), recipes, ``create_model`` and ``load_checkpoint``.

A recipe is a YAML file in ``geopose/configs/`` with a ``model:`` section (read by
:class:`GeoposeModel`), a ``loss:`` section (read by :class:`geopose.models.GeoposeLoss`) and
optional ``data:``/``train:`` sections. ``extends: <recipe>`` deep-merges over another recipe.
Every key of those sections: ``geopose.models.options``; the pose heads: ``geopose.models.pose``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from geopose.errors import ConfigError, GeoposeDataError
from geopose.io.checkpoint import load_torch_file
from geopose.models.decoders import UnetDecoder
from geopose.models.encoders import Encoder
from geopose.models.heads import DenseHead
from geopose.models.options import (
    GEOPOSE,
    MODEL_DEFAULTS,
    MODELS,
    RAMP_FIT,
    resolve_model_config,
)
from geopose.models.pose import DIRECTION_HEADS, SCALE_HEADS, PoseContext
from geopose.types import GeoposeOutput

__all__ = [
    "CONFIG_DIR",
    "MODELS",
    "MODEL_DEFAULTS",
    "GeoposeModel",
    "GeoposeOutput",
    "create_model",
    "deep_merge",
    "list_recipes",
    "load_checkpoint",
    "load_recipe",
    "resolve_model_config",
    "without_pretrained",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DENSE_HEADS = {"agl": 1, "mag": 1, "flow": 2, "ramp": 2, "facade": 1}
"""The dense heads (``model.<name>``, attribute ``<name>_head``) and their output channels."""


def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` updated recursively by ``update`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@MODELS.register(GEOPOSE)
class GeoposeModel(nn.Module):
    """Encoder + UNet decoder + geopose heads, built from a ``model:`` config section.

    ``forward(image B×3×H×W in [0, 1], gsd B (m/px), city B long or None)`` ->
    :class:`GeoposeOutput`. Any H, W work: the image is padded (reflect) to a multiple of
    :attr:`divisor` and the outputs are cropped back. With ``input_stride`` s > 1 the encoder
    reads the image area-averaged by s (s² times fewer pixels to convolve, s times the context
    per receptive field) and the dense heads upsample their outputs by s more. The dense heads
    give AGL (and MAG, flow, ramp maps when configured); the pose heads of
    ``geopose.models.pose`` the direction and scale.
    """

    def __init__(self, cfg: dict | None = None) -> None:
        super().__init__()
        self.config = resolve_model_config(cfg)
        c = self.config
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.reshape(1, 3, 1, 1), persistent=False)
        self.encoder = Encoder(c["encoder"], pretrained=c["pretrained"], **c["encoder_kwargs"])
        dec = c["decoder"]
        self.decoder = UnetDecoder(
            self.encoder.channels,
            self.encoder.reductions,
            channels=list(dec["channels"]),
            output_stride=dec["output_stride"],
            kind=dec["kind"],
        )
        self.input_stride = int(c["input_stride"])
        if self.input_stride & (self.input_stride - 1):
            raise ConfigError(f"model.input_stride: {self.input_stride} is not a power of 2")
        ch, stride = self.decoder.out_channels, self.decoder.output_stride * self.input_stride
        for name, out_channels in DENSE_HEADS.items():  # None: no such head
            opts = {k: v for k, v in (c[name] or {}).items() if k not in RAMP_FIT}
            head = DenseHead(ch, stride, out_channels, **opts) if c[name] is not None else None
            setattr(self, f"{name}_head", head)
        bottleneck = self.encoder.channels[-1]
        d, s = c["direction"], c["scale"]
        self.direction_head = DIRECTION_HEADS.lookup(d["kind"])(d, bottleneck, ch)
        self.scale_head = SCALE_HEADS.lookup(s["kind"])(s, bottleneck, ch)
        # The shared fits' settings (PoseContext): the flow fit's AGL is detached as
        # model.direction.detach_agl says, the ramp fit reads model.ramp.
        ramp_fit = {k: c["ramp"][k] for k in RAMP_FIT} if c["ramp"] is not None else {}
        self._fits = {"flow_detach_agl": d["detach_agl"], "ramp_fit": ramp_fit}

    @classmethod
    def build(cls, config: dict) -> GeoposeModel:
        """The :data:`~geopose.models.options.MODELS` entry point: ``GeoposeModel(config)``."""
        return cls(config)

    @property
    def divisor(self) -> int:
        """Input sizes that need no padding are multiples of this (px): the encoder's stride
        times ``input_stride``."""
        return self.encoder.output_stride * self.input_stride

    def forward(
        self,
        image: torch.Tensor,
        gsd: torch.Tensor | float | None = None,
        city: torch.Tensor | None = None,
    ) -> GeoposeOutput:
        """Image B×3×H×W in [0, 1], GSD B (m/px), city B (long, -1 unknown) -> GeoposeOutput."""
        h, w = image.shape[2], image.shape[3]
        gsd = self._gsd(gsd, image)
        x = self._pad((image - self.mean) / self.std)
        feats = self.encoder(F.avg_pool2d(x, self.input_stride) if self.input_stride > 1 else x)
        dec = self.decoder(feats)
        dense = {n: self._dense(n, dec, gsd, city, h, w) for n in DENSE_HEADS}
        ctx = PoseContext(feats, dec, (x.shape[2], x.shape[3]), gsd, city, **dense, **self._fits)
        return ctx.output(self.direction_head(ctx), self.scale_head(ctx))

    def _dense(self, name: str, dec, gsd, city, h: int, w: int) -> torch.Tensor | None:
        head = getattr(self, f"{name}_head")
        return head(dec, gsd, city)[:, :, :h, :w] if head is not None else None

    def _gsd(self, gsd, image: torch.Tensor) -> torch.Tensor:
        if gsd is None:
            if self._uses_gsd():
                raise ValueError("this model uses the GSD (m/px): pass gsd=")
            gsd = 1.0
        gsd = torch.as_tensor(gsd, dtype=image.dtype, device=image.device)
        return gsd.reshape(-1).expand(image.shape[0])

    def _uses_gsd(self) -> bool:
        heads = [getattr(self, f"{n}_head") for n in DENSE_HEADS]
        heads += [self.direction_head, self.scale_head]
        return any(head is not None and head.uses_gsd for head in heads)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)


# --- recipes ---------------------------------------------------------------------------------


def list_recipes() -> list[str]:
    """Names of the built-in recipes (``geopose/configs/*.yaml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _recipe_path(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s:
        path = Path(s)
        if not path.is_file():
            raise GeoposeDataError(path, "no such recipe file")
        return path
    path = CONFIG_DIR / f"{s}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {s!r}; built-in recipes: {', '.join(list_recipes())}")
    return path


def load_recipe(name_or_path: str | Path, _seen: tuple[str, ...] = ()) -> dict:
    """A recipe by name (``baseline``, ``cpu_small``, ...) or YAML path -> the whole recipe dict
    (``model``, ``loss`` and optional ``data``/``train``), with ``extends:`` resolved."""
    path = _recipe_path(name_or_path)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GeoposeDataError(path, f"not a readable YAML recipe ({exc})") from exc
    if not isinstance(recipe, dict):
        raise GeoposeDataError(path, "a recipe must be a YAML mapping with a 'model:' section")
    parent = recipe.pop("extends", None)
    if parent is not None:
        if str(parent) in _seen:
            raise GeoposeDataError(path, f"recipe 'extends' loop through {parent!r}")
        recipe = deep_merge(load_recipe(parent, (*_seen, str(name_or_path))), recipe)
    if not isinstance(recipe.get("model"), dict):
        raise GeoposeDataError(path, "recipe has no 'model:' mapping")
    recipe.setdefault("name", path.stem)
    return recipe


def create_model(recipe: str | Path | dict = "baseline", **overrides: Any) -> nn.Module:
    """Build a model from a recipe name, a YAML path, a whole recipe dict or a ``model:``
    section; keyword overrides are deep-merged into the model section, e.g.
    ``create_model("kbrodt", encoder="resnet18", decoder={"channels": [64, 32, 16]})``.

    A :class:`GeoposeModel`, or a published family's model (``geopose.models.zoo``) for a
    section with ``family:``; both keep the same ``forward(image, gsd, city)`` contract.
    """
    if isinstance(recipe, dict):
        model_cfg = recipe["model"] if isinstance(recipe.get("model"), dict) else recipe
    else:
        model_cfg = load_recipe(recipe)["model"]
    cfg = deep_merge(model_cfg, overrides)
    family = MODELS.lookup(cfg.get("family", GEOPOSE))
    return family.build({k: v for k, v in cfg.items() if k != "family"})


def without_pretrained(model_cfg: dict) -> dict:
    """A ``model:`` section whose encoder is built without ImageNet weights: for models whose
    weights all come from a checkpoint (loading, resuming, fine-tuning)."""
    if model_cfg.get("family", GEOPOSE) != GEOPOSE:
        return dict(model_cfg)
    return {**resolve_model_config(model_cfg), "pretrained": False}


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", ckpt: dict | None = None
) -> tuple[nn.Module, dict]:
    """Read a geopose (Lightning) checkpoint -> ``(model.eval(), config)``.

    The checkpoint holds ``hyper_parameters.config`` (the full recipe, with ``model:``) and a
    ``state_dict`` whose model keys start with ``model.``; ``ckpt`` is its content when already
    read. Raises GeoposeDataError for a missing, corrupt or non-geopose file. (Published
    challenge files: ``geopose.models.load_model``.)
    """
    path = Path(path)
    if ckpt is None:
        if not path.is_file():
            raise GeoposeDataError(path, "no such checkpoint file")
        ckpt = load_torch_file(path, map_location)
    config = (ckpt.get("hyper_parameters") or {}).get("config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise GeoposeDataError(path, "not a geopose checkpoint (no hyper_parameters.config.model)")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise GeoposeDataError(path, "not a geopose checkpoint (no state_dict)")
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        # The checkpoint holds every weight: never fetch the encoder's ImageNet weights here.
        model = create_model(without_pretrained(config["model"]))
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, ConfigError) as exc:
        problem = f"weights do not fit the checkpoint's model config: {str(exc)[:300]}"
        raise GeoposeDataError(path, problem) from exc
    return model.eval(), config
