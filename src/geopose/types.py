"""The types that cross layers, each with one owner here, and the one-rule helpers on them.

- :class:`GeoposeOutput`: what every model returns (``forward(image, gsd, city)``), whatever
  its family: heights, magnitudes, pose, and the optional dense flow and facade ramps.
- :data:`ProgressFn`: the one progress callback of long library calls; only the CLI draws it.
"""

from __future__ import annotations

from collections.abc import Callable
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


ProgressFn = Callable[[str, int, int], None]
"""``on_progress(stage, done, total)``: a long library call reports ``done`` of ``total`` units
of its current ``stage`` (e.g. ``"predict"`` tiles, ``"write"`` images); ``total`` 0 when unknown.
The library never draws: the CLI turns these calls into rich progress bars."""
