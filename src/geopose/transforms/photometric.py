"""Photometric augmentation of the RGB only (albumentations), seed 004's list.

``heavy``: brightness/contrast, tone curve, gamma, one of Gaussian / ISO / multiplicative
noise, RGB shift, HSV shift, fancy PCA, fog, and coarse dropout of up to 128×128 blocks at a
512 crop (scaled with the crop). ``light``: brightness/contrast, gamma and mild Gaussian noise.
``none``: identity. Targets are untouched: these change colours, not geometry.

Each call is seeded (``aug(rgb, seed)``) so that a sample's augmentation depends only on its
seed, not on the worker that made it.
"""

from __future__ import annotations

import random

import numpy as np

REFERENCE_CROP = 512
"""Crop side (px) at which the dropout holes are at most 128 px."""


def _heavy(crop: int) -> list:
    import albumentations as A

    hole = max(2, round(128 * crop / REFERENCE_CROP))
    return [
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.RandomToneCurve(scale=0.1, p=0.3),
        A.RandomGamma(gamma_limit=(80, 120), p=0.3),
        A.OneOf(
            [
                A.GaussNoise(std_range=(0.02, 0.08), p=1.0),
                A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.5), p=1.0),
                A.MultiplicativeNoise(
                    multiplier=(0.9, 1.1), per_channel=True, elementwise=True, p=1.0
                ),
            ],
            p=0.3,
        ),
        A.RGBShift(r_shift_limit=15, g_shift_limit=15, b_shift_limit=15, p=0.3),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=15, p=0.3),
        A.FancyPCA(alpha=0.1, p=0.2),
        A.RandomFog(fog_coef_range=(0.05, 0.2), alpha_coef=0.08, p=0.02),
        A.CoarseDropout(
            num_holes_range=(1, 4),
            hole_height_range=(max(1, hole // 8), hole),
            hole_width_range=(max(1, hole // 8), hole),
            fill=0,
            p=0.2,
        ),
    ]


def _light(crop: int) -> list:
    import albumentations as A

    return [
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.RandomGamma(gamma_limit=(90, 110), p=0.3),
        A.GaussNoise(std_range=(0.01, 0.04), p=0.2),
    ]


def _leaves(transform) -> list:
    """Every transform and nested compose inside ``transform`` (depth first)."""
    out = [transform]
    for t in getattr(transform, "transforms", []) or []:
        out.extend(_leaves(t))
    return out


class PhotometricAugment:
    """``aug(rgb H×W×3 uint8, seed) -> rgb`` at a level (``none | light | heavy``)."""

    def __init__(self, level: str = "heavy", crop: int = REFERENCE_CROP) -> None:
        if level not in ("none", "light", "heavy"):
            raise ValueError(f"augmentation level must be none, light or heavy, got {level!r}")
        self.level = level
        self.crop = crop
        self._compose = None

    @property
    def compose(self):
        """The albumentations pipeline (built on first use, so the object pickles light)."""
        if self._compose is None and self.level != "none":
            import albumentations as A

            build = _heavy if self.level == "heavy" else _light
            self._compose = A.Compose(build(self.crop))
        return self._compose

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_compose": None}

    def reseed(self, seed: int) -> None:
        """Give every transform its own random stream derived from ``seed``.

        (albumentations' ``set_random_seed`` gives them all the same seed, which makes every
        transform's "apply?" draw identical, switching them on or off together.)
        """
        nodes = _leaves(self.compose)
        seeds = np.random.SeedSequence(seed).generate_state(len(nodes))
        for node, s in zip(nodes, seeds, strict=True):
            node.random_generator = np.random.default_rng(int(s))
            node.py_random = random.Random(int(s))

    def __call__(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        if self.level == "none":
            return rgb
        self.reseed(seed)
        return self.compose(image=rgb)["image"]
