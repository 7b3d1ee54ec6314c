"""Encoders: any timm backbone with ``features_only=True``, chosen by name.

An encoder maps a normalised image B×3×H×W to a list of feature maps of decreasing resolution,
one per distinct stride (2, 4, 8, 16, 32 for the usual backbones). ``pretrained`` is opt-in
(default off): geopose never downloads weights unless asked.
"""

from __future__ import annotations

from typing import Any, ClassVar

import timm
import torch
from torch import nn

from geopose.errors import ConfigError
from geopose.schema import Opt


class Encoder(nn.Module):
    """A timm ``features_only`` backbone; ``channels``/``reductions`` describe its outputs.

    Args:
        name: timm model name (``resnet34``, ``efficientnet_b7``, ``tf_efficientnetv2_l``, ...).
        pretrained: load timm's pretrained weights (needs the weights cached or a network).
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``out_indices``).

    :attr:`options`: the keys of a ``model:`` section that choose it (``encoder``: the name).
    """

    options: ClassVar[dict[str, Opt]] = {
        "encoder": Opt("resnet34", "str", "timm model name"),
        "pretrained": Opt(False, "bool", "start from timm's ImageNet weights"),
        "encoder_kwargs": Opt({}, "mapping", "more keyword arguments of timm.create_model"),
    }

    def __init__(self, name: str, pretrained: bool = False, **kwargs: Any) -> None:
        super().__init__()
        self.name = name
        self.model = _create_backbone(name, pretrained, **kwargs)
        info = self.model.feature_info
        channels, reductions = list(info.channels()), list(info.reduction())
        # Keep the deepest map of each stride (a few backbones emit two maps at one stride).
        keep = [
            i
            for i in range(len(reductions))
            if i + 1 == len(reductions) or reductions[i + 1] != reductions[i]
        ]
        self._keep = keep
        self.channels: list[int] = [channels[i] for i in keep]
        self.reductions: list[int] = [reductions[i] for i in keep]

    @property
    def output_stride(self) -> int:
        """Stride of the deepest feature map (input sizes must be multiples of it)."""
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised image B×3×H×W -> feature maps, shallowest first."""
        feats = self.model(x)
        return [feats[i] for i in self._keep]


def _create_backbone(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` with geopose errors for bad names."""
    if not timm.is_model(name):
        raise ConfigError(f"unknown encoder {name!r}: not a timm model name (timm.list_models())")
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        if pretrained:
            raise ConfigError(
                f"encoder {name!r}: its ImageNet weights could not be loaded (no network? "
                f"{str(exc)[:200]}); train from scratch with the override model.pretrained=false "
                "(or pretrained: false in the recipe), or put the weights in the Hugging Face "
                "cache (HF_HOME) on a machine with a network first"
            ) from exc
        problem = f"encoder {name!r} cannot be built with features_only=True: {exc}"
        raise ConfigError(problem) from exc
