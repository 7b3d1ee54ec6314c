"""Tiled prediction of images of any size: overlapping windows, blended.

Tiles are ``tile`` px squares (clipped to the image) spread evenly so that neighbours overlap by
at least ``overlap`` px. Each tile's maps are weighted by a smooth window that is 0 for the
``margin`` px next to an inner tile edge (where the tile's zero padding disturbs the model) and
rises as sin² to 1 across the rest of the overlap; image borders are not tapered. Over an overlap
the two windows sum to 1, and every stitched map (AGL, MAG, and flow and ramps when the model
has them) is ``Σ w·map / Σ w``. The image-level direction
and scale are the weighted vector / arithmetic means of the tiles', each tile weighted by the
sum of its window (its effective area).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from geopose.inference.average import mean_direction, weighted_mean
from geopose.types import FIELD_KINDS, GeoposeOutput, image_to_unit

PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], GeoposeOutput]
"""``fn(image B×3×h×w in [0, 1], gsd B m/px, city B | None) -> output`` (model, TTA, ensemble)."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (px) of ``tile``-px tiles covering ``length`` px, overlap >= ``overlap``."""
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap} tile={tile}")
    n = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def _ramp(n: int, overlap: int, margin: int) -> np.ndarray:
    """Rising edge of length ``overlap``: 0 for ``margin`` px, then sin² to 1 (float64, n long)."""
    m = max(0, min(margin, (overlap - 1) // 2))
    d = np.arange(n, dtype=np.float64)
    r = np.clip((d - m + 0.5) / max(overlap - 2 * m, 1), 0.0, 1.0)
    return np.sin(0.5 * math.pi * r) ** 2


def axis_weights(starts: list[int], size: int, length: int, margin: int) -> list[np.ndarray]:
    """1-D window of each tile along one axis (tapered only where a neighbour overlaps it)."""
    out = []
    for i, s in enumerate(starts):
        w = np.ones(size)
        if i > 0:  # overlap with the previous tile on the low side
            w *= _ramp(size, starts[i - 1] + size - s, margin)
        if i + 1 < len(starts):  # overlap with the next tile on the high side
            w *= _ramp(size, s + size - starts[i + 1], margin)[::-1]
        out.append(w)
    return out


def predict_tiled(
    predict: PredictFn,
    image: torch.Tensor,
    gsd: float,
    city: int | None = None,
    tile: int = 1024,
    overlap: int | None = None,
    margin: int | None = None,
    tiles_per_call: int = 4,
    device: torch.device | str | None = None,
) -> GeoposeOutput:
    """Predict one image (3×H×W, uint8 or float in [0, 1]) tile by tile and blend.

    Args:
        predict: the per-batch predictor (model, ensemble or TTA wrapper).
        image: the image, on any device; tiles move to ``device`` (default: the image's).
        gsd: m/px; ``city``: index into ``geopose.types.CITIES`` or None/-1 (unknown).
        tile: tile side (px); an image no larger than ``tile`` is predicted in one piece.
        overlap: least overlap of neighbouring tiles (px), default ``tile // 4``.
        margin: px next to an inner tile edge given zero weight, default ``overlap // 4``.
        tiles_per_call: tiles passed to ``predict`` at once.

    Returns:
        The output with batch size 1: ``agl``/``mag`` 1×1×H×W (m, px), ``direction`` 1×2 unit
        (or zero: no evidence), ``scale`` (1,) px/m, and ``flow``/``ramp`` 1×2×H×W when the
        model gives them.
    """
    _, h, w = image.shape
    overlap = tile // 4 if overlap is None else overlap
    margin = overlap // 4 if margin is None else margin
    device = image.device if device is None else torch.device(device)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    wr, wc = axis_weights(rows, th, h, margin), axis_weights(cols, tw, w, margin)
    boxes = [(r, c, np.outer(wr[i], wc[j])) for i, r in enumerate(rows) for j, c in enumerate(cols)]

    maps = [n for n, kind in FIELD_KINDS.items() if kind in ("map", "vector_map")]
    acc: dict[str, torch.Tensor] = {}  # Σ w·map per map field, 1×C×H×W
    acc_w = torch.zeros(1, 1, h, w, dtype=torch.float32, device=device)
    dirs, scales, tile_w = [], [], []
    first: GeoposeOutput | None = None
    for i in range(0, len(boxes), max(1, tiles_per_call)):
        chunk = boxes[i : i + tiles_per_call]
        batch = torch.stack([image[:, r : r + th, c : c + tw] for r, c, _ in chunk]).to(device)
        batch = image_to_unit(batch)
        n = len(chunk)
        g = torch.full((n,), float(gsd), device=device)
        ct = None if city is None else torch.full((n,), int(city), dtype=torch.long, device=device)
        out = predict(batch, g, ct)
        first = out if first is None else first
        for j, (r, c, win) in enumerate(chunk):
            wt = torch.as_tensor(win, dtype=torch.float32, device=device)
            for name in maps:
                x = getattr(out, name)
                if x is None:
                    continue
                if name not in acc:
                    acc[name] = torch.zeros(1, x.shape[1], h, w, dtype=torch.float32, device=device)
                acc[name][..., r : r + th, c : c + tw] += wt * x[j].float()
            acc_w[..., r : r + th, c : c + tw] += wt
            dirs.append(out.direction[j].double())
            scales.append(out.scale[j].double())
            tile_w.append(float(win.sum()))
    if len(boxes) == 1:
        return first
    blended = {
        "direction": mean_direction(dirs, tile_w)[None].float(),
        "scale": weighted_mean(scales, tile_w)[None].float(),
    }
    return first.map(lambda name, _: blended[name] if name in blended else acc[name] / acc_w)
