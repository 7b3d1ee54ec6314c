"""Synthetic oblique cities with exact truth, in the competition layout (``geopose synth``).

- :func:`make_scene` draws a city scene in ground coordinates (:class:`Scene`).
- :func:`render` ray-marches its oblique view for an angle, scale and sun (:class:`Rendered`).
- :func:`write_dataset` writes a whole data set (train, test, test truth) to a folder.
"""

from geopose.synth.cities import (
    CITY_CODES,
    STYLES,
    CityStyle,
    ViewGeometry,
    draw_geometry,
    get_style,
)
from geopose.synth.dataset import TruthOptions, render_image, write_dataset
from geopose.synth.render import Rendered, render
from geopose.synth.world import Scene, make_scene

__all__ = [
    "CITY_CODES",
    "STYLES",
    "CityStyle",
    "Rendered",
    "Scene",
    "TruthOptions",
    "ViewGeometry",
    "draw_geometry",
    "get_style",
    "make_scene",
    "render",
    "render_image",
    "write_dataset",
]
