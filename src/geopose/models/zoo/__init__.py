"""Published models of the Overhead Geopose Challenge, run exactly on today's PyTorch.

Each family module holds the original architecture (state-dict keys as published), a converter
that recognises the family's files by content, and its model cards:

- ``baseline``: the official baseline (resnet34 UNet, xydir/height/mag heads), pubgeo;
- ``first``: 1st place, TimmUnet on ``tf_efficientnetv2_l_in21k``;
- ``second``: 2nd place, ``GeoposeUNetModel`` (b7_unet, b7_rdtsc_unet, b6_rdtsc_unet), the
  architecture read from the config stored in each checkpoint;
- ``fourth``: 4th place, smp UNet on senet154 / efficientnet-b6 / -b7 with city and GSD in the
  bottleneck (TorchScript archives).

>>> from geopose.models.zoo import load_published
>>> model = load_published("model_best.pth")     # any published file, whatever its name
>>> out = model(image, gsd, city)                  # GeoposeOutput (AGL m, MAG px, ...)
"""

from __future__ import annotations

from pathlib import Path

from geopose.errors import GeoposeDataError

# Importing a family module registers it (timm-style).
from geopose.models.zoo import baseline, first, fourth, second  # noqa: E402, F401, I001
from geopose.models.zoo.base import (
    FAMILIES,
    Container,
    Family,
    PublishedModel,
    build_published,
    family_of,
    load_strict,
    read_container,
    register_family,
)


def convert_container(container: Container) -> PublishedModel:
    """A read published file -> its model (eval mode), or a one-line error naming the file."""
    fam = family_of(container)
    if fam is None:
        raise GeoposeDataError(
            container.path,
            f"not a published Geopose Challenge model of a known family "
            f"({', '.join(FAMILIES)}): found {container.describe()}",
        )
    return fam.from_container(container).eval()


def load_published(path: str | Path) -> PublishedModel:
    """Read and convert a published checkpoint file (any known family) -> model in eval mode."""
    return convert_container(read_container(path))


__all__ = [
    "FAMILIES",
    "Container",
    "Family",
    "PublishedModel",
    "build_published",
    "convert_container",
    "family_of",
    "load_published",
    "load_strict",
    "read_container",
    "register_family",
]
