"""One self-contained HTML page about a predictions folder: score table, per-city bars, the
worst and best images with their figures. Every picture is an embedded base64 PNG and the CSS
is inline, so the single file can be mailed or archived as it is.

With truth, scores are the competition score of :mod:`geopose.metrics` (the same numbers as
``geopose evaluate``), and images are ranked by their own score ``(R²_agl + R²_vflow) / 2``.
Without truth, the page lists the predictions and shows the first images.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geopose.errors import GeoposeDataError
from geopose.io import agl_name, city_of, read_agl, read_rgb, read_vflow, vflow_name

if TYPE_CHECKING:
    from geopose.types import ProgressFn

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto;
       max-width: 1500px; color: #222; padding: 0 16px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.final td { font-weight: bold; background: #fafae6; }
.scroll { max-height: 320px; overflow-y: auto; display: inline-block; }
figure { margin: 12px 0 24px 0; } figcaption { font-size: 0.9em; color: #444; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.failed, #failed { color: #a00; }
"""

COLUMNS = [
    ("score", "score", "{:.4f}"),
    ("r2_agl", "R² AGL", "{:.4f}"),
    ("r2_vflow", "R² VFLOW", "{:.4f}"),
    ("images", "images", "{:d}"),
    ("angle_error_deg", "angle err (°)", "{:.2f}"),
    ("scale_error", "|scale err| (px/m)", "{:.4f}"),
    ("agl_mae", "AGL MAE (m)", "{:.3f}"),
    ("agl_rmse", "AGL RMSE (m)", "{:.3f}"),
    ("epe", "EPE (px)", "{:.3f}"),
]


@dataclass
class ImageRow:
    """One prediction (and its score with truth): angle rad, scale px/m, heights m."""

    stem: str
    city: str
    angle: float
    scale: float
    agl_mean: float
    agl_max: float
    metrics: dict = field(default_factory=dict)


