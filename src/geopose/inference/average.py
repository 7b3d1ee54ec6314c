"""The one averaging rule of TTA views, tiles, checkpoints and models (CONVENTIONS.md).

Maps (AGL m, MAG px, and the dense flow px and facade ramps m/px of models that have them) and
scales (px/m) are weighted arithmetic means; directions are averaged as unit vectors
``(sin a, cos a)``, weighted, then renormalised (:func:`geopose.types.unit_vector`: a zero
direction, no evidence, adds nothing, and views that cancel give zero, "unknown").

Optionally (``shrink_scale``) the scale is also multiplied by the length of that mean of unit
vectors (1 when the views agree, 0 when they cancel): the image's mean flow vector, the best
guess under a squared-error score when the direction is uncertain (but not the physical scale:
leave it off to rectify).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geopose.types import GeoposeOutput, unit_vector


def _weights(
    n: int, weights: Sequence[float] | torch.Tensor | None, like: torch.Tensor
) -> torch.Tensor:
    w = torch.ones(n) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (n,):
        raise ValueError(f"expected {n} weights, got shape {tuple(w.shape)}")
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    return (w / w.sum()).to(device=like.device, dtype=like.dtype)


def weighted_mean(values: Sequence[torch.Tensor], weights=None) -> torch.Tensor:
    """Weighted mean of same-shaped tensors (weights normalised to sum 1)."""
    stack = torch.stack(list(values))
    w = _weights(len(stack), weights, stack)
    return torch.tensordot(w, stack, dims=1)


def mean_direction(directions: Sequence[torch.Tensor], weights=None) -> torch.Tensor:
    """Weighted mean of direction vectors (each …×2) as unit vectors, renormalised.

    Computed in float64 (returned in the input dtype): when the vectors nearly cancel, the
    renormalisation magnifies rounding errors.
    """
    dtype = directions[0].dtype
    mean = weighted_mean([unit_vector(d.double()) for d in directions], weights)
    return unit_vector(mean).to(dtype)


def average_outputs(
    outputs: Sequence[GeoposeOutput], weights=None, shrink_scale: bool = False
) -> GeoposeOutput:
    """Average model outputs field by field by the rule above (an optional field, ``flow`` or
    ``ramp``, is kept when every output has it); ``shrink_scale`` multiplies the scale by the
    agreement of the directions (module doc)."""
    if not outputs:
        raise ValueError("nothing to average")

    def mean(name: str, parts: list[torch.Tensor]) -> torch.Tensor:
        if name == "direction":
            return mean_direction(parts, weights)
        value = weighted_mean(parts, weights)
        if name == "scale" and shrink_scale:
            vec = weighted_mean([unit_vector(o.direction.double()) for o in outputs], weights)
            value = value * vec.norm(dim=-1).to(value.dtype)
        return value

    return GeoposeOutput.combine(outputs, mean)
