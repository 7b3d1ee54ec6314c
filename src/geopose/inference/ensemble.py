"""Ensembles of checkpoints and models, with optional weights, from a YAML spec.

A spec lists members; paths are relative to the spec file::

    members:
      - checkpoint: runs/b7/best.ckpt
        weight: 2
      - checkpoints: [runs/v2l/epoch=40.ckpt, runs/v2l/epoch=45.ckpt]   # one weight each
        weight: 1
      - runs/r34/last.ckpt                                            # weight 1
      - model: second_b7_unet_fold0                   # a published model (downloaded), or a file

Members are geopose checkpoints, published challenge checkpoints of any known family, or names
of published models in the cache (``geopose.models.load_model``).

Members are averaged by the rule of :mod:`geopose.inference.average` (maps and scales weighted
means, directions weighted unit-vector means, renormalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from torch import nn

from geopose.errors import GeoposeDataError
from geopose.inference.average import average_outputs
from geopose.types import GeoposeOutput

Member = tuple[str | Path, float]
"""A model (checkpoint path or published model name) and its weight."""


class Ensemble(nn.Module):
    """Average several models' outputs: ``forward(image, gsd, city) -> output``."""

    def __init__(
        self, members: Sequence[nn.Module], weights: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if weights is not None and len(weights) != len(members):
            raise ValueError(f"{len(members)} members but {len(weights)} weights")
        self.members = nn.ModuleList(members)
        self.weights = None if weights is None else [float(w) for w in weights]

    def forward(
        self, image: torch.Tensor, gsd: torch.Tensor, city: torch.Tensor | None
    ) -> GeoposeOutput:
        outs = [m(image, gsd, city) for m in self.members]
        return outs[0] if len(outs) == 1 else average_outputs(outs, self.weights)


def _weight(entry: dict, spec: Path) -> float:
    w = entry.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
        raise GeoposeDataError(spec, f"member weight must be a positive number, got {w!r}")
    return float(w)


def read_ensemble_spec(path: str | Path) -> list[Member]:
    """Read an ensemble YAML spec -> [(checkpoint path or published name, weight)], checking
    every file exists."""
    from geopose.models.zoo import catalog

    path = Path(path)
    if not path.is_file():
        raise GeoposeDataError(path, "ensemble spec not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GeoposeDataError(path, f"not valid YAML ({exc})") from exc
    entries = doc.get("members") if isinstance(doc, dict) else doc
    if not isinstance(entries, list) or not entries:
        raise GeoposeDataError(path, "expected a non-empty 'members:' list")
    out: list[Member] = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"checkpoint": entry}
        if not isinstance(entry, dict):
            raise GeoposeDataError(path, f"a member must be a path or a mapping, got {entry!r}")
        unknown = set(entry) - {"checkpoint", "checkpoints", "model", "weight"}
        if unknown:
            raise GeoposeDataError(path, f"unknown member key(s) {sorted(unknown)}")
        ckpts = entry.get("checkpoints") or [entry.get("checkpoint") or entry.get("model")]
        if not isinstance(ckpts, list) or not all(isinstance(c, str) for c in ckpts):
            raise GeoposeDataError(
                path, f"member needs 'checkpoint: PATH' or 'checkpoints: [..]': {entry!r}"
            )
        w = _weight(entry, path)
        for c in ckpts:
            p = Path(c) if Path(c).is_absolute() else path.parent / c
            if p.is_file():
                out.append((p, w))
            elif c in catalog.CATALOG:
                out.append((c, w))
            else:
                raise GeoposeDataError(p, f"model listed in {path} not found")
    return out


def load_ensemble(members: Sequence[Member]) -> tuple[list[nn.Module], list[float], list[dict]]:
    """Load models (``geopose.models.load_model``: checkpoints, published files or names) ->
    (models, weights, configs)."""
    from geopose.models import load_model

    models, weights, configs = [], [], []
    for path, w in members:
        model, cfg = load_model(path)
        models.append(model)
        weights.append(w)
        configs.append(cfg)
    return models, weights, configs
