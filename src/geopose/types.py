"""The types that cross layers, each with one owner here, and the one-rule helpers on them.

- :class:`GeoposeOutput`: what every model returns (``forward(image, gsd, city)``), whatever
  its family: heights, magnitudes, pose, and the optional dense flow and facade ramps.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class GeoposeOutput(NamedTuple):
    """Model outputs: AGL B×1×H×W (m), MAG B×1×H×W (px), direction B×2 unit (sin a, cos a)
    or (0, 0) where a ramp/flow fit found no evidence of it, scale B (px/m), the dense flow
    B×2×H×W (px, (dx, dy)) when the model has a flow head and the facade-ramp field B×2×H×W
    (∇AGL, m/px) when it has a ramp head."""

    agl: torch.Tensor
    mag: torch.Tensor
    direction: torch.Tensor
    scale: torch.Tensor
    flow: torch.Tensor | None = None
    ramp: torch.Tensor | None = None
