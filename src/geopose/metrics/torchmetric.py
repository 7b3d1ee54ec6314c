"""The competition score as a torchmetrics ``Metric`` for validation inside training.

The state is the per-city float64 statistics vector of :mod:`geopose.metrics.score` (one row
per city of :data:`geopose.types.CITIES`, plus a row ``UNK`` for city index -1), summed across
DDP ranks, so the logged score is exactly the competition formula over the whole validation
set, not a mean of batch scores.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric

from geopose.metrics.score import IDX, N_FIELDS, ScoreAccumulator, city_metrics
from geopose.types import CITIES, Batch, GeoposeOutput

UNKNOWN_CITY = "UNK"


def _as_maps(x: torch.Tensor, what: str) -> torch.Tensor:
    """B×1×H×W or B×H×W -> B×(H·W) float64."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{what} must be B×1×H×W or B×H×W, got {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _as_unit_vectors(x: torch.Tensor, what: str) -> torch.Tensor:
    """B×2 (sin a, cos a) of any length, or B angles (rad) -> B×2 unit vectors, float64."""
    x = x.detach().to(torch.float64)
    if x.ndim == 2 and x.shape[1] == 2:
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{what} must be B×2 (sin, cos) or B angles, got {tuple(x.shape)}")
    return torch.stack([torch.sin(x), torch.cos(x)], dim=1)


