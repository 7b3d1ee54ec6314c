"""Matplotlib figures of geopose predictions (Agg canvas, no pyplot, no display needed).

- :func:`image_figure`: one image: RGB | AGL | MAG | flow arrows over the RGB | rectified RGB |
  rectified AGL, and with truth a second row: true AGL | AGL error | flow end-point error |
  predicted-vs-true height (hexbin).
- :func:`score_bars`: per-city score, R²(AGL) and R²(VFLOW) bars from an evaluate result.
- :func:`training_curves`: every logged metric of a Lightning ``metrics.csv`` against the step.
- :func:`read_scene_for_figure`: a scene of any size read decimated (from its overviews) for
  :func:`image_figure`, with the factor its scale is multiplied by.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from geopose.errors import GeoposeDataError
from geopose.geometry import angle_error_deg, flow_from_agl
from geopose.io import atomic_path

PANEL_IN = 3.0
"""Size of one image panel, inches."""
DISPLAY_PX = 768
"""Images larger than this (px) are shown thinned (every k-th pixel); the maths is full size."""


class Truth(NamedTuple):
    """True AGL (H×W m, NaN = missing), angle (rad) and scale (px/m) of one image."""

    agl: np.ndarray
    angle: float
    scale: float


def _new_figure(rows: int, cols: int, panel: float = PANEL_IN) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cols * panel, rows * panel * 0.95), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _thin(arr: np.ndarray) -> np.ndarray:
    """Every k-th pixel so the longest side is at most :data:`DISPLAY_PX` (display only)."""
    k = max(1, math.ceil(max(arr.shape[:2]) / DISPLAY_PX))
    return arr[::k, ::k]


def _image(ax, arr, title: str, cmap=None, vmin=None, vmax=None, label: str | None = None):
    """Show an image in ``ax`` without ticks, in full-resolution pixel coordinates; masked
    (NaN) pixels light grey; a colourbar labelled ``label`` for 2-D data."""
    import matplotlib

    h, w = arr.shape[:2]
    if cmap is not None:
        cmap = matplotlib.colormaps[cmap].with_extremes(bad="0.85")
    im = ax.imshow(
        _thin(arr),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        extent=(-0.5, w - 0.5, h - 0.5, -0.5),
    )
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if label is not None:
        ax.figure.colorbar(im, ax=ax, shrink=0.8, label=label)
    return im


def _height_range(*maps: np.ndarray) -> tuple[float, float]:
    vals = np.concatenate([m[np.isfinite(m)].ravel() for m in maps if m is not None])
    if vals.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(vals, 99.5))
    return 0.0, max(hi, 1e-3)


def _masked(a: np.ndarray) -> np.ma.MaskedArray:
    return np.ma.masked_invalid(a)


def _flow_arrows(ax, rgb, agl, angle: float, scale: float, arrows: int = 16) -> None:
    """Arrows from where each sampled pixel is seen to its ground footprint (true length, px)."""
    h, w = agl.shape
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    if rgb is not None:
        ax.imshow(_thin(rgb), interpolation="nearest", extent=extent)
    else:
        ax.imshow(_thin(_masked(agl)), cmap="gray", interpolation="nearest", extent=extent)
    step = max(1, min(h, w) // arrows)
    ys, xs = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    flow = flow_from_agl(agl[ys, xs], angle, scale)
    u = np.nan_to_num(flow[..., 0])
    v = np.nan_to_num(flow[..., 1])
    # angles="xy" with the image's downward y axis draws (dx, dy) as the pixel displacement.
    ax.quiver(xs, ys, u, v, angles="xy", scale_units="xy", scale=1, color="yellow", width=0.006)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"flow: {math.degrees(angle):.1f}°, {scale:.3g} px/m", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _hexbin(ax, pred: np.ndarray, true: np.ndarray) -> None:
    ok = np.isfinite(true) & np.isfinite(pred)
    p, t = pred[ok], true[ok]
    if t.size == 0:
        ax.text(0.5, 0.5, "no valid truth", ha="center", va="center", transform=ax.transAxes)
        return
    hi = float(max(np.percentile(t, 99.9), np.percentile(p, 99.9), 1e-3))
    ax.hexbin(t, p, gridsize=40, bins="log", cmap="viridis", mincnt=1, extent=(0, hi, 0, hi))
    ax.plot([0, hi], [0, hi], "r--", lw=1)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("true AGL (m)", fontsize=8)
    ax.set_ylabel("predicted AGL (m)", fontsize=8)
    sst = float(((t - t.mean()) ** 2).sum())
    r2 = 1 - float(((p - t) ** 2).sum()) / sst if sst > 0 else math.nan
    ax.set_title(f"height: R² {r2:.3f}, MAE {np.abs(p - t).mean():.2f} m", fontsize=9)
    ax.tick_params(labelsize=7)


def image_figure(
    rgb: np.ndarray | None,
    agl: np.ndarray,
    angle: float,
    scale: float,
    title: str = "",
    truth: Truth | None = None,
    rectified: bool = True,
) -> Figure:
    """Figure of one image's prediction.

    Row 1: RGB | AGL (m) | MAG (px) | flow arrows over the RGB | rectified RGB | rectified AGL
    (the RGB panels are left out when ``rgb`` is None, the rectified ones when ``rectified`` is
    False). Row 2, with ``truth``: true AGL | AGL error (pred - true, m) | flow end-point error
    (px) | predicted-vs-true height hexbin. ``angle`` radians, ``scale`` px/m.
    """
    from geopose.rectify import rectify

    agl = np.asarray(agl, dtype=np.float32)
    rect = rectify(rgb, agl, angle, scale) if rectified else None
    vmin, vmax = _height_range(agl, None if truth is None else truth.agl)
    mag = agl * np.float32(scale)
    panels = []
    if rgb is not None:
        panels.append(lambda ax: _image(ax, rgb, "RGB (oblique)"))
    panels.append(lambda ax: _image(ax, _masked(agl), "AGL", "viridis", vmin, vmax, "m"))
    panels.append(lambda ax: _image(ax, _masked(mag), "MAG", "magma", 0, vmax * scale, "px"))
    panels.append(lambda ax: _flow_arrows(ax, rgb, agl, angle, scale))
    if rect is not None:
        vis = f"{100 * rect.visible_fraction:.0f}% visible"
        if rect.rgb is not None:
            panels.append(lambda ax: _image(ax, rect.rgb, f"rectified RGB ({vis})"))
        panels.append(
            lambda ax: _image(ax, _masked(rect.agl), "rectified AGL", "viridis", vmin, vmax, "m")
        )
    rows = 1 if truth is None else 2
    cols = max(len(panels), 4 if truth is not None else 1)
    fig, axes = _new_figure(rows, cols)
    for ax, draw in zip(axes[0], panels, strict=False):
        draw(ax)
    for ax in axes[0][len(panels) :]:
        ax.set_axis_off()
    if truth is not None:
        _truth_row(axes[1], agl, angle, scale, truth, vmin, vmax)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _truth_row(axes, agl, angle, scale, truth: Truth, vmin: float, vmax: float) -> None:
    t = np.asarray(truth.agl, dtype=np.float32)
    if t.shape != agl.shape:
        raise ValueError(f"truth AGL {t.shape} does not match the prediction {agl.shape}")
    _image(axes[0], _masked(t), "true AGL", "viridis", vmin, vmax, "m")
    err = agl - t
    lim = float(np.nanpercentile(np.abs(err), 99)) if np.isfinite(err).any() else 1.0
    lim = max(lim, 1e-3)
    _image(axes[1], _masked(err), "AGL error (pred - true)", "RdBu_r", -lim, lim, "m")
    epe = np.linalg.norm(
        flow_from_agl(agl, angle, scale) - flow_from_agl(t, truth.angle, truth.scale), axis=-1
    )
    a_err = angle_error_deg(angle, truth.angle)
    title = f"flow EPE (angle err {a_err:.1f}°, scale {scale:.3g} vs {truth.scale:.3g})"
    hi = float(np.nanpercentile(epe, 99)) if np.isfinite(epe).any() else 1.0
    _image(axes[2], _masked(epe), title, "inferno", 0, max(hi, 1e-3), "px")
    _hexbin(axes[3], agl, t)
    for ax in axes[4:]:
        ax.set_axis_off()


# --- scenes: decimated reads -----------------------------------------------------------------

SCENE_DISPLAY_PX = 2048
"""Scenes are read for figures at most this many px a side (decimated, from the overviews of a
COG), so a figure of a 40,000 px scene costs about a 2048² read."""


def _decimated_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    k = max(1, math.ceil(max(width, height) / max_side))
    return max(1, math.ceil(height / k)), max(1, math.ceil(width / k))


def _size(path: str | Path) -> tuple[int, int]:
    """(rows, cols) of a raster."""
    import rasterio

    with rasterio.open(path) as src:
        return src.height, src.width


def read_decimated_agl(
    path: str | Path, max_side: int = SCENE_DISPLAY_PX
) -> tuple[np.ndarray, float]:
    """An AGL raster (float32 m or uint16 cm) read at most ``max_side`` px a side (nearest,
    from overviews where the file has them) -> ``(agl float32 m with NaN, factor)``, where
    ``factor`` = read width / full width: multiply a scale (px/m) by it for the decimated grid
    (CONVENTIONS.md: resize by f -> scale · f)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError

    from geopose.io import agl_to_m

    try:
        with rasterio.open(path) as src:
            shape = _decimated_shape(src.width, src.height, max_side)
            arr = src.read(1, out_shape=shape, resampling=Resampling.nearest)
            nodata, width = src.nodata, src.width
    except RasterioError as exc:
        raise GeoposeDataError(path, f"unreadable raster ({exc})") from exc
    agl = agl_to_m(arr)
    if nodata is not None and arr.dtype != np.uint16 and math.isfinite(nodata):
        agl[arr == nodata] = np.nan
    return agl, shape[1] / width


