"""NaN-aware geopose losses: MSE, Huber, pooled R2, their trimmed variants, direction, scale.

Truth pixels that are NaN (no height measured) contribute nothing: neither to a loss value nor
to a gradient (the residual is replaced by 0 with ``torch.where`` before any arithmetic, so
NaN never reaches autograd).

``GeoposeLoss(cfg)`` reads a recipe's ``loss:`` section, one entry per target::

    agl:       {kind: huber, delta: 10.0, weight: 1.0, trim: 0.0}   # metres
    mag:       {kind: huber, delta: 5.0,  weight: 1.0}              # pixels
    direction: {weight: 1.0, cos_weight: 1.0, mse_weight: 0.1}      # (1 - cos) + 0.1 · MSE
    scale:     {kind: mse, weight: 1.0}                             # px/m
    flow:      {kind: r2, weight: 0.0}   # dense flow (or mag · direction) vs true flow, px
    vflow:     {kind: r2, weight: 0.0}   # agl · scale · direction vs true flow (the score's)
    ramp:      {kind: mse, weight: 0.0, max_slope: 3.0}  # facade-ramp field vs ∇(true AGL), m/px
    facade:    {weight: 1.0, tol: 0.3}   # facade logits vs the true facades, cross-entropy

``kind`` is ``mse``, ``huber`` (``delta`` in the target's unit), ``l1`` or ``r2`` (1 - R2 pooled
over every valid pixel of the batch, the first place's loss); ``trim`` drops that fraction of
the worst (largest-loss) valid pixels first. A target with weight 0 or ``null`` is skipped.
Every key's default, kind and bounds: :data:`LOSS` (``GeoposeLoss.options``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from geopose.errors import ConfigError
from geopose.models.heads import MAX_SLOPE, RAMP_HUBER, facade_mask, ramp_target
from geopose.schema import Opt, Section, check_section, defaults_of

LOSS_KINDS = ("mse", "huber", "l1", "r2")


def _target(weight: float, kinds: tuple[str, ...] = LOSS_KINDS, **more: Opt) -> dict[str, Opt]:
    """A per-target loss's options (:func:`masked_loss`)."""
    return {
        "kind": Opt("mse", "str", "pointwise loss, or r2 (1 - pooled R2)", choices=kinds),
        "weight": Opt(weight, "float", "weight in the total (0: off)", min=0),
        "delta": Opt(1.0, "float", "huber: threshold, in the target's unit", gt=0),
        **more,
    }


_TRIM = Opt(0.0, "float", "drop this fraction of the worst valid pixels", min=0, lt=1)
LOSS: dict[str, Opt | Section] = {
    "agl": Section(_target(1.0, trim=_TRIM), "AGL (m)", optional=True),
    "mag": Section(_target(1.0, trim=_TRIM), "MAG (px)", optional=True),
    "direction": Section(
        {
            "weight": Opt(1.0, "float", "weight in the total (0: off)", min=0),
            "cos_weight": Opt(1.0, "float", "weight of mean(1 - cos)", min=0),
            "mse_weight": Opt(0.1, "float", "weight of the vectors' MSE", min=0),
        },
        "direction (unit vectors)",
        optional=True,
    ),
    "scale": Section(_target(1.0, ("mse", "huber", "l1")), "scale (px/m)", optional=True),
    "flow": Section(_target(0.0, trim=_TRIM), "dense flow vs true flow (px)", optional=True),
    "vflow": Section(
        _target(0.0, trim=_TRIM), "agl · scale · direction vs true flow (px)", optional=True
    ),
    "facade": Section(
        {
            "weight": Opt(1.0, "float", "weight in the total (0: off)", min=0),
            "tol": Opt(
                RAMP_HUBER, "float", "a facade obeys ∇z·v = -1 to within this (true pose)", gt=0
            ),
        },
        "facade logits vs the true facades (binary cross-entropy)",
        optional=True,
        present=False,
    ),
    "ramp": Section(
        _target(
            0.0,
            trim=_TRIM,
            max_slope=Opt(MAX_SLOPE, "float", "steepest ramp of the target, m/px", gt=0),
        ),
        "facade-ramp field vs ∇(true AGL) (m/px)",
        optional=True,
    ),
}
"""Every key of a ``loss:`` section, one entry per target."""

