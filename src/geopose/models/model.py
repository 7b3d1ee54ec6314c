"""GeoposeModel (encoder + decoder + heads), the ``model:`` section it reads, ``create_model``
and ``load_checkpoint``.

The keys of a ``model:`` section (:data:`MODEL`) are those its parts declare next to their
classes (``Encoder.options``, ``UnetDecoder.options``, ``DenseHead.options``, the ramp fit's
``RAMP_FIT``, each pose head kind's ``options``) plus the model's own ``input_stride``;
:func:`resolve_model_config` checks a section against them. ``create_model`` builds any entry
of :data:`~geopose.models.registry.MODELS` from a recipe (:mod:`geopose.schema`) or a section.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import ConfigError, GeoposeDataError
from geopose.io.checkpoint import load_torch_file
from geopose.models.decoders import UnetDecoder
from geopose.models.encoders import Encoder
from geopose.models.heads import RAMP_FIT, DenseHead
from geopose.models.pose import DETACH_AGL, DIRECTION_HEADS, SCALE_HEADS, PoseContext
from geopose.models.registry import GEOPOSE, MODELS
from geopose.schema import Kinds, Opt, Section, check_section, deep_merge, defaults_of, load_recipe
from geopose.types import GeoposeOutput

__all__ = [
    "MODEL",
    "MODELS",
    "MODEL_DEFAULTS",
    "GeoposeModel",
    "GeoposeOutput",
    "create_model",
    "load_checkpoint",
    "own_kind_options",
    "resolve_model_config",
    "switch_kinds",
    "without_pretrained",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DENSE_HEADS = {"agl": 1, "mag": 1, "flow": 2, "ramp": 2, "facade": 1}
"""The dense heads (``model.<name>``, attribute ``<name>_head``) and their output channels."""

_UNIT_OUT = {"out_scale": Opt(1.0, "float", "output unit: raw O(1) values times this")}

MODEL: dict[str, Opt | Section | Kinds] = {
    **Encoder.options,
    "input_stride": Opt(
        1, "int", "the encoder reads the image area-averaged by this (a power of 2)", min=1
    ),
    "decoder": Section(UnetDecoder.options, "UNet decoder"),
    "agl": Section({**DenseHead.options, **DenseHead.gsd_options}, "height above ground (m) head"),
    "mag": Section(DenseHead.options, "MAG (px) head; null: MAG = AGL · scale", optional=True),
    "flow": Section(DenseHead.options, "dense flow (px) head", optional=True, present=False),
    "ramp": Section(
        {**DenseHead.options, **_UNIT_OUT, **RAMP_FIT},
        "facade-ramp (m/px) head",
        optional=True,
        present=False,
    ),
    "facade": Section(
        {**DenseHead.options, **_UNIT_OUT},
        "facade logits head: weighs the ramp fit's pixels by sigmoid(logit)",
        optional=True,
        present=False,
    ),
    "direction": Kinds(
        DIRECTION_HEADS, "pooled", "image-level direction", common={"detach_agl": DETACH_AGL}
    ),
    "scale": Kinds(SCALE_HEADS, "lstsq", "image-level scale (px/m)"),
}
"""Every key of a GeoposeModel's ``model:`` section, gathered from the parts that read them."""

MODEL_DEFAULTS: dict[str, Any] = defaults_of(MODEL)
"""The ``model:`` section with every default (None for a head that is off by default)."""


def resolve_model_config(cfg: dict | None) -> dict:
    """Fill a ``model:`` section with defaults and check every key; returns a new dict.

    A section with ``family:`` describes another entry of :data:`MODELS` (a published model of
    ``geopose.models.zoo``): it is checked against that family's options and returned as it is
    (its ``build`` fills the defaults).
    """
    cfg = dict(cfg or {})
    family = cfg.get("family", GEOPOSE)
    entry = MODELS.lookup(family)
    if family != GEOPOSE:
        entry.resolve(cfg)
        return cfg
    cfg.pop("family", None)
    return entry.resolve(cfg)


