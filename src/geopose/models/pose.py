"""Pose heads: the image-level direction (unit ``(sin a, cos a)``, B×2) and scale (px/m, B) of a
:class:`~geopose.models.GeoposeModel`, one small module per ``kind`` of ``model.direction`` and
``model.scale``, registered by name (as timm registers models)::

    @DIRECTION_HEADS.register("mine")
    class MyDirection(PoseHead):
        options = {"width": Opt(8, "int", "channels of my field", min=1)}  # its own keys
        def __init__(self, cfg, bottleneck, decoder): ...   # the resolved section, channels
        def forward(self, ctx: PoseContext) -> torch.Tensor: ...

after which ``model.direction: {kind: mine, width: 16}`` works in any recipe. Every head reads
what it needs from one :class:`PoseContext` (features, decoder map, dense maps, GSD, city) and
the shared fits it offers, computed at most once per forward whichever heads use them. A kind
without weights holds no parameters or buffers (nothing in the state dict).

Each kind declares the keys of its section in ``options`` (a table of
:class:`~geopose.schema.Opt`), and ``model.direction``/``model.scale`` are checked against the
chosen kind's (:class:`~geopose.schema.Kinds`): an option only another kind has is refused,
naming the key and the kind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.models.heads import (
    ACTIVATION,
    ACTIVATIONS,
    CITY,
    GSD_REF_OPT,
    SCALE_GSD_MODES,
    PooledMLP,
    flow_pose,
    gradient_magnitude,
    lstsq_scale,
    ramp_pose,
    unit,
)
from geopose.schema import Opt, Registry
from geopose.types import GeoposeOutput, unit_vector

DETACH_AGL = Opt(True, "bool", "no gradient into AGL through the pose fit")
"""``detach_agl``: of the flow fit (``model.direction``, whatever the kind: the flow map's pose
is shared by every head that reads it), of dense_attention's weights and of the lstsq scale."""


@dataclass(eq=False)
class PoseContext:
    """What the pose heads of one forward read (image-level tensors are per batch element).

    ``feats``: the encoder pyramid of the padded input; ``dec``: the decoder map (padded, stride
    s); ``pad_hw``: the padded input's size (px); ``gsd`` B (m/px); ``city`` B (long, -1
    unknown) or None; ``agl`` B×1×H×W (m), ``mag`` (px), ``flow`` B×2×H×W (px), ``ramp``
    B×2×H×W (m/px), ``facade`` B×1×H×W (logits): the dense heads' maps cropped to the input's
    size, None without that head;
    ``flow_detach_agl`` and ``ramp_fit``: the settings of the shared fits.
    """

    feats: list[torch.Tensor]
    dec: torch.Tensor
    pad_hw: tuple[int, int]
    gsd: torch.Tensor
    city: torch.Tensor | None
    agl: torch.Tensor
    mag: torch.Tensor | None = None
    flow: torch.Tensor | None = None
    ramp: torch.Tensor | None = None
    facade: torch.Tensor | None = None
    flow_detach_agl: bool = True
    ramp_fit: Mapping[str, Any] = field(default_factory=dict)
    _fits: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict, repr=False)

    def flow_pose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Direction, scale and MAG of the flow map (:func:`heads.flow_pose`), computed once."""
        if "flow" not in self._fits:
            self._fits["flow"] = flow_pose(self.flow, self.agl, self.flow_detach_agl)
        return self._fits["flow"]  # type: ignore[return-value]

    def ramp_pose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Direction and scale of the ramp map (:func:`heads.ramp_pose`), its pixels weighted
        by the facade head's probabilities when there is one; computed once."""
        if "ramp" not in self._fits:
            weights = None if self.facade is None else torch.sigmoid(self.facade.float())
            self._fits["ramp"] = ramp_pose(self.ramp, weights=weights, **self.ramp_fit)
        return self._fits["ramp"]  # type: ignore[return-value]

    def magnitude(self) -> torch.Tensor | None:
        """MAG B×1×H×W (px): the mag head's map, else the flow map's projection, else None."""
        if self.mag is not None:
            return self.mag
        return self.flow_pose()[2] if self.flow is not None else None

    def output(self, direction: torch.Tensor, scale: torch.Tensor) -> GeoposeOutput:
        """The model's output for this pose (MAG = AGL · scale when no head gives one)."""
        mag = self.magnitude()
        if mag is None:
            mag = self.agl * scale.reshape(-1, 1, 1, 1)
        return GeoposeOutput(self.agl, mag, direction, scale, self.flow, self.ramp, self.facade)