def _predicted_pose(
    direction: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted unit directions B×2 and scales B (float64). A zero direction vector (a model
    that found no evidence of the direction) is scored as geopose writes it: zero flow, i.e.
    scale 0 and the label angle 0."""
    u = _as_unit_vectors(direction, "direction_pred")
    s = _as_vector(scale, "scale_pred")
    if direction.ndim == 2 and direction.shape[1] == 2:
        unknown = direction.detach().to(torch.float64).norm(dim=1) <= 1e-12
        label = torch.tensor([0.0, 1.0], dtype=torch.float64, device=u.device)
        u = torch.where(unknown[:, None], label, u)
        s = torch.where(unknown.to(s.device), torch.zeros_like(s), s)
    return u, s


def _as_vector(x: torch.Tensor, what: str) -> torch.Tensor:
    x = x.detach().to(torch.float64)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{what} must have shape (B,), got {tuple(x.shape)}")
    return x


def batch_stats(
    agl_pred: torch.Tensor,
    direction_pred: torch.Tensor,
    scale_pred: torch.Tensor,
    agl_true: torch.Tensor,
    direction_true: torch.Tensor,
    scale_true: torch.Tensor,
) -> torch.Tensor:
    """B×N_FIELDS float64 statistics vectors (see ``score.FIELDS``), one per image.

    AGL in metres (truth NaN = missing; a NaN prediction counts as 0 m), directions as
    (sin, cos) vectors or angles in radians (a zero predicted vector = no direction evidence:
    zero flow, angle label 0, as written to files), scales in px/m. Same formulas as
    :func:`geopose.metrics.score.image_stats`, vectorised over the batch on any device.
    """
    p = _as_maps(agl_pred, "agl_pred")
    t = _as_maps(agl_true, "agl")
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ")
    u_p, sp = _predicted_pose(direction_pred, scale_pred)
    u_p, sp = u_p.to(p.device), sp.to(p.device)
    u_t = _as_unit_vectors(direction_true, "direction").to(p.device)
    st = _as_vector(scale_true, "scale").to(p.device)
    valid = torch.isfinite(t)
    p_ok = torch.isfinite(p)
    zero = torch.zeros((), dtype=torch.float64, device=p.device)
    t = torch.where(valid, t, zero)
    p = torch.where(valid & p_ok, p, zero)
    d = p - t
    s_t, s_tt = t.sum(1), (t * t).sum(1)
    s_dd, s_dt = (d * d).sum(1), (d * t).sum(1)
    cos_d = (u_p * u_t).sum(1)
    sin_d = u_p[:, 0] * u_t[:, 1] - u_p[:, 1] * u_t[:, 0]
    ds = sp - st
    k = (u_p - u_t).square().sum(1) * sp * st  # = 2 (1 - cos δ) sp st, stable for small δ
    e = (sp[:, None] * d + ds[:, None] * t).square() + k[:, None] * p * t
    out = torch.zeros(p.shape[0], N_FIELDS, dtype=torch.float64, device=p.device)
    out[:, IDX["images"]] = 1.0
    out[:, IDX["pixels"]] = valid.sum(1).to(torch.float64)
    out[:, IDX["agl_true_sum"]] = s_t
    out[:, IDX["agl_true_sumsq"]] = s_tt
    out[:, IDX["agl_sse"]] = s_dd
    out[:, IDX["agl_sae"]] = d.abs().sum(1)
    out[:, IDX["flow_true_sum"]] = st * (u_t[:, 0] + u_t[:, 1]) * s_t
    out[:, IDX["flow_true_sumsq"]] = st * st * s_tt
    flow_sse = sp * sp * s_dd + 2.0 * sp * ds * s_dt + ds * ds * s_tt + k * (s_dt + s_tt)
    out[:, IDX["flow_sse"]] = flow_sse.clamp_min(0.0)
    out[:, IDX["epe_sum"]] = e.abs().sqrt().sum(1)
    out[:, IDX["angle_error_sum"]] = torch.rad2deg(torch.atan2(sin_d.abs(), cos_d))
    out[:, IDX["scale_error_sum"]] = ds.abs()
    out[:, IDX["pred_nan_pixels"]] = (valid & ~p_ok).sum(1).to(torch.float64)
    return out


class GeoposeScore(Metric):
    """Competition score over validation batches (per city R², final = mean of cities).

    ``update(agl_pred, direction_pred, scale_pred, agl, direction, scale, city)`` with model
    outputs (AGL B×1×H×W m, direction B×2 or angles B rad, scale B px/m) and the batch truth
    (AGL with NaN, direction, scale, city B long indices into ``CITIES``, -1 = unknown), or
    ``update_batch(output, batch)`` with a ``GeoposeOutput`` and a batch dict.

    ``compute()`` returns flat float64 scalars for logging: ``score`` (final), ``r2_agl`` and
    ``r2_vflow`` (means over cities present), ``score_<CITY>`` per city present, and pooled
    ``angle_error_deg``, ``scale_error``, ``agl_mae``, ``agl_rmse``, ``epe``. The full nested
    result of :meth:`ScoreAccumulator.compute` of the last ``compute()`` is in ``self.report``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, cities: tuple[str, ...] = CITIES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cities = tuple(cities) + (UNKNOWN_CITY,)
        self.add_state(
            "stats",
            default=torch.zeros(len(self.cities), N_FIELDS, dtype=torch.float64),
            dist_reduce_fx="sum",
        )
        self.report: dict | None = None

    def update(
        self,
        agl_pred: torch.Tensor,
        direction_pred: torch.Tensor,
        scale_pred: torch.Tensor,
        agl: torch.Tensor,
        direction: torch.Tensor,
        scale: torch.Tensor,
        city: torch.Tensor,
    ) -> None:
        """Add one batch (see the class docstring for shapes and units)."""
        stats = batch_stats(agl_pred, direction_pred, scale_pred, agl, direction, scale)
        rows = torch.as_tensor(city, device=self.stats.device).reshape(-1).long()
        if rows.numel() != stats.shape[0]:
            raise ValueError(f"city has {rows.numel()} entries for a batch of {stats.shape[0]}")
        unknown = len(self.cities) - 1
        rows = torch.where((rows < 0) | (rows >= unknown), torch.full_like(rows, unknown), rows)
        self.stats.index_add_(0, rows, stats.to(self.stats.device))

    def update_batch(self, output: GeoposeOutput, batch: Batch) -> None:
        """``update`` from a model output (``.agl``, ``.direction``, ``.scale``) and a batch."""
        self.update(
            output.agl,
            output.direction,
            output.scale,
            batch["agl"],
            batch["direction"],
            batch["scale"],
            batch["city"],
        )

    def accumulator(self) -> ScoreAccumulator:
        """The current (local, unsynchronised) state as a :class:`ScoreAccumulator`."""
        stats = self.stats.detach().cpu().numpy()
        return ScoreAccumulator.from_dict(
            {c: stats[i] for i, c in enumerate(self.cities) if stats[i, IDX["images"]] > 0}
        )

    def compute(self) -> dict[str, torch.Tensor]:
        """Flat scalars for logging (synchronised across processes by torchmetrics)."""
        acc = self.accumulator()
        self.report = acc.compute()
        cities = self.report["cities"]
        pooled = city_metrics(sum(acc.stats.values())) if acc.stats else None

        def mean(key: str) -> float:
            vals = [m[key] for m in cities.values()]
            return sum(vals) / len(vals) if vals else math.nan

        flat = {
            "score": self.report["final"],
            "r2_agl": mean("r2_agl"),
            "r2_vflow": mean("r2_vflow"),
        }
        for city, m in cities.items():
            flat[f"score_{city}"] = m["score"]
        for key in ("angle_error_deg", "scale_error", "agl_mae", "agl_rmse", "epe"):
            flat[key] = pooled[key] if pooled is not None else math.nan
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in flat.items()}