LOSS_DEFAULTS: dict[str, Any] = defaults_of(LOSS)
"""The ``loss:`` section with every default."""


def resolve_loss_config(cfg: dict | None) -> dict:
    """Fill a ``loss:`` section with defaults; targets with weight 0 or null become None."""
    out = check_section("loss", LOSS, cfg)
    return {k: None if v is None or v["weight"] == 0.0 else v for k, v in out.items()}


def _residual(pred: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual with 0 where the truth is not finite, validity mask)."""
    pred, true = pred.float(), true.reshape(pred.shape).float()  # float32 under AMP too
    mask = torch.isfinite(true)
    res = torch.where(mask, pred - torch.nan_to_num(true, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    return res, mask


def _pointwise(res: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "mse":
        return res * res
    if kind == "huber":
        return F.huber_loss(res, torch.zeros_like(res), reduction="none", delta=delta)
    if kind == "l1":
        return res.abs()
    raise ConfigError(f"loss kind {kind!r} is not one of {list(LOSS_KINDS)}")


def _trim_mask(values: torch.Tensor, mask: torch.Tensor, trim: float) -> torch.Tensor:
    """Mask without the ``trim`` fraction of valid elements with the largest ``values``."""
    if trim <= 0.0:
        return mask
    n = int(mask.sum())
    drop = int(math.floor(trim * n))
    if drop <= 0:
        return mask
    valid = values.detach()[mask]
    threshold = torch.kthvalue(valid, n - drop).values  # largest kept value
    keep = mask & (values.detach() <= threshold)
    # Ties at the threshold could keep too many; drop the surplus ties deterministically.
    surplus = int(keep.sum()) - (n - drop)
    if surplus > 0:
        ties = torch.nonzero((keep & (values.detach() == threshold)).flatten()).flatten()
        keep = keep.flatten().clone()
        keep[ties[:surplus]] = False
        keep = keep.reshape(mask.shape)
    return keep


def masked_loss(
    pred: torch.Tensor,
    true: torch.Tensor,
    kind: str = "mse",
    delta: float = 1.0,
    trim: float = 0.0,
) -> torch.Tensor:
    """Mean pointwise loss (or 1 - R2 with ``kind="r2"``) over the finite truth elements,
    pooled over the whole batch, after dropping the worst ``trim`` fraction. 0 if none valid."""
    if kind == "r2":
        return r2_loss(pred, true, trim=trim)
    res, mask = _residual(pred, true)
    per = _pointwise(res, kind, delta)
    keep = _trim_mask(per, mask, trim)
    count = keep.sum()
    total = torch.where(keep, per, 0.0).sum()
    return total / count.clamp(min=1)


def r2_loss(pred: torch.Tensor, true: torch.Tensor, trim: float = 0.0) -> torch.Tensor:
    """1 - R2 pooled over every finite truth element of the batch: SSE / SST, SST around the
    pooled mean of the truth (as the competition score). With ``trim`` the worst squared
    residuals are dropped from both sums."""
    res, mask = _residual(pred, true)
    keep = _trim_mask(res * res, mask, trim)
    t = torch.where(keep, torch.nan_to_num(true.reshape(pred.shape).float(), nan=0.0), 0.0)
    n = keep.sum().clamp(min=1)
    mean = t.sum() / n
    sst = torch.where(keep, (t - mean) ** 2, 0.0).sum()
    sse = torch.where(keep, res * res, 0.0).sum()
    return sse / sst.clamp(min=1e-6)


def bce_loss(logits: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of logits against 0/1 truth, mean over the finite truth elements of
    the batch (0 if none)."""
    logits, true = logits.float(), true.reshape(logits.shape).float()
    mask = torch.isfinite(true)
    t = torch.nan_to_num(true, nan=0.0)
    per = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    return torch.where(mask, per, 0.0).sum() / mask.sum().clamp(min=1)