class PoseHead(nn.Module):
    """Base of the pose heads: ``forward(ctx) -> Tensor``.

    ``requires``: dense heads (``model.<name>``) one of which the kind needs; ``options``: the
    keys of its section besides ``kind`` (the resolved section holds them, defaults filled);
    ``uses_gsd``: whether the output depends on the GSD.
    """

    requires: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Opt]] = {}

    def __init__(self, cfg: Mapping[str, Any], bottleneck: int, decoder: int) -> None:
        """``cfg``: the resolved ``model.direction``/``model.scale`` section; ``bottleneck``
        and ``decoder``: the channels of the deepest encoder map and of the decoder map."""
        super().__init__()
        self.uses_gsd = False

    def forward(self, ctx: PoseContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


DIRECTION_HEADS: Registry[type[PoseHead]] = Registry("model.direction.kind")
SCALE_HEADS: Registry[type[PoseHead]] = Registry("model.scale.kind")


def _mlp(cfg: Mapping[str, Any], bottleneck: int, out: int, gsd: bool, extra: int = 0) -> PooledMLP:
    keys = ("hidden", "activation", "dropout", "gsd_ref", "city")
    return PooledMLP(bottleneck, out, gsd=gsd, extra=extra, **{k: cfg[k] for k in keys})


@DIRECTION_HEADS.register("pooled")
class PooledDirection(PoseHead):
    """Pooled bottleneck (+ log-GSD and city cues) -> MLP -> unit direction."""

    options = PooledMLP.options

    def __init__(self, cfg: Mapping[str, Any], bottleneck: int, decoder: int) -> None:
        super().__init__(cfg, bottleneck, decoder)
        self.mlp = _mlp(cfg, bottleneck, 2, bool(cfg["gsd"]))
        self.uses_gsd = bool(cfg["gsd"])

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        return unit(self.mlp(ctx.feats[-1], ctx.gsd, ctx.city))


@DIRECTION_HEADS.register("dense_attention")
class DenseAttentionDirection(PoseHead):
    """Seed 004's dense orientation: a per-pixel direction field averaged with attention weights
    ``softmax(beta · |∇AGL|)`` over the image, so building edges (where heights change and the
    oblique view shows facades) decide the direction. ``beta`` (1/m·px) is learned.
    """

    options = {
        "activation": ACTIVATION,
        "channels": Opt(64, "int", "channels of the direction field", min=1),
        "beta": Opt(1.0, "float", "initial softmax sharpness, 1/m", gt=0),
        "detach_agl": DETACH_AGL,
    }

    def __init__(self, cfg: Mapping[str, Any], bottleneck: int, decoder: int) -> None:
        super().__init__(cfg, bottleneck, decoder)
        act, channels = ACTIVATIONS[cfg["activation"]], cfg["channels"]
        self.field = nn.Sequential(
            nn.Conv2d(decoder, channels, 3, padding=1), act(), nn.Conv2d(channels, 2, 1)
        )
        self.log_beta = nn.Parameter(torch.tensor(math.log(cfg["beta"])))
        self.detach_agl = bool(cfg["detach_agl"])

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        return self.attend(self.field(ctx.dec), ctx.agl, ctx.pad_hw)

    def attend(self, field: torch.Tensor, agl: torch.Tensor, pad_hw: tuple[int, int]):
        """Direction field (padded, stride s), AGL B×1×H×W (m, cropped), padded size -> B×2."""
        v = F.interpolate(field, size=pad_hw, mode="bilinear", align_corners=False)
        v = F.normalize(v[:, :, : agl.shape[2], : agl.shape[3]], dim=1, eps=1e-6)
        a = (agl.detach() if self.detach_agl else agl).float()
        v = v.float()
        logits = (gradient_magnitude(a) * self.log_beta.exp()).flatten(1)
        w = torch.softmax(logits, dim=1)  # B×HW
        return unit((v.flatten(2) * w[:, None, :]).sum(dim=2))


@DIRECTION_HEADS.register("flow")
class FlowDirection(PoseHead):
    """The flow map's least-squares direction (:meth:`PoseContext.flow_pose`)."""

    requires = ("flow",)

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        return ctx.flow_pose()[0]


@DIRECTION_HEADS.register("ramp")
class RampDirection(PoseHead):
    """The facade ramps' robust direction (:meth:`PoseContext.ramp_pose`)."""

    requires = ("ramp",)

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        return ctx.ramp_pose()[0]


@DIRECTION_HEADS.register("ramp_pooled")
class RampPooledDirection(PoseHead):
    """The facade ramps' direction plus a pooled correction: ``unit(ramp + MLP(pooled deepest
    map, GSD, city))``. The ramps' direction is held fixed here (the ramp head learns from its
    own loss) and the MLP's last layer starts at zero, so the head begins as ``ramp`` and
    ``loss.direction`` trains the correction: where a city's few satellite passes recur, it
    can learn the pass that the facades leave in doubt; its length is how far it is trusted
    (``cpu_small``: +0.015 on 96 test images over 3 seeds; BENCHMARKS.md, Experiments behind
    ``cpu_small`` and the demo). ``ramp_input``: the fit's direction is an input of the MLP
    too, so the correction can depend on the pass, e.g. undo a bias of the fit per pass (a tie
    in the demo). ``fit_grad``: the fit is not held fixed: the direction loss trains the ramp
    and facade heads through it too (as the ``ramp`` head's does; ``cpu_small``: on uniform
    angles +0.05 on 96 test images over 3 seeds, every seed higher, a tie on clustered ones)."""

    requires = ("ramp",)
    options = {
        **PooledMLP.options,
        "ramp_input": Opt(False, "bool", "the fit's direction is an input of the MLP too"),
        "fit_grad": Opt(
            False, "bool", "the direction loss reaches the ramp and facade heads through the fit"
        ),
    }
    MIN_TRAINED_NORM: ClassVar[float] = 0.1
    """Length of ``ramp + correction`` below which no gradient passes (the ramp part is 0 or 1)."""

    def __init__(self, cfg: Mapping[str, Any], bottleneck: int, decoder: int) -> None:
        super().__init__(cfg, bottleneck, decoder)
        self.ramp_input = bool(cfg["ramp_input"])
        self.fit_grad = bool(cfg["fit_grad"])
        self.mlp = _mlp(cfg, bottleneck, 2, bool(cfg["gsd"]), extra=2 * self.ramp_input)
        last = self.mlp.mlp[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.uses_gsd = bool(cfg["gsd"])

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        ramp = ctx.ramp_pose()[0]
        if not self.fit_grad:
            ramp = ramp.detach()
        extra = ramp.detach() if self.ramp_input else None
        v = ramp + self.mlp(ctx.feats[-1], ctx.gsd, ctx.city, extra).to(ramp.dtype)
        # A sum shorter than MIN_TRAINED_NORM (no ramps and a small correction, or the two
        # cancelling) has a direction that is noise and a normalisation gradient of 1/|v|: it
        # passes none. No ramps and no correction stays (0, 0), "unknown", as the fit's answer.
        short = v.norm(dim=1, keepdim=True) < self.MIN_TRAINED_NORM
        return unit_vector(torch.where(short, v.detach(), v), dim=1)


@SCALE_HEADS.register("lstsq")
class LstsqScale(PoseHead):
    """``Σ mag·agl / Σ agl²`` of each image (MAG of the mag head, else of the flow map)."""

    requires = ("mag", "flow")
    options = {"detach_agl": DETACH_AGL}

    def __init__(self, cfg: Mapping[str, Any], bottleneck: int, decoder: int) -> None:
        super().__init__(cfg, bottleneck, decoder)
        self.detach_agl = bool(cfg["detach_agl"])

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        return lstsq_scale(ctx.magnitude(), ctx.agl, self.detach_agl)


@SCALE_HEADS.register("regress")
class RegressScale(PoseHead):
    """Pooled bottleneck -> MLP -> scale (px/m) = softplus(raw) · out_scale (/ gsd with
    ``gsd: divide``: it then predicts tan(off-nadir), see :mod:`geopose.models.heads`)."""

    options = {
        "hidden": PooledMLP.options["hidden"],
        "activation": ACTIVATION,
        "dropout": PooledMLP.options["dropout"],
        "gsd": Opt("concat", "str", "how the GSD enters", choices=SCALE_GSD_MODES),
        "gsd_ref": GSD_REF_OPT,
        "city": CITY,
        "out_scale": Opt(1.0, "float", "output unit, px/m"),
    }

    def __init__(self, cfg: Mapping[str, Any], bottleneck: int, decoder: int) -> None:
        super().__init__(cfg, bottleneck, decoder)
        self.gsd, self.out_scale = cfg["gsd"], float(cfg["out_scale"])
        self.mlp = _mlp(cfg, bottleneck, 1, self.gsd in ("concat", "both"))
        self.uses_gsd = self.gsd != "none"

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        s = F.softplus(self.mlp(ctx.feats[-1], ctx.gsd, ctx.city)[:, 0]) * self.out_scale
        if self.gsd in ("divide", "both"):
            s = s / ctx.gsd.reshape(-1).to(s.dtype)
        return s


@SCALE_HEADS.register("flow")
class FlowScale(PoseHead):
    """The flow map's least-squares scale, ``|v|`` (:meth:`PoseContext.flow_pose`)."""

    requires = ("flow",)

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        return ctx.flow_pose()[1]


@SCALE_HEADS.register("ramp")
class RampScale(PoseHead):
    """The facade ramps' robust scale (:meth:`PoseContext.ramp_pose`)."""

    requires = ("ramp",)

    def forward(self, ctx: PoseContext) -> torch.Tensor:
        return ctx.ramp_pose()[1]
