"""VFLOW json: ``{"scale": px per CENTIMETRE, "angle": radians}`` <-> (angle rad, scale px/m)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

from geopose.errors import GeoposeDataError
from geopose.geometry import TWO_PI
from geopose.io.atomic import write_text_atomic


class Vflow(NamedTuple):
    """Image-level pose: ``angle`` in radians [0, 2π), ``scale`` in pixels per metre."""

    angle: float
    scale: float


def parse_vflow(obj: object, path: str | Path | None = None) -> Vflow:
    """Check a decoded VFLOW json object and convert it to a :class:`Vflow` (px/m)."""
    if not isinstance(obj, dict):
        raise GeoposeDataError(path, f"VFLOW json must be an object, got {type(obj).__name__}")
    missing = [k for k in ("scale", "angle") if k not in obj]
    if missing:
        raise GeoposeDataError(path, f"VFLOW json lacks key(s) {', '.join(missing)}")
    vals = {}
    for key in ("scale", "angle"):
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise GeoposeDataError(path, f"VFLOW {key!r} must be a number, got {v!r}")
        if not math.isfinite(v):
            raise GeoposeDataError(path, f"VFLOW {key!r} is not finite ({v})")
        vals[key] = float(v)
    if not 0.0 <= vals["angle"] < TWO_PI:
        raise GeoposeDataError(path, f"VFLOW angle {vals['angle']} is outside [0, 2π)")
    if vals["scale"] < 0:
        raise GeoposeDataError(path, f"VFLOW scale {vals['scale']} is negative")
    return Vflow(angle=vals["angle"], scale=vals["scale"] * 100.0)


def read_vflow(path: str | Path) -> Vflow:
    """Read a VFLOW json file -> :class:`Vflow` with scale in px/m."""
    path = Path(path)
    if not path.is_file():
        raise GeoposeDataError(path, "file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GeoposeDataError(path, f"not valid JSON ({exc})") from exc
    return parse_vflow(obj, path)


def vflow_json(angle: float, scale_px_per_m: float) -> str:
    """The competition json text for an angle (rad) and a scale (px/m)."""
    a = float(angle) % TWO_PI
    if a >= TWO_PI:
        a = 0.0
    return json.dumps({"scale": float(scale_px_per_m) / 100.0, "angle": a})


def write_vflow(
    path: str | Path, angle: float, scale_px_per_m: float, overwrite: bool = True
) -> Path:
    """Write a VFLOW json (scale converted to px/cm, angle wrapped into [0, 2π)), atomically."""
    if not (math.isfinite(angle) and math.isfinite(scale_px_per_m)):
        raise ValueError(f"non-finite VFLOW angle={angle} scale={scale_px_per_m}")
    return write_text_atomic(path, vflow_json(angle, scale_px_per_m), overwrite)
