"""Score a folder of predictions against a folder of truth, streaming and in parallel.

A truth folder holds ``{stem}_AGL.tif`` + ``{stem}_VFLOW.json`` per image (``test_truth/`` of
the synthetic generator, or a training folder); a predictions folder the same two files per
image. The city of an image is its stem's prefix (``JAX_123`` -> ``JAX``).

Images are decoded and reduced to their statistics vectors (:func:`image_stats`) in a thread
pool (deflate decoding and the numpy reductions release the GIL), at most ``2 × workers``
images in flight, so memory does not grow with the number of images.

:func:`evaluate_folders` is ``geopose evaluate``: its dict is what ``--json`` writes, and the
command prints its ``on_notice`` lines and draws its ``on_progress`` calls.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geopose.errors import GeoposeDataError, OutputExistsError
from geopose.io.atomic import check_output_file, write_text_atomic
from geopose.io.layout import agl_name, city_of, split_name, vflow_name
from geopose.io.rasters import read_agl_raw
from geopose.io.vflow import read_vflow
from geopose.metrics.score import ScoreAccumulator, image_stats

if TYPE_CHECKING:
    from geopose.types import ProgressFn


@dataclass
class Pairing:
    """How a predictions folder lines up with a truth folder (stems sorted)."""

    pred_dir: Path
    truth_dir: Path
    pairs: list[str] = field(default_factory=list)  # stems with both truth and prediction files
    missing: dict[str, list[str]] = field(default_factory=dict)  # stem -> missing pred file names
    extra: list[str] = field(default_factory=list)  # prediction stems without truth


@dataclass
class SizeMismatch:
    """A prediction whose AGL map is not the size of the truth's (rows, columns)."""

    stem: str
    pred: tuple[int, ...]
    truth: tuple[int, ...]


def default_workers() -> int:
    """The number of CPUs this process may use, at most 8 (more adds memory, not speed)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _layout_files(folder: Path, role: str) -> dict[str, set[str]]:
    """``{stem: {"AGL", "VFLOW"}}`` for the AGL / VFLOW files of a folder."""
    if not folder.is_dir():
        raise GeoposeDataError(folder, f"{role} folder not found")
    found: dict[str, set[str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            parts = split_name(entry.name)
            if parts is None or parts[1] not in ("AGL", "VFLOW"):
                continue
            expected = agl_name(parts[0]) if parts[1] == "AGL" else vflow_name(parts[0])
            if entry.name == expected and entry.is_file():
                found.setdefault(parts[0], set()).add(parts[1])
    return found


def pair_folders(pred_dir: str | Path, truth_dir: str | Path) -> Pairing:
    """Match predictions to truth by stem.

    Raises :class:`GeoposeDataError` when the truth folder holds no complete image or an image
    with only one of its two truth files.
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    truth = _layout_files(truth_dir, "truth")
    pred = _layout_files(pred_dir, "predictions")
    for stem, kinds in sorted(truth.items()):
        if kinds != {"AGL", "VFLOW"}:
            lacking = vflow_name(stem) if "AGL" in kinds else agl_name(stem)
            raise GeoposeDataError(truth_dir / lacking, "truth file missing (the other one exists)")
    if not truth:
        raise GeoposeDataError(truth_dir, "no *_AGL.tif + *_VFLOW.json truth pairs found")
    pairing = Pairing(pred_dir=pred_dir, truth_dir=truth_dir)
    for stem in sorted(truth):
        kinds = pred.get(stem, set())
        if kinds == {"AGL", "VFLOW"}:
            pairing.pairs.append(stem)
        else:
            names = {"AGL": agl_name(stem), "VFLOW": vflow_name(stem)}
            pairing.missing[stem] = [names[k] for k in ("AGL", "VFLOW") if k not in kinds]
    pairing.extra = sorted(set(pred) - set(truth))
    return pairing


def read_agl_fast(path: Path, out: np.ndarray | None = None) -> np.ndarray:
    """The stored values of an AGL TIFF, decoded with libtiff (``imagecodecs.tiff_decode``).

    libtiff decodes a 2048² deflate TIFF in about 60% of tifffile's time (BENCHMARKS.md,
    Scoring). Any file it cannot decode, or that is not a single-band uint16 / float map, is
    handed to :func:`geopose.io.read_agl_raw`, which reads it or raises its
    :class:`GeoposeDataError`.
    ``out``: a buffer to decode into when its shape and dtype match the file's.
    """
    import imagecodecs

    try:
        data = path.read_bytes()
    except OSError:
        return read_agl_raw(path)  # its message names the problem
    arr = None
    if out is not None:
        with contextlib.suppress(Exception):  # another shape or dtype: decode afresh
            arr = imagecodecs.tiff_decode(data, out=out)
    if arr is None:
        try:
            arr = imagecodecs.tiff_decode(data)
        except Exception:  # unreadable or unusual: let the io reader decide
            return read_agl_raw(data, name=path)
    if arr.ndim == 2 and (arr.dtype == np.uint16 or np.issubdtype(arr.dtype, np.floating)):
        return arr
    return read_agl_raw(data, name=path)


_buffers = threading.local()


def _read_reusing(path: Path, slot: str) -> np.ndarray:
    """:func:`read_agl_fast` into this thread's buffer ``slot`` (saves ~10 ms of page faults
    per 2048² image); the array is overwritten by the thread's next read of that slot."""
    arr = read_agl_fast(path, out=getattr(_buffers, slot, None))
    setattr(_buffers, slot, arr)
    return arr


