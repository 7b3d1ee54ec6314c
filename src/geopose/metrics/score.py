"""The competition score from float64 sufficient statistics, in one streaming pass.

Reading of CONVENTIONS.md "The score", checked against the public baseline's ``evaluate.py``
(``get_city_scores``), for each city:

- ``R2_agl = 1 - SSE / SST`` over every valid pixel (truth not NaN) of every image of the
  city; ``SST`` is taken around the pooled mean of the true AGL of all those pixels.
- ``R2_vflow`` likewise over the flow *components*: the x and the y component of every valid
  pixel form ONE pooled set of ``2 * n`` numbers, and ``SST`` is taken around the single mean
  of that set (the baseline sums both components into one ``vflow_gt_sum`` and divides by
  ``vflow_count`` = 2 × valid pixels). Flow = AGL (m) × scale (px/m) × (sin a, cos a) (px), the
  prediction's flow built from the predicted AGL, scale and angle.
- city score = ``(R2_agl + R2_vflow) / 2``; final score = mean of the cities present.

Decisions where the baseline is silent or unhelpful (documented in the README too):

- A predicted AGL that is NaN (65535 in a uint16 file, or non-finite in a float one) counts as
  0 m (ground) at that pixel and is counted in ``pred_nan_pixels``. (The baseline's ``nansum``
  silently drops such pixels from the error sums, so a NaN prediction would score as perfect.)
- ``SST == 0`` (the city's valid truth is constant, or it has no valid pixel at all):
  ``R2 = 1.0`` if ``SSE == 0`` else ``0.0`` (scikit-learn's ``force_finite`` rule). The
  baseline instead adds 1e-4 to both denominators, a difference of order 1e-15 on real data.
- AGL MAE / RMSE and flow EPE are pooled over all valid pixels of the city; angle error (deg)
  and |scale error| (px/m) are means over the city's images.

Numerics: every per-image statistic is a float64 sum of float64 products over row chunks (for
uint16 centimetre inputs and heights below ~450 m the sums are exact integers).
``SST = Σt² - (Σt)²/n`` is formed from float64 sums; for AGL and flow (|mean| and std of the
same order) its relative error is ~1e-15. ``SST <= 1e-12 · Σt²`` is treated as 0 (constant
truth up to rounding).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from geopose.geometry import angle_error_deg
from geopose.io.rasters import AGL_NODATA

FIELDS = (
    "images",  # number of images
    "pixels",  # valid (truth not NaN) pixels
    "agl_true_sum",  # Σ t  (m)
    "agl_true_sumsq",  # Σ t² (m²)
    "agl_sse",  # Σ (p - t)² (m²)
    "agl_sae",  # Σ |p - t| (m)
    "flow_true_sum",  # Σ over both components of the true flow (px)
    "flow_true_sumsq",  # Σ over both components of the true flow squared (px²)
    "flow_sse",  # Σ |f_pred - f_true|² (px²)
    "epe_sum",  # Σ |f_pred - f_true| (px)
    "angle_error_sum",  # Σ over images of the angle error (degrees)
    "scale_error_sum",  # Σ over images of |scale_pred - scale_true| (px/m)
    "pred_nan_pixels",  # valid pixels whose predicted AGL was NaN (scored as 0 m)
)
"""Layout of one statistics vector; all additive, so merging (and DDP reduction) is a sum."""
IDX = {name: i for i, name in enumerate(FIELDS)}
N_FIELDS = len(FIELDS)

_CHUNK_PIXELS = 1 << 17  # pixels per row chunk: a float64 chunk (1 MiB) stays in cache
_SST_REL_TOL = 1e-12


def _as_float(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stored AGL chunk -> (float64 values, flat indices of missing pixels).

    uint16 chunks keep centimetre values (65535 missing); float chunks keep metres (non-finite
    missing). Missing values are left as they are: callers zero them.
    """
    flat = chunk.reshape(-1)
    values = flat.astype(np.float64)
    if flat.dtype == np.uint16:
        missing = np.flatnonzero(flat == AGL_NODATA)
    else:
        missing = np.flatnonzero(~np.isfinite(values))
    return values, missing


def _unit_m(arr: np.ndarray) -> float:
    """Metres per stored unit: 0.01 for uint16 centimetres, 1 for float metres."""
    return 0.01 if arr.dtype == np.uint16 else 1.0