def read_decimated_rgb(
    path: str | Path,
    shape: tuple[int, int],
    bands: tuple[int, ...] | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
    full_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A scene's display bands read decimated to ``shape`` (rows, cols) -> H×W×3 uint8,
    through ``geopose.io.scene.Scene(path, bands, stretch, nodata)`` (its band choice and its
    one stretch per scene); nodata pixels black. ``full_size`` (rows, cols): the size the
    scene must have (that of its AGL), else :class:`GeoposeDataError`."""
    from rasterio.enums import Resampling

    from geopose.io.scene import Scene

    with Scene(path, bands=bands, stretch=stretch or "auto", nodata=nodata) as scene:
        if full_size is not None and (scene.height, scene.width) != tuple(full_size):
            raise GeoposeDataError(
                path,
                f"image is {scene.width}×{scene.height} px but its AGL is "
                f"{full_size[1]}×{full_size[0]} px",
            )
        data = scene.dataset.read(
            list(scene.bands), out_shape=(3, *shape), resampling=Resampling.nearest
        )
        if scene.nodata is not None and math.isfinite(scene.nodata):
            bad = (data == scene.nodata).all(axis=0)
        else:
            bad = np.zeros(shape, bool)
        if data.dtype.kind == "f":
            bad |= np.isnan(data).all(axis=0)
        if scene.stretch is not None:
            rgb = scene.stretch.apply(data)
        else:
            rgb = np.moveaxis(data, 0, -1).astype(np.uint8)
    rgb[bad] = 0
    return rgb


def read_scene_for_figure(
    rgb_path: str | Path | None,
    agl_path: str | Path,
    max_side: int = SCENE_DISPLAY_PX,
    bands: tuple[int, ...] | None = None,
    stretch: str | None = None,
    nodata: float | None = None,
) -> tuple[np.ndarray | None, np.ndarray, float]:
    """A scene's image (optional) and AGL on one decimated grid of at most ``max_side`` px a
    side: ``(rgb H×W×3 uint8 | None, agl H×W float32 m, factor)``; pass ``scale · factor`` to
    :func:`image_figure` (module doc of :func:`read_decimated_agl`)."""
    agl, factor = read_decimated_agl(agl_path, max_side)
    rgb = None
    if rgb_path is not None:
        rgb = read_decimated_rgb(rgb_path, agl.shape, bands, stretch, nodata, _size(agl_path))
    return rgb, agl, factor


# --- scores and training curves -------------------------------------------------------------


def city_table(scores: Mapping) -> dict[str, Mapping]:
    """``{city: {score, r2_agl, r2_vflow, ...}}`` from an evaluate result (``geopose evaluate
    --json``: ``{"final": ..., "cities": {...}}``)."""
    cities = scores.get("cities") if isinstance(scores, Mapping) else None
    if not isinstance(cities, Mapping) or not cities:
        raise ValueError("scores have no 'cities' table (expected geopose evaluate --json output)")
    return {str(c): m for c, m in cities.items()}


def _num(v) -> float:
    """A JSON number (None = NaN) as float."""
    return math.nan if v is None else float(v)


def score_bars(scores: Mapping, title: str = "Scores per city") -> Figure:
    """Grouped bars per city: score, R²(AGL), R²(VFLOW); a dashed line at the final score."""
    cities = city_table(scores)
    keys = [("score", "score"), ("r2_agl", "R² AGL"), ("r2_vflow", "R² VFLOW")]
    names = list(cities)
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, axes = _new_figure(1, 1, panel=1.0)
    fig.set_size_inches(max(4.5, 1.3 * len(names) + 2), 3.4)
    ax = axes[0, 0]
    for i, (key, label) in enumerate(keys):
        vals = [_num(cities[c].get(key)) for c in names]
        bars = ax.bar(x + (i - 1) * width, vals, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    final = _num(scores.get("final"))
    if math.isfinite(final):
        ax.axhline(final, color="k", ls="--", lw=1, label=f"final {final:.4f}")
    ax.set_xticks(x, names)
    lows = [_num(cities[c].get(k)) for c in names for k, _ in keys]
    low = np.nanmin(lows) if np.isfinite(lows).any() else 0.0
    ax.set_ylim(min(0.0, low - 0.05), 1.05)
    ax.set_ylabel("R² / score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _metric_groups(names: list[str]) -> dict[str, list[str]]:
    """Split logged metric names into panels: ``loss`` (losses and the training loss parts of
    ``geopose train``: ``train/loss``, ``train/agl``, ``val/loss``), ``score`` (score, R²) and
    ``other`` (angle error, scale error, gradient norm, learning rate, ...)."""
    groups: dict[str, list[str]] = {"loss": [], "score": [], "other": []}
    for name in names:
        low = name.lower()
        if "score" in low or "r2" in low:
            groups["score"].append(name)
        elif "loss" in low or (
            low.startswith("train/") and not any(k in low for k in ("grad", "lr", "error"))
        ):
            groups["loss"].append(name)
        else:
            groups["other"].append(name)
    return groups


def training_curves(csv_path: str | Path, title: str | None = None) -> Figure:
    """Every numeric column of a Lightning CSV log (``metrics.csv``) against the step, in up to
    three panels (losses, log scale when they span > 20×; scores and R²; other metrics)."""
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise GeoposeDataError(csv_path, "file not found")
    try:
        log = pd.read_csv(csv_path)
    except Exception as exc:
        raise GeoposeDataError(csv_path, f"unreadable csv ({type(exc).__name__}: {exc})") from exc
    x_col = "step" if "step" in log.columns else ("epoch" if "epoch" in log.columns else None)
    if x_col is None:
        raise GeoposeDataError(csv_path, "no 'step' or 'epoch' column: not a Lightning CSV log")
    metrics = [
        c
        for c in log.columns
        if c not in ("step", "epoch")
        and pd.api.types.is_numeric_dtype(log[c])
        and log[c].notna().any()
    ]
    if not metrics:
        raise GeoposeDataError(csv_path, "no metric columns with values")
    groups = [(g, n) for n, g in _metric_groups(metrics).items() if g]
    fig, axes = _new_figure(1, len(groups), panel=1.0)
    fig.set_size_inches(5.0 * len(groups), 3.4)
    for ax, (cols, ylabel) in zip(axes[0], groups, strict=True):
        for c in cols:
            d = log[[x_col, c]].dropna()
            marker = "o" if len(d) < 30 else None
            ax.plot(d[x_col], d[c], marker=marker, ms=3, lw=1.2, label=c)
        vals = log[cols].to_numpy(dtype=float)
        positive = np.nanmin(vals) > 0
        if ylabel != "score" and positive and np.nanmax(vals) / np.nanmin(vals) > 20:
            ax.set_yscale("log")
        ax.set_xlabel(x_col)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or f"training: {csv_path.parent.name}/{csv_path.name}", fontsize=10)
    return fig


# --- output ---------------------------------------------------------------------------------


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, overwrite: bool = False, dpi: int = 100) -> Path:
    """Save a figure (format from the suffix: .png, .pdf, .svg, .jpg) atomically."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    return path
