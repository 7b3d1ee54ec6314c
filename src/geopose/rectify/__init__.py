"""Rectify an oblique image to a nadir (straight-down) view with its AGL and flow.

Every pixel moves by its flow to its ground footprint, ``ground = seen + flow`` with
``flow = agl * scale * (sin a, cos a)`` pixels (CONVENTIONS.md). Several pixels can land on one
ground pixel (a roof and the wall below it): a z-buffer keeps the tallest. Ground pixels that no
pixel reached are occluded (hidden behind something taller, or seen from outside the frame) and
are marked in a mask; one-pixel gaps left by the stretching of sloped or noisy heights are
filled from a neighbour. The output grid is the input grid (the image is
ground-registered), so a georeferenced input keeps its CRS and transform.

``core`` holds the algorithm on arrays, ``windowed`` scenes of any size window by window, and
``files`` the files and folders ``geopose rectify`` reads and writes.
"""

from geopose.rectify.core import Rectified, ground_positions, rectify
from geopose.rectify.files import (
    FolderSummary,
    rectify_files,
    rectify_folder,
    write_rectified,
)
from geopose.rectify.windowed import WINDOW, rectify_halo, rectify_windowed

__all__ = [
    "WINDOW",
    "FolderSummary",
    "Rectified",
    "ground_positions",
    "rectify",
    "rectify_files",
    "rectify_folder",
    "rectify_halo",
    "rectify_windowed",
    "write_rectified",
]
