"""1st place of the Overhead Geopose Challenge (selim): ``TimmUnet`` on
``tf_efficientnetv2_l_in21k``, run exactly on timm 1.x.

Published files: ``folds_TimmUnet_tf_efficientnetv2_l_in21k_5_r2`` and ``..._6_r2`` (two folds,
no file extension), each ``torch.save({"epoch": int, "state_dict": {"module." + key: tensor},
"metrics": {"r2": numpy.float64}})``. They are recognised by content, whatever their name.

Architecture (120,581,988 parameters; key names as published, less ``module.``):

- ``encoder``: timm ``tf_efficientnetv2_l`` (in21k weights), ``features_only``: five maps at
  strides 2, 4, 8, 16, 32 with 32, 64, 96, 224, 640 channels. timm 0.4.12 made the originals;
  timm 1.0.31's ``tf_efficientnetv2_l.in21k`` has the same 1540 encoder keys, in the same order
  and with the same shapes, so no key is renamed.
- ``decoder_stages[i]``: ×2 nearest upsampling, 3×3 conv, ReLU (256, 192, 128, 64 channels,
  run deepest first); after each, ``bottlenecks``: concatenation with the encoder map of the same
  stride, 3×3 conv, ReLU.
- ``last_upsample``: ×2 nearest upsampling to the input resolution, two 3×3 conv + ReLU (64).
- heads: ``xydir_head`` global average pool of the stride-32 map, dropout 0.5, linear -> 2
  (``(sin a, cos a)``, not normalised); ``height_head`` and ``mag_head`` a 3×3 conv -> 1 at full
  resolution, no activation (AGL in m, MAG in px); ``scale`` has no weights: the least-squares
  ratio ``Σ h·m / (Σ h² + 0.01)`` of each image's raw height and magnitude maps (px/m, fp32).

The network needs sides that are multiples of 32 (the published tiles are 2048×2048); geopose
pads other sizes (reflect, bottom/right) and crops the maps, so there the scale is fitted over
the padded maps.

Input contract: RGB, ``(x / 255 - 0.5) * 2`` (values in [-1, 1]; no ImageNet mean/std), full
resolution (``--downsample 1``, no resizing). GSD and city are not used. Post-processing: AGL
clipped at 0 (``agl[agl < 0] = 0``); the angle is ``arctan2(xydir[0], xydir[1])``, left in
(-π, π]; MAG and scale are not clipped.

The authors' inference (``1st Place/utilities/inference.py``, ``utilities/tta.py``,
``test.sh``), not applied by this module:

- TTA: mean of 4 passes, identity, horizontal flip (maps flipped back, ``xydir[0]`` negated),
  vertical flip (maps flipped back, ``xydir[1]`` negated) and both (both negated); the scale is
  averaged as predicted.
- Ensemble: equal-weight mean (1/2 each) of the TTA means of the two fold models (5 and 6);
  then AGL clipped at 0, the angle taken from the averaged, unnormalised ``xydir``.
- Submission: AGL m -> cm rounded to uint16, scale px/m -> px/cm (÷ 100). Test-time
  inference in fp32.
"""

from __future__ import annotations

from typing import ClassVar

import timm
import torch
from torch import nn

from geopose.models.heads import unit
from geopose.models.zoo.base import (
    Container,
    Family,
    PublishedModel,
    pooled_linear_head,
    register_family,
    ridge_scale,
    state_dict_at,
    strip_prefix,
)
from geopose.schema import Opt
from geopose.types import GeoposeOutput

PUBLISHED_FILES = (
    "folds_TimmUnet_tf_efficientnetv2_l_in21k_5_r2",
    "folds_TimmUnet_tf_efficientnetv2_l_in21k_6_r2",
)
PREFIX = "module."
DEFAULT_ENCODER = "tf_efficientnetv2_l_in21k"

ENCODERS: dict[str, dict] = {
    "tf_efficientnetv2_l_in21k": {
        "timm": "tf_efficientnetv2_l.in21k",
        "decoder": (64, 128, 192, 256),
        "last": 64,
    },
}
"""Encoders the authors configured: the timm 1.x name, the decoder widths (shallowest first)
and the width of the full-resolution stage."""


def preprocess(image: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] B×3×H×W -> the network's input, RGB in [-1, 1] (``(x/255 - 0.5) * 2``)."""
    return (image - 0.5) * 2.0


