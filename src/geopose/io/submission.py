"""Prediction files and the competition submission archive."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from geopose.errors import GeoposeDataError
from geopose.io.atomic import atomic_path
from geopose.io.layout import agl_name, split_name, vflow_name
from geopose.io.rasters import write_agl
from geopose.io.vflow import write_vflow


def write_prediction(
    out_dir: str | Path,
    stem: str,
    agl_m: np.ndarray,
    angle: float,
    scale_px_per_m: float,
    overwrite: bool = True,
) -> tuple[Path, Path]:
    """Write one image's prediction: ``{stem}_AGL.tif`` (uint16 cm, deflate) and
    ``{stem}_VFLOW.json`` (scale px/cm, angle rad). The json is written last, so a folder where
    the json exists holds a complete prediction."""
    out_dir = Path(out_dir)
    agl_path = write_agl(out_dir / agl_name(stem), agl_m, overwrite=overwrite)
    vflow_path = write_vflow(out_dir / vflow_name(stem), angle, scale_px_per_m, overwrite=overwrite)
    return agl_path, vflow_path


def prediction_files(pred_dir: str | Path) -> list[Path]:
    """The ``*_AGL.tif`` and ``*_VFLOW.json`` files of a predictions folder, sorted."""
    pred_dir = Path(pred_dir)
    files = [
        p
        for p in pred_dir.iterdir()
        if p.is_file() and (s := split_name(p)) and s[1] in ("AGL", "VFLOW")
    ]
    return sorted(files)


def prediction_stems(pred_dir: str | Path) -> list[str]:
    """Stems of the complete predictions (``{stem}_AGL.tif`` and ``{stem}_VFLOW.json``) in a
    folder, sorted."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise GeoposeDataError(pred_dir, "folder not found")
    kinds: dict[str, set[str]] = {}
    for f in prediction_files(pred_dir):
        stem, kind = split_name(f)
        kinds.setdefault(stem, set()).add(kind)
    return sorted(s for s, k in kinds.items() if k == {"AGL", "VFLOW"})


def pack_submission(pred_dir: str | Path, tar_path: str | Path, overwrite: bool = False) -> Path:
    """Pack every ``*_AGL.tif`` and ``*_VFLOW.json`` of ``pred_dir`` flat into a ``.tar.gz``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise GeoposeDataError(pred_dir, "predictions folder not found")
    files = prediction_files(pred_dir)
    if not files:
        raise GeoposeDataError(pred_dir, "no *_AGL.tif / *_VFLOW.json files to pack")
    with atomic_path(tar_path, overwrite) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    return Path(tar_path)