def _check_agl(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be an H×W map, got shape {arr.shape}")
    if arr.dtype != np.uint16 and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be uint16 centimetres or float metres, got {arr.dtype}")
    return arr


def image_stats(
    agl_pred: np.ndarray,
    agl_true: np.ndarray,
    angle_pred: float,
    scale_pred: float,
    angle_true: float,
    scale_true: float,
) -> np.ndarray:
    """The statistics vector (see :data:`FIELDS`, float64) of one image.

    ``agl_pred`` / ``agl_true``: H×W maps either as stored in competition files (uint16
    centimetres, 65535 = missing) or in metres (float, NaN = missing). Angles in radians,
    scales in px/m. Truth-missing pixels are excluded; prediction-missing pixels count as 0 m.
    Works in row chunks, so memory stays small whatever the image size.
    """
    agl_pred = _check_agl(agl_pred, "predicted AGL")
    agl_true = _check_agl(agl_true, "true AGL")
    if agl_pred.shape != agl_true.shape:
        raise ValueError(f"size mismatch: prediction {agl_pred.shape}, truth {agl_true.shape}")
    # Work in the stored unit when both maps share it (exact integer sums for cm), else metres.
    u_p, u_t = _unit_m(agl_pred), _unit_m(agl_true)
    unit = u_t if u_p == u_t else 1.0
    sp = float(scale_pred) * unit  # px per working unit
    st = float(scale_true) * unit
    ds = sp - st
    # cross term of |sp·p·u_p - st·t·u_t|²: 2 (1 - cos δ) sp st = 4 sin²(δ/2) sp st, a form
    # that is exactly 0 for equal angles and accurate for small differences
    k = 4.0 * math.sin((float(angle_pred) - float(angle_true)) / 2.0) ** 2 * sp * st
    rows = max(1, _CHUNK_PIXELS // max(1, agl_true.shape[1]))
    # n, Σt, Σt², Σd², Σdt, Σ|d|, Σepe, pred-NaN  (d = p - t, working units)
    acc = np.zeros(8, dtype=np.float64)
    for r0 in range(0, agl_true.shape[0], rows):
        acc += _chunk_sums(
            agl_pred[r0 : r0 + rows],
            agl_true[r0 : r0 + rows],
            u_p / unit,
            u_t / unit,
            sp,
            ds,
            k,
        )
    n, s_t, s_tt, s_dd, s_dt, s_ad, s_epe, n_pnan = acc
    s_pt = s_dt + s_tt  # Σ p t
    # |sp p u_p - st t u_t|² = (sp d + Δs t)² + 2 (1 - cos) sp st p t, summed.
    flow_sse = sp * sp * s_dd + 2.0 * sp * ds * s_dt + ds * ds * s_tt + k * s_pt
    out = np.zeros(N_FIELDS, dtype=np.float64)
    out[IDX["images"]] = 1.0
    out[IDX["pixels"]] = n
    out[IDX["agl_true_sum"]] = s_t * unit
    out[IDX["agl_true_sumsq"]] = s_tt * unit * unit
    out[IDX["agl_sse"]] = s_dd * unit * unit
    out[IDX["agl_sae"]] = s_ad * unit
    out[IDX["flow_true_sum"]] = st * (math.sin(angle_true) + math.cos(angle_true)) * s_t
    out[IDX["flow_true_sumsq"]] = st * st * s_tt
    out[IDX["flow_sse"]] = max(flow_sse, 0.0)
    out[IDX["epe_sum"]] = s_epe
    out[IDX["angle_error_sum"]] = float(angle_error_deg(float(angle_pred), float(angle_true)))
    out[IDX["scale_error_sum"]] = abs(float(scale_pred) - float(scale_true))
    out[IDX["pred_nan_pixels"]] = n_pnan
    return out


def _sum(x: np.ndarray) -> float:
    """Sum of a 1-D float64 array (einsum's SIMD loop: no BLAS threads, faster than np.sum)."""
    return float(np.einsum("i->", x))


def _chunk_sums(
    pred: np.ndarray, true: np.ndarray, f_p: float, f_t: float, sp: float, ds: float, k: float
) -> np.ndarray:
    """Sums over one row chunk (see :func:`image_stats`); ``f_*`` convert to working units.

    Exact for the integer centimetre values of uint16 files (every partial sum is an integer
    below 2^53), ~1e-12 relative otherwise. BLAS is avoided on purpose: its dot products
    start threads of their own, which spin against other jobs on a busy machine (BENCHMARKS.md,
    Scoring).
    """
    t, t_missing = _as_float(true)
    p, p_missing = _as_float(pred)
    if f_t != 1.0:
        t *= f_t
    if f_p != 1.0:
        p *= f_p
    n_pnan = 0
    if p_missing.size:
        keep = np.ones(p.size, dtype=bool)
        keep[t_missing] = False
        n_pnan = int(np.count_nonzero(keep[p_missing]))
        p[p_missing] = 0.0
    if t_missing.size:
        t[t_missing] = 0.0
        p[t_missing] = 0.0  # zero in both: the pixel adds nothing to any sum below
    d = p - t
    tmp = np.multiply(t, t)
    s_t, s_tt = _sum(t), _sum(tmp)
    s_dd = _sum(np.multiply(d, d, out=tmp))
    s_dt = _sum(np.multiply(d, t, out=tmp))
    # End-point error per pixel: sqrt((sp d + Δs t)² + k p t).
    e = d * sp
    if ds != 0.0:
        e += np.multiply(t, ds, out=tmp)
    np.multiply(e, e, out=e)
    if k != 0.0:
        np.multiply(p, t, out=p)
        p *= k
        e += p
        if pred.dtype != np.uint16 or true.dtype != np.uint16:
            np.abs(e, out=e)  # p t < 0 is possible for float input: the sum is >= 0 but rounds
    s_epe = _sum(np.sqrt(e, out=e))
    s_ad = _sum(np.abs(d, out=d))
    n = t.size - t_missing.size
    return np.array([n, s_t, s_tt, s_dd, s_dt, s_ad, s_epe, n_pnan], dtype=np.float64)


def r2_from_sums(count: float, total: float, sumsq: float, sse: float) -> float:
    """``1 - SSE/SST`` with ``SST = Σy² - (Σy)²/n``; SST == 0 gives 1.0 if SSE == 0 else 0.0."""
    sst = sumsq - total * total / count if count > 0 else 0.0
    if sst <= _SST_REL_TOL * abs(sumsq):
        return 1.0 if sse == 0.0 else 0.0
    return 1.0 - sse / sst


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def city_metrics(s: np.ndarray) -> dict[str, float | int]:
    """All reported numbers of one city from its statistics vector."""
    g = {name: float(s[i]) for i, name in enumerate(FIELDS)}
    n = g["pixels"]
    r2_agl = r2_from_sums(n, g["agl_true_sum"], g["agl_true_sumsq"], g["agl_sse"])
    r2_vflow = r2_from_sums(2 * n, g["flow_true_sum"], g["flow_true_sumsq"], g["flow_sse"])
    return {
        "score": (r2_agl + r2_vflow) / 2.0,
        "r2_agl": r2_agl,
        "r2_vflow": r2_vflow,
        "images": int(g["images"]),
        "pixels": int(n),
        "angle_error_deg": _div(g["angle_error_sum"], g["images"]),
        "scale_error": _div(g["scale_error_sum"], g["images"]),
        "agl_mae": _div(g["agl_sae"], n),
        "agl_rmse": math.sqrt(_div(g["agl_sse"], n)) if n > 0 else math.nan,
        "epe": _div(g["epe_sum"], n),
        "pred_nan_pixels": int(g["pred_nan_pixels"]),
    }


class ScoreAccumulator:
    """Per-city float64 sufficient statistics of the competition score.

    ``update`` one image at a time (any order, any process), ``merge`` accumulators of other
    workers, ``compute`` the numbers. Nothing but 13 float64 numbers per city is kept.
    """

    def __init__(self) -> None:
        self.stats: dict[str, np.ndarray] = {}

    def add(self, city: str, stats: np.ndarray) -> None:
        """Add a statistics vector (one or many images already reduced) to ``city``."""
        stats = np.asarray(stats, dtype=np.float64)
        if stats.shape != (N_FIELDS,):
            raise ValueError(f"statistics vector must have {N_FIELDS} values, got {stats.shape}")
        if city in self.stats:
            self.stats[city] += stats
        else:
            self.stats[city] = stats.copy()

    def update(
        self,
        city: str,
        agl_pred: np.ndarray,
        agl_true: np.ndarray,
        angle_pred: float,
        scale_pred: float,
        angle_true: float,
        scale_true: float,
    ) -> None:
        """Score one image (AGL maps in m or uint16 cm, angles rad, scales px/m)."""
        self.add(
            city, image_stats(agl_pred, agl_true, angle_pred, scale_pred, angle_true, scale_true)
        )

    def merge(self, other: ScoreAccumulator) -> ScoreAccumulator:
        """Add another accumulator's statistics into this one; returns self."""
        for city, stats in other.stats.items():
            self.add(city, stats)
        return self

    @classmethod
    def from_dict(cls, stats: Mapping[str, np.ndarray]) -> ScoreAccumulator:
        """An accumulator holding ``{city: statistics vector}``."""
        acc = cls()
        for city, s in stats.items():
            acc.add(city, s)
        return acc

    def compute(self) -> dict:
        """``{"final": float, "cities": {city: {score, r2_agl, r2_vflow, ...}}, "images": int}``.

        Cities are listed in sorted order; ``final`` is the mean city score (NaN if none).
        """
        cities = {c: city_metrics(self.stats[c]) for c in sorted(self.stats)}
        scores = [m["score"] for m in cities.values()]
        return {
            "final": float(np.mean(scores)) if scores else math.nan,
            "cities": cities,
            "images": sum(m["images"] for m in cities.values()),
        }
