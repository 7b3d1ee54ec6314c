"""geopose: geocentric pose (height above ground, flow angle, scale) of oblique satellite images."""

from geopose.errors import GeoposeDataError, GeoposeError, OutputExistsError

__version__ = "0.1.0"

__all__ = ["GeoposeDataError", "GeoposeError", "OutputExistsError", "__version__"]
