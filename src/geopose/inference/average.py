"""The one averaging rule of TTA views, tiles, checkpoints and models (CONVENTIONS.md).

Maps (AGL m, MAG px) and scales (px/m) are weighted arithmetic means; directions are averaged as
unit vectors ``(sin a, cos a)``, weighted, then renormalised. Optionally (``shrink_scale``) the
scale is also multiplied by the length of that mean of unit vectors (1 when the views agree, 0
when they cancel): the image's mean flow vector, the best guess under a squared-error score
when the direction is uncertain (but not the physical scale: leave it off to rectify).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

EPS = 1e-12


def unit(direction: torch.Tensor) -> torch.Tensor:
    """Normalise direction vectors (…×2) to unit length (a zero vector stays zero)."""
    return direction / direction.norm(dim=-1, keepdim=True).clamp_min(EPS)


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
    mean = weighted_mean([unit(d.double()) for d in directions], weights)
    return unit(mean).to(dtype)


def average_outputs(outputs: Sequence[Any], weights=None, shrink_scale: bool = False) -> Any:
    """Average model outputs (``agl``, ``mag``, ``direction``, ``scale``) by the rule above;
    ``shrink_scale`` multiplies the scale by the agreement of the directions (module doc).

    Returns an output of the same type as the first one, built from the four fields.
    """
    if not outputs:
        raise ValueError("nothing to average")
    first = outputs[0]
    scale = weighted_mean([o.scale for o in outputs], weights)
    if shrink_scale:
        vec = weighted_mean([unit(o.direction.double()) for o in outputs], weights)
        scale = scale * vec.norm(dim=-1).to(scale.dtype)
    return type(first)(
        agl=weighted_mean([o.agl for o in outputs], weights),
        mag=weighted_mean([o.mag for o in outputs], weights),
        direction=mean_direction([o.direction for o in outputs], weights),
        scale=scale,
    )