def direction_loss(
    pred: torch.Tensor, true: torch.Tensor, mse_weight: float = 0.1, cos_weight: float = 1.0
) -> torch.Tensor:
    """Seed 004's direction loss: cos_weight · mean(1 - cos(pred, true)) + mse_weight · MSE.
    B×2 vectors (sin a, cos a); rows with non-finite truth are ignored."""
    pred, true = pred.float(), true.reshape(pred.shape).float()
    ok = torch.isfinite(true).all(dim=1)
    t = torch.where(ok[:, None], torch.nan_to_num(true, nan=0.0), 0.0)
    p = torch.where(ok[:, None], pred, 0.0)
    cos = (F.normalize(p, dim=1, eps=1e-8) * F.normalize(t, dim=1, eps=1e-8)).sum(dim=1)
    n = ok.sum().clamp(min=1)
    cos_term = torch.where(ok, 1.0 - cos, 0.0).sum() / n
    mse_term = ((p - t) ** 2).sum() / (2 * n)
    return cos_weight * cos_term + mse_weight * mse_term


def _true_flow(batch: dict) -> torch.Tensor:
    """True flow B×2×H×W (px) = mag · (sin a, cos a); NaN where the height is missing."""
    mag = batch["mag"]
    mag = mag if mag.dim() == 4 else mag.unsqueeze(1)
    return mag * batch["direction"][:, :, None, None]


class GeoposeLoss(nn.Module):
    """Weighted sum of the per-target losses of a recipe's ``loss:`` section (see module doc).

    ``loss(out: GeoposeOutput, batch: dict) -> (total, parts)``, parts holding each active
    target's unweighted loss. :attr:`options`: the keys of the ``loss:`` section (:data:`LOSS`).
    """

    options: ClassVar[dict[str, Opt | Section]] = LOSS

    def __init__(self, cfg: dict | None = None) -> None:
        super().__init__()
        self.cfg = resolve_loss_config(cfg)

    def forward(self, out, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        c = self.cfg
        for name in ("agl", "mag"):
            if c[name] is not None:
                parts[name] = masked_loss(getattr(out, name), batch[name], **_dense_args(c[name]))
        if c["direction"] is not None:
            d = c["direction"]
            parts["direction"] = direction_loss(
                out.direction, batch["direction"], d["mse_weight"], d["cos_weight"]
            )
        if c["scale"] is not None:
            s = c["scale"]
            parts["scale"] = masked_loss(out.scale, batch["scale"], s["kind"], s["delta"])
        if c["flow"] is not None or c["vflow"] is not None:
            true_flow = _true_flow(batch)
            if c["flow"] is not None:
                pred = out.flow
                if pred is None:
                    pred = out.mag * out.direction[:, :, None, None]
                parts["flow"] = masked_loss(pred, true_flow, **_dense_args(c["flow"]))
            if c["vflow"] is not None:
                pred = out.agl * (out.scale[:, None] * out.direction)[:, :, None, None]
                parts["vflow"] = masked_loss(pred, true_flow, **_dense_args(c["vflow"]))
        if c["ramp"] is not None:
            if out.ramp is None:
                raise ConfigError("loss.ramp needs a model with a ramp head (model.ramp)")
            target = ramp_target(batch["agl"], c["ramp"]["max_slope"])
            parts["ramp"] = masked_loss(out.ramp, target, **_dense_args(c["ramp"]))
        if c["facade"] is not None:
            if out.facade is None:
                raise ConfigError("loss.facade needs a model with a facade head (model.facade)")
            flow = batch["scale"].reshape(-1, 1).float() * batch["direction"].float()
            truth = facade_mask(batch["agl"], flow, c["facade"]["tol"])
            parts["facade"] = bce_loss(out.facade, truth)
        total = sum(c[k]["weight"] * v for k, v in parts.items())
        if not parts:
            total = out.agl.sum() * 0.0
        return total, parts


def _dense_args(c: dict) -> dict:
    return {"kind": c["kind"], "delta": c["delta"], "trim": c["trim"]}
