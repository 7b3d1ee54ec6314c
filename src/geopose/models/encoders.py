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


def pretrained_source(name: str) -> str | None:
    """Where timm takes the pretrained weights of ``name`` (a model name or ``name.tag``) from:
    its Hugging Face hub id or URL; None when timm has no weights for it (e.g.
    ``efficientnet_b7``, whose ``tf_efficientnet_b7.*`` tags have them)."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        return None
    if cfg is None:
        return None
    return cfg.hf_hub_id or cfg.url or cfg.file or None


def _weight_tags(name: str) -> list[str]:
    """timm's tags with weights for the architecture of ``name``."""
    arch = name.split(".", 1)[0]
    return timm.list_pretrained(arch + ".*")


def _create_backbone(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, features_only=True)`` with geopose errors for bad names: an
    unknown name, pretrained weights asked of a name timm has none for (a recipe bug, with the
    tags that have them), weights that cannot be loaded (not cached and no network: the tag
    and its source named, with the override that trains from scratch)."""
    if not timm.is_model(name):
        raise ConfigError(f"unknown encoder {name!r}: not a timm model name (timm.list_models())")
    source = pretrained_source(name) if pretrained else None
    if pretrained and source is None:
        tags = _weight_tags(name)
        hint = f"tags with weights: {', '.join(tags)}" if tags else "timm has none for it"
        raise ConfigError(
            f"encoder {name!r} has no pretrained weights ({hint}); name a tag that has them, "
            "or model.pretrained=false"
        )
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:
        if pretrained:
            raise ConfigError(
                f"encoder {name!r}: its pretrained weights ({source}) are not cached here and "
                f"could not be downloaded ({type(exc).__name__}); train from scratch with the "
                "override model.pretrained=false, or fetch them once on a machine with a network "
                "(they land in the Hugging Face cache, HF_HOME)"
            ) from exc
        problem = f"encoder {name!r} cannot be built with features_only=True: {exc}"
        raise ConfigError(problem) from exc
