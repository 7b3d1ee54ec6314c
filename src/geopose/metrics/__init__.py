"""The competition score: float64 sufficient statistics per city (numpy, streaming), a
torchmetrics ``Metric`` over training batches, and scoring of prediction folders.

``GeoposeScore`` (torch) and ``evaluate_folders`` are imported lazily so that
``import geopose.metrics`` stays light (no torch on the ``geopose evaluate`` path).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geopose.metrics.score import FIELDS, ScoreAccumulator, city_metrics, image_stats, r2_from_sums

if TYPE_CHECKING:
    from geopose.metrics.evaluate import evaluate_folders
    from geopose.metrics.torchmetric import GeoposeScore

__all__ = [
    "FIELDS",
    "GeoposeScore",
    "ScoreAccumulator",
    "city_metrics",
    "evaluate_folders",
    "image_stats",
    "r2_from_sums",
]

_LAZY = {
    "GeoposeScore": "geopose.metrics.torchmetric",
    "evaluate_folders": "geopose.metrics.evaluate",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