class UpConv(nn.Sequential):
    """×2 nearest upsampling, then ``convs`` 3×3 conv + ReLU (the authors' decoder blocks)."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 1) -> None:
        layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")]
        for i in range(convs):
            cin = in_channels if i == 0 else out_channels
            layers += [nn.Conv2d(cin, out_channels, 3, padding=1), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class DecoderStage(nn.Module):
    """An :class:`UpConv` held as ``layer`` (the published key layout)."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 1) -> None:
        super().__init__()
        self.layer = UpConv(in_channels, out_channels, convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class SkipFusion(nn.Module):
    """Concatenate the decoder map with the encoder skip, then 3×3 conv + ReLU (the authors'
    ``bottlenecks``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.seq(torch.cat([x, skip], dim=1))


def dense_head(in_channels: int) -> nn.Sequential:
    """3×3 conv -> 1 channel, no activation (the two identities keep the published indices)."""
    return nn.Sequential(nn.Conv2d(in_channels, 1, 3, padding=1), nn.Identity(), nn.Identity())


class FirstPlaceModel(PublishedModel):
    """The 1st place ``TimmUnet``: its state-dict keys are the published ones less ``module.``.

    ``config``: ``{"encoder": "tf_efficientnetv2_l_in21k"}`` (a key of :data:`ENCODERS`).
    :meth:`raw` is the authors' forward; :meth:`run` adds the input contract and clipping.
    """

    family: ClassVar[str] = "first"
    divisor: int = 32
    uses_gsd: bool = False
    uses_city: bool = False

    options: ClassVar[dict[str, Opt]] = {
        "encoder": Opt(DEFAULT_ENCODER, "str", "the authors' encoder", choices=tuple(ENCODERS)),
    }

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        spec = ENCODERS[self.config["encoder"]]
        encoder = timm.create_model(spec["timm"], features_only=True, pretrained=False)
        skips = list(encoder.feature_info.channels())  # shallowest first
        widths = list(spec["decoder"])
        last = int(spec["last"])
        # Deepest stage first in ``bottlenecks``, shallowest first in ``decoder_stages``.
        self.bottlenecks = nn.ModuleList(
            SkipFusion(skips[-i - 2] + w, w) for i, w in enumerate(reversed(widths))
        )
        ins = [*widths[1:], skips[-1]]
        self.decoder_stages = nn.ModuleList(
            DecoderStage(cin, w) for cin, w in zip(ins, widths, strict=True)
        )
        self.last_upsample = DecoderStage(widths[0], last, convs=2)
        self.xydir_head = pooled_linear_head(skips[-1], 2)
        self.height_head = dense_head(last)
        self.mag_head = dense_head(last)
        self.encoder = encoder

    def raw(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The authors' forward: input B×3×H×W in [-1, 1] (H, W multiples of 32) -> ``xydir``
        B×2, ``height`` B×1×H×W (m), ``mag`` B×1×H×W (px), ``scale`` B (px/m), all raw.

        Like the original it runs channels-last and returns contiguous maps."""
        feats = self.encoder(x.contiguous(memory_format=torch.channels_last))
        y = feats[-1]
        for i, fuse in enumerate(self.bottlenecks):
            y = fuse(self.decoder_stages[-i - 1](y), feats[-i - 2])
        y = self.last_upsample(y)
        height = self.height_head(y).contiguous()
        mag = self.mag_head(y).contiguous()
        return {
            "xydir": self.xydir_head(feats[-1]),
            "height": height,
            "mag": mag,
            "scale": ridge_scale(mag, height),
        }

    def run(self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor) -> GeoposeOutput:
        """RGB [0, 1] (padded to 32) -> AGL (m, clipped at 0 in eval), MAG (px), unit direction
        and scale (px/m). ``gsd`` and ``city`` are ignored: the model takes neither."""
        out = self.raw(preprocess(image))
        agl = out["height"] if self.training else out["height"].clamp_min(0.0)
        return GeoposeOutput(
            agl=agl, mag=out["mag"], direction=unit(out["xydir"].float()), scale=out["scale"]
        )


_SIGNATURE = ("bottlenecks.", "decoder_stages.", "last_upsample.", "xydir_head.", "encoder.")


@register_family
class FirstFamily(Family):
    """1st place files: a dict whose ``state_dict`` holds ``module.``-prefixed TimmUnet keys."""

    name: ClassVar[str] = "first"
    description: ClassVar[str] = (
        "1st place (selim): TimmUnet on tf_efficientnetv2_l_in21k, RGB in [-1, 1]"
    )
    model = FirstPlaceModel

    @classmethod
    def state_of(cls, container: Container) -> dict[str, torch.Tensor] | None:
        state = state_dict_at(container.obj, "state_dict") if container.kind == "pickle" else None
        if state is None or not all(k.startswith(PREFIX) for k in state):
            return None
        return strip_prefix(state, PREFIX)

    @classmethod
    def matches(cls, container: Container) -> bool:
        state = cls.state_of(container)
        return state is not None and all(any(k.startswith(s) for k in state) for s in _SIGNATURE)

    @classmethod
    def config_of(cls, container: Container, state: dict) -> dict:
        return {"encoder": DEFAULT_ENCODER}
