"""Augmentation: geometric (moves image, AGL, MAG, angle and scale together) and photometric."""

from geopose.transforms.geometric import (
    GeometricAugment,
    GeometricPlan,
    affine,
    d4,
    draws_d4,
    fliplr,
    flipud,
    height_scale,
    rot90,
    transpose,
)
from geopose.transforms.photometric import PhotometricAugment
from geopose.types import Sample

__all__ = [
    "GeometricAugment",
    "GeometricPlan",
    "PhotometricAugment",
    "Sample",
    "affine",
    "d4",
    "draws_d4",
    "fliplr",
    "flipud",
    "height_scale",
    "rot90",
    "transpose",
]