def _score_one(pairing: Pairing, stem: str) -> np.ndarray | SizeMismatch:
    """Read one image's prediction and truth and reduce them to a statistics vector."""
    pred = _read_reusing(pairing.pred_dir / agl_name(stem), "pred")
    truth = _read_reusing(pairing.truth_dir / agl_name(stem), "truth")
    if pred.shape != truth.shape:
        return SizeMismatch(stem, tuple(pred.shape), tuple(truth.shape))
    angle_p, scale_p = read_vflow(pairing.pred_dir / vflow_name(stem))
    angle_t, scale_t = read_vflow(pairing.truth_dir / vflow_name(stem))
    return image_stats(pred, truth, angle_p, scale_p, angle_t, scale_t)


def _map_bounded(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` over a thread pool, in order, with at most ``2 × workers`` in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geopose-eval")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def score_pairs(
    pairing: Pairing,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
) -> dict:
    """Score every matched image of ``pairing``; size mismatches are listed, not scored.

    Returns the JSON-ready result (see :func:`evaluate_folders`, less ``partial``);
    ``on_progress("score", done, total)`` follows the images.
    """
    workers = default_workers() if not workers else max(1, int(workers))
    acc = ScoreAccumulator()
    mismatches: list[SizeMismatch] = []
    results = _map_bounded(lambda s: (s, _score_one(pairing, s)), pairing.pairs, workers)
    total = len(pairing.pairs)
    if on_progress is not None:
        on_progress("score", 0, total)
    for done, (stem, res) in enumerate(results, 1):
        if isinstance(res, SizeMismatch):
            mismatches.append(res)
        else:
            acc.add(city_of(stem), res)
        if on_progress is not None:
            on_progress("score", done, total)
    out = acc.compute()
    out.update(
        pred_dir=str(pairing.pred_dir),
        truth_dir=str(pairing.truth_dir),
        missing=sorted(pairing.missing),
        extra=list(pairing.extra),
        size_mismatch=[
            {"stem": m.stem, "pred": list(m.pred), "truth": list(m.truth)} for m in mismatches
        ],
        skipped=len(pairing.missing) + len(mismatches),
    )
    return jsonable(out)


def evaluate_folders(
    pred_dir: str | Path,
    truth_dir: str | Path,
    partial: bool = False,
    workers: int | None = None,
    json_path: str | Path | None = None,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> dict:
    """Score predictions against truth; the competition score and per-city details.

    Returns ``{"final", "cities": {city: {score, r2_agl, r2_vflow, images, pixels,
    angle_error_deg, scale_error (px/m), agl_mae (m), agl_rmse (m), epe (px),
    pred_nan_pixels}}, "images", "pred_dir", "truth_dir", "missing", "extra",
    "size_mismatch", "skipped", "partial"}`` with NaN written as None; ``json_path``: also
    written there (atomically; an existing file raises :class:`OutputExistsError` before
    anything is read, unless ``overwrite``).

    Missing predictions or size mismatches raise :class:`GeoposeDataError` unless ``partial``
    (then they are skipped and counted). ``on_notice(line)`` gets one line per missing,
    extra (ignored) or mis-sized prediction, before any error; ``on_progress("score", done,
    total)`` follows the images.
    """
    if json_path is not None:
        check_output_file(json_path)
        if Path(json_path).exists() and not overwrite:
            raise OutputExistsError(json_path)
    notice = on_notice or (lambda line: None)
    pairing = pair_folders(pred_dir, truth_dir)
    for stem, names in sorted(pairing.missing.items()):
        notice(f"missing prediction: {stem} (no {' / '.join(names)})")
    for stem in pairing.extra:
        notice(f"extra prediction ignored: {stem} (no truth)")
    if pairing.missing and not partial:
        hint = " (pass --partial to score the rest)"
        raise GeoposeDataError(pairing.pred_dir, missing_message(pairing) + hint)
    if not pairing.pairs:
        raise GeoposeDataError(pairing.pred_dir, "no prediction matches a truth image")
    result = score_pairs(pairing, workers, on_progress)
    for m in result["size_mismatch"]:
        (rows, cols), (t_rows, t_cols) = m["pred"], m["truth"]
        notice(f"size mismatch: {m['stem']}: prediction {rows}×{cols}, truth {t_rows}×{t_cols}")
    if result["size_mismatch"] and not partial:
        raise GeoposeDataError(
            pairing.pred_dir,
            f"{len(result['size_mismatch'])} prediction(s) differ in size from the truth: "
            + ", ".join(m["stem"] for m in result["size_mismatch"]),
        )
    result["partial"] = partial
    if json_path is not None:
        text = json.dumps(result, indent=2, allow_nan=False) + "\n"
        write_text_atomic(json_path, text, overwrite=overwrite)
    return result


def missing_message(pairing: Pairing) -> str:
    """One line summing up the missing predictions."""
    stems = sorted(pairing.missing)
    shown = ", ".join(stems[:10]) + (f", ... ({len(stems) - 10} more)" if len(stems) > 10 else "")
    return f"{len(stems)} of {len(stems) + len(pairing.pairs)} predictions missing: {shown}"


def jsonable(obj):
    """Replace NaN / inf floats by None, recursively, and numpy scalars by Python ones."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
