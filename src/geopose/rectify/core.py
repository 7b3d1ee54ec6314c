"""Rectification itself, on arrays: every pixel moved by its flow to its ground footprint,
a z-buffer keeping the tallest, occluded ground marked, one-pixel gaps filled.

The whole map is vectorised numpy: one ``np.maximum.at`` scatter of packed (height, source index)
keys, no loop over pixels (``benchmarks/bench_rectify.py``: about 0.2 s for 2048² on one core).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EMPTY = np.int64(-1)
_SRC_BITS = 31
_SRC_MASK = np.int64((1 << _SRC_BITS) - 1)
# The four lines through a pixel (horizontal, vertical, two diagonals) as (row, col) steps.
_LINES = ((0, 1), (1, 0), (1, 1), (1, -1))
_TIE_PX = 0.02
"""Footprints are rounded after a step of this many px back towards the seen position, so a
footprint on a pixel boundary (a wall's) lands in its own column even after heights were
rounded to centimetres (up to 0.005 m × 4 px/m = 0.02 px of footprint error)."""


@dataclass(frozen=True)
class Rectified:
    """A nadir view on the input's pixel grid.

    ``rgb``: H×W×3 uint8 (0 where occluded; None when no RGB was given); ``agl``: H×W float32
    metres of the tallest surface over each ground pixel (a DSM above ground), NaN where occluded;
    ``occluded``: H×W bool, True where no pixel reached the ground pixel; ``filled``: H×W bool,
    True for the one-pixel sampling holes filled from a neighbour.
    """

    rgb: np.ndarray | None
    agl: np.ndarray
    occluded: np.ndarray
    filled: np.ndarray

    @property
    def visible_fraction(self) -> float:
        """Fraction of ground pixels that received a value."""
        return float(1.0 - self.occluded.mean())


def ground_positions(agl: np.ndarray, angle: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground footprint (column x, row y) in pixels of every pixel: ``seen + agl·scale·(sin, cos)``.

    ``agl`` in metres (NaN gives NaN), ``angle`` in radians, ``scale`` in px/m.
    """
    h, w = agl.shape
    mag = np.asarray(agl, dtype=np.float32) * np.float32(scale)
    x = mag * np.float32(math.sin(angle)) + np.arange(w, dtype=np.float32)[None, :]
    y = mag * np.float32(math.cos(angle)) + np.arange(h, dtype=np.float32)[:, None]
    return x, y


def _height_order(z: np.ndarray) -> np.ndarray:
    """float32 heights -> int64 whose order is the heights' order (IEEE-754 bit trick)."""
    bits = np.ascontiguousarray(z, dtype=np.float32).view(np.uint32)
    neg = bits >= np.uint32(0x80000000)
    ordered = np.where(neg, ~bits, bits | np.uint32(0x80000000))
    return ordered.astype(np.int64)


def _zbuffer(agl: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """H×W int64 keys ``(height order << 31) | source index`` of the tallest pixel landing on
    each ground pixel (nearest ground pixel), ``-1`` where none landed."""
    h, w = agl.shape
    if h * w >= 1 << _SRC_BITS:
        raise ValueError(f"image of {h}×{w} pixels is too large to rectify")
    x, y = ground_positions(agl, angle, scale)
    # A footprint on a pixel boundary (a wall's: its ray enters the column through the side)
    # goes to the pixel on the seen side, the column's own: round after a small step back.
    xi = np.rint(x - np.float32(_TIE_PX * math.sin(angle)))
    yi = np.rint(y - np.float32(_TIE_PX * math.cos(angle)))
    # NaN heights give NaN positions, which fail these comparisons and are dropped.
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    src = np.flatnonzero(ok)
    tgt = yi.ravel()[src].astype(np.int64) * w + xi.ravel()[src].astype(np.int64)
    keys = (_height_order(agl.ravel()[src]) << _SRC_BITS) | src
    zbuf = np.full(h * w, _EMPTY, dtype=np.int64)
    np.maximum.at(zbuf, tgt, keys)
    return zbuf.reshape(h, w)


def _fill_gaps(zbuf: np.ndarray, agl: np.ndarray) -> np.ndarray:
    """Fill one-pixel gaps: empty pixels whose two neighbours on a line through them
    (horizontal, vertical or a diagonal) are both reached. Of the lines whose ends are reached,
    the one whose two heights agree best is taken (the surface the gap lies on) and the gap gets
    its lower end: never an invented value, and on synthetic scenes (geopose.synth, 64 renders,
    28,000 gaps) within 0.5 m of the true height for 83% of the gaps (mean error 0.42 m),
    against 54% for the tallest neighbour, 74% for the line's mean and 80% for the median
    neighbour. Edits ``zbuf``; returns the filled mask."""
    reached = zbuf != _EMPTY
    gap = np.zeros_like(reached)
    gap[:, 1:-1] |= reached[:, :-2] & reached[:, 2:]
    gap[1:-1, :] |= reached[:-2, :] & reached[2:, :]
    gap[1:-1, 1:-1] |= reached[:-2, :-2] & reached[2:, 2:]
    gap[1:-1, 1:-1] |= reached[:-2, 2:] & reached[2:, :-2]
    gap &= ~reached
    flat = np.flatnonzero(gap)
    if flat.size == 0:
        return gap
    # Work in a one-pixel padded frame so every neighbour index exists (empty / NaN outside).
    h, w = zbuf.shape
    wp = w + 2
    keys = np.pad(zbuf, 1, constant_values=_EMPTY).ravel()
    src = np.minimum(zbuf.ravel() & _SRC_MASK, agl.size)  # empty -> past the end (NaN)
    seen_h = np.take(np.append(agl.ravel(), np.float32(np.nan)), src).reshape(h, w)
    heights = np.pad(seen_h, 1, constant_values=np.nan).ravel()
    idx = (flat // w + 1) * wp + flat % w + 1
    best_d = np.full(flat.size, np.inf, np.float32)
    best_i = np.zeros(flat.size, np.int64)
    for dr, dc in _LINES:
        step = dr * wp + dc
        ha, hb = heights[idx + step], heights[idx - step]
        d = np.abs(ha - hb)  # NaN (never better) unless both ends are reached
        better = d < best_d
        best_d[better] = d[better]
        best_i[better] = (idx + np.where(ha <= hb, step, -step))[better]
    zbuf.ravel()[flat] = keys[best_i]
    return gap


def rectify(
    rgb: np.ndarray | None,
    agl: np.ndarray,
    angle: float,
    scale: float,
    fill_holes: bool = True,
) -> Rectified:
    """Move every pixel by its flow to its ground footprint, keeping the tallest (z-buffer).

    ``rgb``: H×W×3 uint8 oblique image or None (heights only); ``agl``: H×W metres of the surface
    seen at each pixel (NaN pixels are skipped); ``angle``: radians; ``scale``: px/m. Each pixel
    lands on its nearest ground pixel; ``fill_holes`` fills one-pixel sampling gaps.
    """
    agl = np.asarray(agl, dtype=np.float32)
    if agl.ndim != 2:
        raise ValueError(f"agl must be H×W, got shape {agl.shape}")
    if rgb is not None and (rgb.shape[:2] != agl.shape or rgb.ndim != 3):
        raise ValueError(f"rgb {rgb.shape} does not match agl {agl.shape}")
    if not (math.isfinite(angle) and math.isfinite(scale)):
        raise ValueError(f"angle={angle} and scale={scale} must be finite")
    zbuf = _zbuffer(agl, angle, scale)
    filled = _fill_gaps(zbuf, agl) if fill_holes else np.zeros(agl.shape, dtype=bool)
    occluded = zbuf == _EMPTY
    # Empty pixels (key -1) decode to the largest index; clipping sends them to a sentinel
    # appended after the last pixel (NaN height, black colour).
    n = agl.size
    src = np.minimum(zbuf.ravel() & _SRC_MASK, n)
    out_agl = np.take(np.append(agl.ravel(), np.float32(np.nan)), src).reshape(agl.shape)
    out_rgb = None
    if rgb is not None:
        flat = np.asarray(rgb).reshape(n, -1)
        flat = np.concatenate([flat, np.zeros((1, flat.shape[1]), flat.dtype)])
        out_rgb = np.take(flat, src, axis=0).reshape(rgb.shape)
    return Rectified(rgb=out_rgb, agl=out_agl, occluded=occluded, filled=filled)
