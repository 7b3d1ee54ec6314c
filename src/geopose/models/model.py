"""GeoposeModel (encoder + decoder + heads), recipes, ``create_model`` and ``load_checkpoint``.

A recipe is a YAML file in ``geopose/configs/`` with a ``model:`` section (read by
:class:`GeoposeModel`), a ``loss:`` section (read by :class:`geopose.models.GeoposeLoss`) and
optional ``data:``/``train:`` sections. ``extends: <recipe>`` deep-merges over another recipe.
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
from geopose.models.decoders import UnetDecoder
from geopose.models.encoders import Encoder
from geopose.models.heads import (
    DenseHead,
    DenseOrientationHead,
    OrientationHead,
    ScaleHead,
    flow_pose,
    lstsq_scale,
    ramp_pose,
)
from geopose.types import GeoposeOutput

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Every key a model section may hold, with its default. ``None`` for mag/flow = no such head.
_DENSE = {
    "channels": 64,
    "activation": "relu",
    "out_activation": "none",
    "out_scale": 10.0,
    "city": False,
}
# The ramp head's fit (see heads.ramp_pose): IRLS iterations, Huber threshold, slopes (m/px).
_RAMP_FIT = {"iterations": 5, "huber": 0.3, "min_slope": 0.3, "max_slope": 3.0}
_RAMP = {**_DENSE, "out_scale": 1.0, **_RAMP_FIT}
_OPTIONAL_DENSE = {"mag": _DENSE, "flow": _DENSE, "ramp": _RAMP}
MODEL_DEFAULTS: dict[str, Any] = {
    "encoder": "resnet34",
    "pretrained": False,
    "encoder_kwargs": {},
    "decoder": {"kind": "unet", "channels": [256, 128, 64, 32], "output_stride": 4},
    "agl": {**_DENSE, "gsd": "concat", "gsd_ref": 0.3},
    "mag": dict(_DENSE),
    "flow": None,
    "ramp": None,
    "direction": {
        "kind": "pooled",  # pooled | dense_attention | flow | ramp
        "hidden": 256,
        "activation": "relu",
        "dropout": 0.0,
        "gsd": False,
        "city": False,
        "gsd_ref": 0.3,
        "channels": 64,  # dense_attention only
        "beta": 1.0,  # dense_attention only: initial softmax sharpness, 1/m
        "detach_agl": True,  # dense_attention and flow
    },
    "scale": {
        "kind": "lstsq",  # lstsq (Σ mag·agl / Σ agl²) | regress | flow | ramp
        "hidden": 256,
        "activation": "relu",
        "dropout": 0.0,
        "gsd": "concat",  # regress: none | concat | divide | both
        "gsd_ref": 0.3,
        "city": False,
        "out_scale": 1.0,
        "detach_agl": True,
    },
}
DIRECTION_KINDS = ("pooled", "dense_attention", "flow", "ramp")
SCALE_KINDS = ("lstsq", "regress", "flow", "ramp")


def deep_merge(base: dict, update: dict) -> dict:
    """Return ``base`` updated recursively by ``update`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(cfg: dict, defaults: dict, where: str) -> None:
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(defaults)}")


def resolve_model_config(cfg: dict | None) -> dict:
    """Fill a ``model:`` section with defaults and check every key; returns a new dict.

    A section with ``family:`` describes a published model (``geopose.models.zoo``); it is
    returned as it is once the family is known.
    """
    cfg = dict(cfg or {})
    if "family" in cfg:
        from geopose.models.zoo import FAMILIES

        if cfg["family"] not in FAMILIES:
            raise ConfigError(f"model.family {cfg['family']!r} is not one of {sorted(FAMILIES)}")
        return cfg
    if isinstance(cfg.get("encoder"), dict):  # encoder: {name: ..., pretrained: ..., ...}
        enc = dict(cfg.pop("encoder"))
        cfg["encoder"] = enc.pop("name", MODEL_DEFAULTS["encoder"])
        cfg["pretrained"] = enc.pop("pretrained", cfg.get("pretrained", False))
        cfg["encoder_kwargs"] = {**cfg.get("encoder_kwargs", {}), **enc}
    _check_keys(cfg, MODEL_DEFAULTS, "model")
    out = copy.deepcopy(MODEL_DEFAULTS)
    for key, value in cfg.items():
        default = MODEL_DEFAULTS[key]
        if key in _OPTIONAL_DENSE:
            if value is None or value is False:
                out[key] = None
                continue
            value = {} if value is True else value
            default = _OPTIONAL_DENSE[key]
        if isinstance(default, dict) and key != "encoder_kwargs":
            if not isinstance(value, dict):
                raise ConfigError(f"model.{key}: expected a mapping, got {value!r}")
            _check_keys(value, default, f"model.{key}")
            out[key] = deep_merge(default, value)
        else:
            out[key] = copy.deepcopy(value)
    _check_consistency(out)
    return out


def _check_consistency(cfg: dict) -> None:
    d, s = cfg["direction"]["kind"], cfg["scale"]["kind"]
    if d not in DIRECTION_KINDS:
        raise ConfigError(f"model.direction.kind {d!r} is not one of {list(DIRECTION_KINDS)}")
    if s not in SCALE_KINDS:
        raise ConfigError(f"model.scale.kind {s!r} is not one of {list(SCALE_KINDS)}")
    if "flow" in (d, s) and cfg["flow"] is None:
        raise ConfigError("model: direction/scale kind 'flow' needs a flow head (model.flow)")
    if "ramp" in (d, s) and cfg["ramp"] is None:
        raise ConfigError("model: direction/scale kind 'ramp' needs a ramp head (model.ramp)")
    r = cfg["ramp"]
    if r is not None:
        if not 0.0 <= float(r["min_slope"]) < float(r["max_slope"]):
            raise ConfigError(
                f"model.ramp: need 0 <= min_slope < max_slope (m/px), got {r['min_slope']} and "
                f"{r['max_slope']}"
            )
        if float(r["huber"]) <= 0 or int(r["iterations"]) < 1:
            raise ConfigError(
                f"model.ramp: huber must be > 0 and iterations >= 1, got {r['huber']} and "
                f"{r['iterations']}"
            )
    if s == "lstsq" and cfg["mag"] is None and cfg["flow"] is None:
        raise ConfigError("model.scale.kind 'lstsq' needs a mag head (model.mag: {...})")
    if not isinstance(cfg["encoder"], str):
        raise ConfigError(f"model.encoder must be a timm model name, got {cfg['encoder']!r}")


class GeoposeModel(nn.Module):
    """Encoder + UNet decoder + geopose heads, built from a ``model:`` config section.

    ``forward(image B×3×H×W in [0, 1], gsd B (m/px), city B long or None)`` ->
    :class:`GeoposeOutput`. Any H, W work: the image is padded (reflect) to a multiple of the
    encoder stride (32) and the outputs are cropped back.
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
        ch, stride = self.decoder.out_channels, self.decoder.output_stride
        self.agl_head = DenseHead(ch, stride, 1, **c["agl"])
        self.mag_head = DenseHead(ch, stride, 1, **c["mag"]) if c["mag"] is not None else None
        self.flow_head = DenseHead(ch, stride, 2, **c["flow"]) if c["flow"] is not None else None
        self.ramp_head = None
        if c["ramp"] is not None:
            dense = {k: v for k, v in c["ramp"].items() if k not in _RAMP_FIT}
            self.ramp_head = DenseHead(ch, stride, 2, **dense)
        self.direction_head = self._direction_head(c["direction"], ch)
        self.scale_head = self._scale_head(c["scale"])

    def _direction_head(self, d: dict, dec_channels: int) -> nn.Module | None:
        if d["kind"] == "pooled":
            keys = ("hidden", "activation", "dropout", "gsd", "gsd_ref", "city")
            return OrientationHead(self.encoder.channels[-1], **{k: d[k] for k in keys})
        if d["kind"] == "dense_attention":
            keys = ("channels", "activation", "beta", "detach_agl")
            return DenseOrientationHead(dec_channels, **{k: d[k] for k in keys})
        return None

    def _scale_head(self, s: dict) -> nn.Module | None:
        if s["kind"] != "regress":
            return None
        keys = ("hidden", "activation", "dropout", "gsd", "gsd_ref", "city", "out_scale")
        return ScaleHead(self.encoder.channels[-1], **{k: s[k] for k in keys})

    @property
    def divisor(self) -> int:
        """Input sizes that need no padding are multiples of this (px)."""
        return self.encoder.output_stride

    def forward(
        self,
        image: torch.Tensor,
        gsd: torch.Tensor | float | None = None,
        city: torch.Tensor | None = None,
    ) -> GeoposeOutput:
        """Image B×3×H×W in [0, 1], GSD B (m/px), city B (long, -1 unknown) -> GeoposeOutput."""
        b, _, h, w = image.shape
        gsd = self._gsd(gsd, image)
        x = self._pad((image - self.mean) / self.std)
        feats = self.encoder(x)
        dec = self.decoder(feats)
        agl = self.agl_head(dec, gsd, city)[:, :, :h, :w]
        mag = self.mag_head(dec, gsd, city)[:, :, :h, :w] if self.mag_head is not None else None
        flow = self.flow_head(dec, gsd, city)[:, :, :h, :w] if self.flow_head is not None else None
        ramp = None
        if self.ramp_head is not None:
            ramp = self.ramp_head(dec, gsd, city)[:, :, :h, :w]
        d_cfg, s_cfg = self.config["direction"], self.config["scale"]
        if flow is not None:
            f_dir, f_scale, f_mag = flow_pose(flow, agl, d_cfg["detach_agl"])
            mag = f_mag if mag is None else mag
        if "ramp" in (d_cfg["kind"], s_cfg["kind"]):
            fit = {k: self.config["ramp"][k] for k in _RAMP_FIT}
            r_dir, r_scale = ramp_pose(ramp, **fit)
        if d_cfg["kind"] == "pooled":
            direction = self.direction_head(feats[-1], gsd, city)
        elif d_cfg["kind"] == "dense_attention":
            direction = self.direction_head(dec, agl, (x.shape[2], x.shape[3]))
        elif d_cfg["kind"] == "ramp":
            direction = r_dir
        else:
            direction = f_dir
        if s_cfg["kind"] == "regress":
            scale = self.scale_head(feats[-1], gsd, city)
        elif s_cfg["kind"] == "flow":
            scale = f_scale
        elif s_cfg["kind"] == "ramp":
            scale = r_scale
        else:
            scale = lstsq_scale(mag, agl, s_cfg["detach_agl"])
        if mag is None:
            mag = agl * scale.reshape(-1, 1, 1, 1)
        return GeoposeOutput(agl, mag, direction, scale, flow, ramp)

    def _gsd(self, gsd, image: torch.Tensor) -> torch.Tensor:
        if gsd is None:
            if self._uses_gsd():
                raise ValueError("this model uses the GSD (m/px): pass gsd=")
            gsd = 1.0
        gsd = torch.as_tensor(gsd, dtype=image.dtype, device=image.device)
        return gsd.reshape(-1).expand(image.shape[0])

    def _uses_gsd(self) -> bool:
        c = self.config
        dense = [c["agl"]] + [c[k] for k in _OPTIONAL_DENSE if c[k] is not None]
        if any(d.get("gsd", "none") != "none" for d in dense):
            return True
        return (c["direction"]["kind"] == "pooled" and c["direction"]["gsd"]) or (
            c["scale"]["kind"] == "regress" and c["scale"]["gsd"] != "none"
        )

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
    if "family" in cfg:
        from geopose.models.zoo import build_published

        return build_published(cfg)
    return GeoposeModel(cfg)


def without_pretrained(model_cfg: dict) -> dict:
    """A ``model:`` section whose encoder is built without ImageNet weights: for models whose
    weights all come from a checkpoint (loading, resuming, fine-tuning)."""
    if "family" in model_cfg:
        return dict(model_cfg)
    return {**resolve_model_config(model_cfg), "pretrained": False}


_UNREADABLE = "not a readable PyTorch checkpoint ({})"


def _read_checkpoint(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for corrupt files
        if "weights_only" not in str(exc):
            raise GeoposeDataError(path, _UNREADABLE.format(type(exc).__name__)) from exc
    # A Lightning checkpoint may pickle harmless objects the safe loader refuses; our own
    # training writes it, so allow full unpickling for local files.
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise GeoposeDataError(path, _UNREADABLE.format(type(exc).__name__)) from exc


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
        ckpt = _read_checkpoint(path, map_location)
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
