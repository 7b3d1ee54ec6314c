"""Run one model for inference: bf16 autocast + channels_last on CUDA, float32 outputs.

Geopose models pad their input to their stride themselves (``GeoposeModel.divisor``), so any
image size goes in as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from geopose.types import GeoposeOutput


class ModelRunner(nn.Module):
    """Wrap a geopose model for inference: ``forward(image, gsd, city) -> output``.

    On CUDA the model runs in channels_last memory format under bf16 autocast (when ``amp``).
    The output has every field of the model's in float32: ``agl``/``mag`` B×1×H×W (m, px),
    ``direction`` B×2, ``scale`` B (px/m), and ``flow``/``ramp`` when the model gives them.
    """

    def __init__(self, model: nn.Module, amp: bool = True, channels_last: bool = True) -> None:
        super().__init__()
        self.model = model.eval()
        self.amp = amp
        self.channels_last = channels_last

    def to_device(self, device: torch.device | str) -> ModelRunner:
        """Move to ``device`` (channels_last weights on CUDA when asked)."""
        device = torch.device(device)
        self.to(device)
        if device.type == "cuda" and self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        return self

    def forward(
        self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor | None
    ) -> GeoposeOutput:
        cuda = image.device.type == "cuda"
        if cuda and self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and self.amp):
            out = self.model(image, gsd, city)
        return out.map(lambda _, x: x.float())