def _fmt(fmt: str, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return fmt.format(int(v) if fmt == "{:d}" else float(v))


def png_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def score_table(scores: dict) -> str:
    """HTML ``<table id="scores">``: one row per city and a final row."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in COLUMNS)
    rows = []
    for city, m in scores["cities"].items():
        cells = "".join(f"<td>{_fmt(fmt, m.get(key))}</td>" for key, _, fmt in COLUMNS)
        rows.append(f"<tr><td>{html.escape(city)}</td>{cells}</tr>")
    final = _fmt("{:.4f}", scores.get("final"))
    n = sum(int(m.get("images", 0)) for m in scores["cities"].values())
    rows.append(
        f'<tr class="final"><td>final</td><td>{final}</td>'
        f'<td colspan="2"></td><td>{n}</td><td colspan="{len(COLUMNS) - 4}"></td></tr>'
    )
    return f'<table id="scores"><tr><th>city</th>{head}</tr>{"".join(rows)}</table>'


def image_table(rows: list[ImageRow], with_scores: bool) -> str:
    """HTML ``<table id="images">`` of every image (sorted by score when scored)."""
    cols = ["image", "city", "angle (°)", "scale (px/m)", "mean AGL (m)", "max AGL (m)"]
    if with_scores:
        cols += ["score", "R² AGL", "R² VFLOW", "AGL MAE (m)", "angle err (°)"]
    out = ["<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for r in rows:
        cells = [
            html.escape(r.stem),
            html.escape(r.city),
            f"{math.degrees(r.angle):.1f}",
            f"{r.scale:.4g}",
            _fmt("{:.2f}", r.agl_mean),
            _fmt("{:.2f}", r.agl_max),
        ]
        if with_scores:
            m = r.metrics
            cells += [
                _fmt("{:.4f}", m.get("score")),
                _fmt("{:.4f}", m.get("r2_agl")),
                _fmt("{:.4f}", m.get("r2_vflow")),
                _fmt("{:.3f}", m.get("agl_mae")),
                _fmt("{:.2f}", m.get("angle_error_deg")),
            ]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<div class="scroll"><table id="images">{"".join(out)}</table></div>'


def read_truth(truth_dir: Path, stem: str):
    """The :class:`~geopose.viz.figures.Truth` of ``stem`` from a truth folder
    (``{stem}_AGL.tif`` + ``{stem}_VFLOW.json``)."""
    from geopose.viz.figures import Truth

    agl_p, vflow_p = truth_dir / agl_name(stem), truth_dir / vflow_name(stem)
    for p in (agl_p, vflow_p):
        if not p.is_file():
            raise GeoposeDataError(p, "no truth file for this prediction")
    angle, scale = read_vflow(vflow_p)
    return Truth(read_agl(agl_p), angle, scale)


def _failed(failed: list[tuple[str, str]] | None, stem: str, exc: GeoposeDataError) -> None:
    """Record an image whose files cannot be read in ``failed``, or raise when not collecting."""
    if failed is None:
        raise exc
    failed.append((stem, str(exc)))


def collect(
    pred_dir: Path,
    truth_dir: Path | None,
    on_progress: ProgressFn | None = None,
    failed: list[tuple[str, str]] | None = None,
) -> tuple[list[ImageRow], dict | None]:
    """Read every prediction once (and its truth): per-image rows and, with truth, the pooled
    competition scores (``{"final", "cities", "images"}``).

    An image whose files cannot be read (or differ in size from the truth) raises
    :class:`GeoposeDataError`, or, given a list ``failed``, is appended to it as
    ``(stem, reason)`` and left out of the rows and scores. ``on_progress("read", done,
    total)`` follows the images.
    """
    from geopose.io import prediction_stems

    acc = None
    if truth_dir is not None:
        from geopose.metrics import ScoreAccumulator
        from geopose.metrics.evaluate import missing_message, pair_folders

        pairing = pair_folders(pred_dir, truth_dir)
        if pairing.missing:
            raise GeoposeDataError(pred_dir, missing_message(pairing))
        stems = pairing.pairs
        acc = ScoreAccumulator()
    else:
        stems = prediction_stems(pred_dir)
    if not stems:
        raise GeoposeDataError(pred_dir, "no complete prediction ({stem}_AGL.tif + _VFLOW.json)")
    rows = []
    if on_progress is not None:
        on_progress("read", 0, len(stems))
    for done, stem in enumerate(stems, 1):
        try:
            row = _read_row(pred_dir, truth_dir, stem, acc is not None)
        except GeoposeDataError as exc:
            _failed(failed, stem, exc)
            row = None
        if on_progress is not None:
            on_progress("read", done, len(stems))
        if row is None:
            continue
        if acc is not None:
            acc.add(row.city, row.metrics.pop("_stats"))
        rows.append(row)
    if not rows:
        first = failed[0][1] if failed else ""
        raise GeoposeDataError(
            pred_dir, f"none of the {len(stems)} prediction(s) could be read (first: {first})"
        )
    if acc is None:
        return rows, None
    from geopose.metrics.evaluate import jsonable

    return rows, jsonable(acc.compute())


def _read_row(pred_dir: Path, truth_dir: Path | None, stem: str, scored: bool) -> ImageRow:
    """One image's row (with its metrics and, under ``_stats``, its score statistics)."""
    agl = read_agl(pred_dir / agl_name(stem))
    angle, scale = read_vflow(pred_dir / vflow_name(stem))
    finite = agl[np.isfinite(agl)]
    row = ImageRow(
        stem,
        city_of(stem),
        angle,
        scale,
        float(finite.mean()) if finite.size else math.nan,
        float(finite.max()) if finite.size else math.nan,
    )
    if scored:
        from geopose.metrics import city_metrics, image_stats

        t = read_truth(truth_dir, stem)
        if t.agl.shape != agl.shape:
            raise GeoposeDataError(
                pred_dir / agl_name(stem), f"size {agl.shape} differs from truth {t.agl.shape}"
            )
        stats = image_stats(agl, t.agl, angle, scale, t.angle, t.scale)
        row.metrics = {**city_metrics(stats), "_stats": stats}
    return row


def _image_section(
    title: str,
    rows: list[ImageRow],
    pred_dir: Path,
    truth_dir: Path | None,
    images_dir: Path | None,
    failed: list[tuple[str, str]] | None = None,
) -> str:
    from geopose.io import find_rgb
    from geopose.viz.figures import figure_png, image_figure

    parts = [f"<h2>{html.escape(title)}</h2>"]
    for r in rows:
        try:
            rgb = read_rgb(find_rgb(images_dir, r.stem)) if images_dir is not None else None
            agl = read_agl(pred_dir / agl_name(r.stem))
            truth = read_truth(truth_dir, r.stem) if truth_dir is not None else None
        except GeoposeDataError as exc:
            _failed(failed, r.stem, exc)
            parts.append(f'<p class="failed">{html.escape(str(exc))}</p>')
            continue
        caption = r.stem
        if r.metrics:
            caption += f": score {r.metrics['score']:.4f}"
        fig = image_figure(rgb, agl, r.angle, r.scale, truth=truth)
        parts.append(
            f'<figure class="image">{png_tag(figure_png(fig), r.stem)}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def build_report(
    pred_dir: str | Path,
    truth_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    n_show: int = 3,
    title: str | None = None,
    on_progress: ProgressFn | None = None,
    failed: list[tuple[str, str]] | None = None,
) -> str:
    """The report page as an HTML string (see the module docstring).

    ``n_show`` worst and ``n_show`` best images get figures (with truth), else the first
    ``n_show`` images. ``images_dir`` holds the ``{stem}_RGB.*`` images (optional).
    A file that cannot be read raises :class:`GeoposeDataError`; given a list ``failed``, its
    image is left out (or drawn without figure), listed on the page and appended to ``failed``
    as ``(stem, reason)``.
    """
    from geopose import __version__
    from geopose.viz.figures import figure_png, score_bars

    pred_dir = Path(pred_dir)
    truth_dir = None if truth_dir is None else Path(truth_dir)
    images_dir = None if images_dir is None else Path(images_dir)
    failures: list[tuple[str, str]] | None = None if failed is None else []
    rows, scores = collect(pred_dir, truth_dir, on_progress, failures)
    title = title or f"geopose report: {pred_dir.name}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">predictions <code>{html.escape(str(pred_dir))}</code>'
        + (f", truth <code>{html.escape(str(truth_dir))}</code>" if truth_dir else "")
        + f"; {len(rows)} image(s); geopose {__version__}</p>",
    ]
    if scores is not None:
        rows.sort(key=lambda r: r.metrics["score"])
        body += [
            "<h2>Scores</h2>",
            score_table(scores),
            '<figure class="bars">'
            + png_tag(figure_png(score_bars(scores), dpi=90), "bars")
            + "<figcaption>Per-city score, R² of AGL and of the flow vectors.</figcaption>"
            "</figure>",
        ]
        k = min(n_show, math.ceil(len(rows) / 2))
        dirs = (pred_dir, truth_dir, images_dir, failures)
        body.append(_image_section("Worst images", rows[:k], *dirs))
        best = rows[-min(n_show, len(rows) - k) :][::-1] if len(rows) > k else []
        if best:
            body.append(_image_section("Best images", best, *dirs))
    else:
        body.append(
            _image_section("Examples", rows[:n_show], pred_dir, truth_dir, images_dir, failures)
        )
    body += ["<h2>All images</h2>", image_table(rows, scores is not None)]
    if failures:
        items = "".join(f"<li>{html.escape(reason)}</li>" for _, reason in failures)
        body += [f"<h2>Unreadable files ({len(failures)})</h2>", f'<ul id="failed">{items}</ul>']
        failed.extend(failures)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(
    out: str | Path,
    pred_dir: str | Path,
    truth_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    n_show: int = 3,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
    failed: list[tuple[str, str]] | None = None,
) -> Path:
    """Build the report and write it to ``out`` atomically (refusing to overwrite by default).

    ``failed``: as in :func:`build_report`. A path that cannot be written raises
    :class:`~geopose.errors.OutputPathError` before anything is read.
    """
    from geopose.errors import OutputExistsError
    from geopose.io import check_output_file, write_text_atomic

    out = check_output_file(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    page = build_report(
        pred_dir, truth_dir, images_dir, n_show, on_progress=on_progress, failed=failed
    )
    return write_text_atomic(out, page, overwrite=overwrite)
