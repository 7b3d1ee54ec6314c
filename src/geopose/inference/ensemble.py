"""An ensemble of loaded models run as one: their outputs averaged by the rule of
:mod:`geopose.inference.average` (maps and scales weighted means, directions weighted
unit-vector means, renormalised). Which models, with which weights, is decided in
``geopose.models.loading`` (:func:`geopose.models.resolve_models`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geopose.inference.average import average_outputs
from geopose.types import GeoposeOutput


class Ensemble(nn.Module):
    """Average several models' outputs: ``forward(image, gsd, city) -> output``."""

    def __init__(
        self, members: Sequence[nn.Module], weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if weights is not None and len(weights) != len(members):
            raise ValueError(f"{len(members)} members but {len(weights)} weights")
        self.members = nn.ModuleList(members)
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(
        self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor | None
    ) -> GeoposeOutput:
        outs = [m(image, gsd, city) for m in self.members]
        return outs[0] if len(outs) == 1 else average_outputs(outs, self.weights)
