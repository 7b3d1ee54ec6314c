"""What the demo makes, where, and how long it may take: :class:`DemoSettings` and the
demo's fixed choices (recipe, training images, disk per pixel)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

DEMO_RECIPE = "cpu_small"
"""The recipe the demo trains."""

TRAIN_IMAGES = 1200
"""Training images the demo renders (90 % train, 10 % validation): rendering and caching them
take about 0.9 of the ten minutes on 2 cores, and a city's rarer passes (Argentina's 35° pass)
are seen often enough to be learned (BENCHMARKS.md, Experiments behind `cpu_small` and the
demo)."""

DATA_BYTES_PER_PIXEL, CACHE_BYTES_PER_PIXEL = 0.6, 4.9
"""Disk per training-image pixel: the rendered set (JPEG 2000 image, AGL GeoTIFF, JSON) and its
cache (a 1200-image 256² demo: 46 MB and 385 MB)."""
RUN_BYTES = 170e6
"""Disk of the training run: ``cpu_small``'s three kept checkpoints and ``last.ckpt`` (38 MB
each), its logs."""

UNBOUNDED_EPOCHS = 1_000_000
"""The demo's ``train.epochs``: more than any budget reaches, so that the minutes end training."""


@dataclass
class DemoSettings:
    """What the demo makes and how long it may take.

    ``minutes`` is the wall-clock budget of the whole demo; training gets what the other steps
    are expected to leave (at least ``min_train_minutes``).
    """

    out: Path
    minutes: float = 10.0
    n_train: int = TRAIN_IMAGES
    n_test: int = 24
    size: int = 256
    seed: int = 0
    tta: str | None = None  # None: the one the recipe suits (demo_tta)
    n_rectify: int = 4
    workers: int = 2
    uniform_angles: bool = False
    min_train_minutes: float = 0.2
    overrides: list[str] = field(default_factory=list)
    data_dir: Path | None = None  # default: OUT/data

    @property
    def data(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.out / "data"

    @property
    def cache(self) -> Path:
        """The training images as a ``geopose prepare`` cache (what training reads)."""
        return self.out / "cache"

    @property
    def run(self) -> Path:
        return self.out / "run"

    @property
    def pred(self) -> Path:
        return self.out / "predictions"

    @property
    def scores(self) -> Path:
        return self.out / "scores.json"

    @property
    def rectified(self) -> Path:
        return self.out / "rectified"

    @property
    def report(self) -> Path:
        return self.out / "report.html"


Log = Callable[[str], None]
