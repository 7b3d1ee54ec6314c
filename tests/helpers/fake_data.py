"""A tiny fake data set in the real competition layout.

``make_fake_dataset(root, ...)`` writes ``metadata.csv``, ``geopose_train.csv``,
``geopose_test.csv``, ``train/{CITY}_{ID}_RGB.j2k|_AGL.tif|_VFLOW.json`` and
``test/{CITY}_{ID}_RGB.j2k`` with the geopose.io writers, and returns a :class:`FakeDataset`
holding the values written (metres, px/m) so tests can compare against them. Use it through the
``make_fake_dataset`` fixture (``make_fake_dataset(tmp_path / "data", n_train=3)``) or take the
ready-made ``fake_dataset`` fixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from geopose.io import Vflow, agl_name, rgb_name, vflow_name, write_agl, write_rgb, write_vflow


@dataclass
class FakeDataset:
    """What :func:`make_fake_dataset` wrote. Arrays are as read back (AGL in metres, NaN)."""

    root: Path
    train: list[str]  # stems ``{CITY}_{ID}``
    test: list[str]
    ids: dict[str, str]  # stem -> csv id
    gsd: dict[str, float]  # stem -> m/px
    rgb: dict[str, np.ndarray] = field(default_factory=dict)  # stem -> H×W×3 uint8
    agl: dict[str, np.ndarray] = field(default_factory=dict)  # stem -> H×W float32 m (train)
    vflow: dict[str, Vflow] = field(default_factory=dict)  # stem -> (angle rad, scale px/m)

    def path(self, stem: str, kind: str = "RGB") -> Path:
        """Path of one file of the data set (kind RGB, AGL or VFLOW)."""
        split = "train" if stem in self.train else "test"
        name = {"RGB": rgb_name(stem), "AGL": agl_name(stem), "VFLOW": vflow_name(stem)}[kind]
        return self.root / split / name


def fake_rgb(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field with a few flat blocks (H×W×3 uint8), not pure noise."""
    coarse = rng.uniform(40, 200, (4, 4, 3)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(3):
        r, c = rng.integers(0, size - 8, 2)
        img[r : r + 8, c : c + 8] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def fake_agl(rng: np.random.Generator, size: int, nan_fraction: float = 0.05) -> np.ndarray:
    """Blocky buildings (m, centimetre-exact) with a few NaN pixels, H×W float32."""
    agl = np.zeros((size, size), np.float32)
    for _ in range(4):
        r, c = rng.integers(0, size - 6, 2)
        h, w = rng.integers(3, 10, 2)
        agl[r : r + h, c : c + w] = np.round(rng.uniform(2, 60), 2)
    agl[rng.random((size, size)) < nan_fraction] = np.nan
    return agl


def make_fake_dataset(
    root: str | Path,
    n_train: int = 4,
    n_test: int = 2,
    size: int = 32,
    cities: tuple[str, ...] = ("JAX", "OMA"),
    seed: int = 0,
    rgb_suffix: str = ".j2k",
) -> FakeDataset:
    """Write a tiny data set in the competition layout under ``root`` and describe it.

    Images are ``size``×``size`` px, cities taken in turn from ``cities``; JPEG 2000 is written
    losslessly so the RGB read back equals :attr:`FakeDataset.rgb`.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ds = FakeDataset(root=root, train=[], test=[], ids={}, gsd={})
    meta, train_rows, test_rows = [], [], []
    for i in range(n_train + n_test):
        split = "train" if i < n_train else "test"
        city = cities[i % len(cities)]
        img_id = f"{split[:2]}{i:04d}"
        stem = f"{city}_{img_id}"
        gsd = float(np.round(rng.uniform(0.3, 0.6), 4))
        ds.ids[stem], ds.gsd[stem] = img_id, gsd
        meta.append({"id": img_id, "city": city, "gsd": gsd})
        folder = root / split
        rgb = fake_rgb(rng, size)
        write_rgb(folder / rgb_name(stem, rgb_suffix), rgb, quality=0)
        ds.rgb[stem] = rgb
        if split == "test":
            ds.test.append(stem)
            test_rows.append({"id": img_id, "rgb": rgb_name(stem, rgb_suffix)})
            continue
        ds.train.append(stem)
        agl = fake_agl(rng, size)
        angle, scale = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.5, 3.0))
        write_agl(folder / agl_name(stem), agl)
        write_vflow(folder / vflow_name(stem), angle, scale)
        ds.agl[stem], ds.vflow[stem] = agl, Vflow(angle, scale)
        train_rows.append(
            {
                "id": img_id,
                "agl": agl_name(stem),
                "json": vflow_name(stem),
                "rgb": rgb_name(stem, rgb_suffix),
            }
        )
    pd.DataFrame(meta).to_csv(root / "metadata.csv", index=False)
    pd.DataFrame(train_rows, columns=["id", "agl", "json", "rgb"]).to_csv(
        root / "geopose_train.csv", index=False
    )
    pd.DataFrame(test_rows, columns=["id", "rgb"]).to_csv(root / "geopose_test.csv", index=False)
    return ds