def switch_kinds(before: Mapping[str, Any], after: dict, given: Mapping[str, Any]) -> dict:
    """``after``, the model section ``before`` with the overrides ``given`` (a nested mapping)
    applied, where the overrides switch ``model.direction`` or ``model.scale`` to another
    kind: that section keeps only the options the new kind reads and those ``given`` names.
    The others were set for the old kind (they would be refused as another kind's); an option
    both kinds read (``city`` of pooled and ramp_pooled) carries over."""
    for key, spec in MODEL.items():
        old, new, upd = before.get(key), after.get(key), given.get(key)
        if not (isinstance(spec, Kinds) and isinstance(old, Mapping) and isinstance(new, dict)):
            continue
        kind = new.get("kind", spec.default)
        if (
            isinstance(upd, Mapping)
            and kind != old.get("kind", spec.default)
            and kind in spec.registry
        ):
            keep = {*spec.own(kind), *upd}
            after[key] = {k: v for k, v in new.items() if k in keep}
    return after


def own_kind_options(cfg: Mapping[str, Any]) -> dict:
    """A model section whose pose sections (``model.direction``, ``model.scale``) keep only the
    options their kind reads. A section stored with a checkpoint may carry options of another
    kind, which never reached the model: reading it back drops them."""
    out = dict(cfg)
    for key, spec in MODEL.items():
        section = out.get(key)
        if isinstance(spec, Kinds) and isinstance(section, Mapping):
            kind = section.get("kind", spec.default)
            if kind in spec.registry:
                out[key] = {k: v for k, v in section.items() if k in spec.own(kind)}
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


@MODELS.register(GEOPOSE)
class GeoposeModel(nn.Module):
    """Encoder + UNet decoder + geopose heads, built from a ``model:`` config section.

    ``forward(image B×3×H×W in [0, 1], gsd B (m/px), city B long or None)`` ->
    :class:`GeoposeOutput`. Any H, W work: the image is padded (reflect) to a multiple of
    :attr:`divisor` and the outputs are cropped back. With ``input_stride`` s > 1 the encoder
    reads the image area-averaged by s (s² times fewer pixels to convolve, s times the context
    per receptive field) and the dense heads upsample their outputs by s more. The dense heads
    give AGL (and MAG, flow, ramp maps when configured); the pose heads of
    ``geopose.models.pose`` the direction and scale. :attr:`options`: the keys of its
    ``model:`` section (:data:`MODEL`).
    """

    options: ClassVar[dict[str, Opt | Section | Kinds]] = MODEL

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
    def resolve(cls, config: dict | None) -> dict:
        """A ``model:`` section (no ``family:``) checked against :data:`MODEL`, defaults
        filled; ``encoder: {name: ..., pretrained: ..., **timm kwargs}`` is accepted too."""
        cfg = dict(config or {})
        if isinstance(cfg.get("encoder"), dict):  # encoder: {name: ..., pretrained: ..., ...}
            enc = dict(cfg.pop("encoder"))
            cfg["encoder"] = enc.pop("name", MODEL["encoder"].default)
            cfg["pretrained"] = enc.pop("pretrained", cfg.get("pretrained", False))
            cfg["encoder_kwargs"] = {**cfg.get("encoder_kwargs", {}), **enc}
        out = check_section("model", MODEL, cfg)
        _check_consistency(out)
        return out

    @classmethod
    def build(cls, config: dict) -> GeoposeModel:
        """The :data:`~geopose.models.registry.MODELS` entry point: ``GeoposeModel(config)``."""
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


def create_model(recipe: str | Path | dict = "baseline", **overrides: Any) -> nn.Module:
    """Build a model from a recipe name, a YAML path, a whole recipe dict or a ``model:``
    section; keyword overrides are deep-merged into the model section, e.g.
    ``create_model("kbrodt", encoder="resnet18", decoder={"channels": [64, 32, 16]})``; one
    that switches a pose head's kind (``direction={"kind": "flow"}``) drops the options the new
    kind does not read (:func:`switch_kinds`).

    A :class:`GeoposeModel`, or a published family's model (``geopose.models.zoo``) for a
    section with ``family:``; both keep the same ``forward(image, gsd, city)`` contract.
    """
    if isinstance(recipe, dict):
        model_cfg = recipe["model"] if isinstance(recipe.get("model"), dict) else recipe
    else:
        model_cfg = load_recipe(recipe)["model"]
    cfg = switch_kinds(model_cfg, deep_merge(model_cfg, overrides), overrides)
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
        model = create_model(without_pretrained(own_kind_options(config["model"])))
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, ConfigError) as exc:
        problem = f"weights do not fit the checkpoint's model config: {str(exc)[:300]}"
        raise GeoposeDataError(path, problem) from exc
    return model.eval(), config
