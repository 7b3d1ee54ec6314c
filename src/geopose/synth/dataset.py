"""Write a synthetic data set in the competition layout (``geopose synth``).

Layout written under ``out`` (see CONVENTIONS.md)::

    metadata.csv  geopose_train.csv  geopose_test.csv
    train/{CITY}_{ID}_RGB.j2k  _AGL.tif  _VFLOW.json   [+ _NADIR_AGL.tif _NADIR_RGB.png]
    test/{CITY}_{ID}_RGB.j2k
    test_truth/{CITY}_{ID}_AGL.tif  _VFLOW.json
    test_nadir/{CITY}_{ID}_NADIR_AGL.tif  _NADIR_RGB.png          (with ``nadir=True``)
    synth_views.csv   per image: split, city, gsd, angle, scale, sun, elevation, pass
    synth.json        the generator's parameters

Every image is drawn from its own random stream, seeded by (seed, split, index), so the
output does not depend on the number of workers and the same seed gives the same bytes.

While it runs, ``.synth-progress/`` holds the parameters and one json row per finished image
(written after the image's files); it is removed at the end. A run that was interrupted
resumes when started again with the same parameters: finished images are not rendered again,
and the result is byte for byte that of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from geopose.errors import GeoposeDataError, OutputExistsError
from geopose.io import (
    agl_name,
    check_output_dir,
    ensure_output_dir,
    remove_stale_temps,
    rgb_name,
    split_name,
    vflow_name,
    write_agl,
    write_rgb,
    write_text_atomic,
    write_vflow,
)
from geopose.io.tables import METADATA_CSV, TEST_CSV, TRAIN_CSV
from geopose.runtime import process_map
from geopose.synth.cities import CITY_CODES, draw_geometry, get_style
from geopose.synth.render import Rendered, render
from geopose.synth.world import KIND_BUILDING, KIND_WATER, make_scene, value_noise

if TYPE_CHECKING:
    from geopose.types import ProgressFn

SPLIT_CODES = {"train": 0, "test": 1}
OUTPUT_DIRS = ("train", "test", "test_truth", "test_nadir")
PROGRESS_DIR = ".synth-progress"
"""Folder of an unfinished run: ``params.json`` and one ``{id}.json`` row per finished image."""
PARAMS = "params.json"


@dataclass(frozen=True)
class TruthOptions:
    """Data troubles of the truth, as in the real LiDAR-derived AGL.

    ``missing``: LiDAR-like voids (small clusters, 0.2-1 % of pixels, and most water) become
    NaN (65535 in files). ``speckle``: share of pixels whose AGL gets a spurious error of a few
    metres. ``hidden``: share of buildings present in the AGL but missing from the RGB (built
    between the LiDAR and the image).
    """

    missing: bool = True
    speckle: float = 0.0
    hidden: float = 0.0


@dataclass(frozen=True)
class _Job:
    split: str
    index: int
    city: str
    size: int
    seed: int
    out: str
    nadir: bool
    uniform_angles: bool
    truth: TruthOptions
    j2k_psnr: float


def image_id(split: str, index: int) -> str:
    """The csv id of an image: ``train00042`` / ``test00007`` (stem ``{CITY}_{id}``)."""
    return f"{split}{index:05d}"


def _streams(seed: int, split: str, index: int) -> list[int]:
    """Independent integer seeds (scene, geometry, sensor, truth) of one image."""
    ss = np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(index)])
    return [int(x) for x in ss.generate_state(4, dtype=np.uint64)]


def degrade_truth(
    agl: np.ndarray, kind: np.ndarray, rng: np.random.Generator, opts: TruthOptions
) -> np.ndarray:
    """Apply the truth troubles of ``opts`` to a clean AGL (m); returns a new float32 array."""
    out = agl.astype(np.float32, copy=True)
    n = out.shape[0]
    if opts.missing:
        field = value_noise(rng, n, 8.0, 1)
        share = rng.uniform(0.002, 0.01)  # of the pixels, in blobs of a few px
        blobs = field > np.quantile(field, 1.0 - share)
        water = (kind == KIND_WATER) & (rng.random() < 0.8)
        out[blobs | water] = np.nan
    if opts.speckle > 0:
        hit = rng.random(out.shape) < opts.speckle
        out[hit] = np.maximum(out[hit] + rng.normal(0.0, 3.0, int(hit.sum())), 0.0)
    return out


def render_image(
    city: str,
    size: int,
    seeds: Sequence[int],
    uniform_angles: bool = False,
    truth: TruthOptions | None = None,
    nadir: bool = True,
):
    """Draw and render one image: returns (scene, view geometry, Rendered, degraded AGL).

    With ``truth.hidden`` > 0 some buildings are removed from the RGB (and from its shadows)
    but kept in the AGL. ``nadir=False`` skips the nadir RGB.
    """
    truth = truth or TruthOptions()
    scene = make_scene(city, size, seeds[0])
    geo = draw_geometry(city, np.random.default_rng(seeds[1]), uniform_angles)
    rng = np.random.default_rng(seeds[3])
    args = dict(sensor=True, seed=seeds[2], elevation=geo.elevation, nadir=nadir)
    full = render(scene, geo.angle, geo.scale, geo.sun, **args)
    shown = full
    if truth.hidden > 0:
        ids = np.unique(
            scene.crop(scene.layers["obj"])[scene.crop(scene.layers["kind"]) == KIND_BUILDING]
        )
        gone = ids[rng.random(ids.size) < truth.hidden]
        if gone.size:
            shown = render(scene.without_objects(gone), geo.angle, geo.scale, geo.sun, **args)
    agl = degrade_truth(full.agl, full.kind, rng, truth)
    rendered = Rendered(
        rgb=shown.rgb,
        agl=full.agl,
        nadir_agl=full.nadir_agl,
        nadir_rgb=shown.nadir_rgb,
        angle=full.angle,
        scale=full.scale,
        sun=full.sun,
        kind=full.kind,
        obj=full.obj,
        facade=full.facade,
    )
    return scene, geo, rendered, agl


def _write_image(job: _Job) -> dict:
    """Render one image and write its files; returns its row of ``synth_views.csv``."""
    seeds = _streams(job.seed, job.split, job.index)
    scene, geo, r, agl = render_image(
        job.city, job.size, seeds, job.uniform_angles, job.truth, nadir=job.nadir
    )
    out = Path(job.out)
    iid = image_id(job.split, job.index)
    stem = f"{job.city}_{iid}"
    img_dir = out / job.split
    truth_dir = out / ("train" if job.split == "train" else "test_truth")
    write_rgb(img_dir / rgb_name(stem), r.rgb, quality=job.j2k_psnr)
    write_agl(truth_dir / agl_name(stem), agl)
    write_vflow(truth_dir / vflow_name(stem), geo.angle, geo.scale)
    if job.nadir:
        nadir_dir = out / ("train" if job.split == "train" else "test_nadir")
        write_agl(nadir_dir / f"{stem}_NADIR_AGL.tif", r.nadir_agl)
        write_rgb(nadir_dir / f"{stem}_NADIR_RGB.png", r.nadir_rgb)
    valid = np.isfinite(agl)
    row = {
        "id": iid,
        "city": job.city,
        "split": job.split,
        "gsd": scene.gsd,
        "angle": geo.angle,
        "scale": geo.scale,
        "sun": geo.sun,
        "elevation": geo.elevation,
        "pass": geo.pass_index,
        "mean_agl": float(agl[valid].mean()) if valid.any() else float("nan"),
        "missing": float(1.0 - valid.mean()),
        "facade": float(r.facade.mean()),
    }
    # The row as JSON, written after the image's files: a resumed run reads the same values.
    text = json.dumps(row, default=_plain)
    write_text_atomic(out / PROGRESS_DIR / f"{iid}.json", text)
    return json.loads(text)


def _plain(value: object) -> object:
    """numpy scalars -> Python numbers, for ``json.dumps``."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _prepare_out(out: Path, overwrite: bool, params: dict) -> dict[str, dict]:
    """Get ``out`` ready: resume an unfinished run with the same ``params`` (returns its finished
    rows by id), else refuse a non-empty ``out`` unless ``overwrite`` and clear our earlier
    outputs. :class:`OutputPathError` when ``out`` cannot be a folder."""
    check_output_dir(out)
    progress = out / PROGRESS_DIR
    marker = progress / PARAMS
    if progress.is_dir() and not marker.is_file():
        shutil.rmtree(progress)  # left by a finished run, or one killed as it started
    if marker.is_file():
        same = json.loads(marker.read_text()) == params
        if same and not overwrite:
            for sub in ("", *OUTPUT_DIRS, PROGRESS_DIR):
                remove_stale_temps(out / sub)
            rows = [json.loads(p.read_text()) for p in sorted(progress.glob("*.json"))]
            return {r["id"]: r for r in rows if "id" in r}
        if not overwrite:
            raise GeoposeDataError(
                out, "holds an unfinished geopose synth with other parameters; pass --overwrite"
            )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExistsError(out)
        for sub in OUTPUT_DIRS:
            for f in (out / sub).glob("*") if (out / sub).is_dir() else ():
                if f.is_file() and split_name(f) is not None:
                    f.unlink()
            remove_stale_temps(out / sub)
        remove_stale_temps(out)
        shutil.rmtree(progress, ignore_errors=True)
    ensure_output_dir(progress)
    write_text_atomic(marker, json.dumps(params, indent=1))
    return {}


def _tables(rows: list[dict]) -> dict[str, pd.DataFrame]:
    views = pd.DataFrame(rows)
    stems = views["city"] + "_" + views["id"]
    train = views["split"] == "train"
    meta = views[["id", "city", "gsd"]]
    tr = pd.DataFrame(
        {
            "id": views.loc[train, "id"],
            "agl": stems[train].map(agl_name),
            "json": stems[train].map(vflow_name),
            "rgb": stems[train].map(rgb_name),
        }
    )
    te = pd.DataFrame({"id": views.loc[~train, "id"], "rgb": stems[~train].map(rgb_name)})
    return {METADATA_CSV: meta, TRAIN_CSV: tr, TEST_CSV: te, "synth_views.csv": views}


def write_dataset(
    out: str | Path,
    n_train: int,
    n_test: int,
    size: int,
    seed: int,
    cities: Sequence[str] | None = None,
    workers: int = 1,
    nadir: bool = False,
    uniform_angles: bool = False,
    overwrite: bool = False,
    truth: TruthOptions | None = None,
    j2k_psnr: float = 40.0,
    on_progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Write a synthetic data set to ``out`` (see the module docstring); returns the per-image
    table (``synth_views.csv``).

    Images cycle through ``cities`` (default: all four). ``workers`` processes render in
    parallel (0 = one per CPU). ``uniform_angles`` draws angles uniformly instead of from the
    cities' passes. ``j2k_psnr``: JPEG 2000 quality (dB). ``on_progress("synth", done, total)``
    follows the images rendered (those a resumed run still has to render).
    Raises :class:`OutputExistsError` if ``out`` is not empty and ``overwrite`` is False, unless
    it holds an unfinished run with the same parameters, which is resumed.
    """
    cities = tuple(cities) if cities else CITY_CODES
    for c in cities:
        get_style(c)
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"need at least one image (train={n_train}, test={n_test})")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    out = Path(out)
    truth = truth or TruthOptions()
    info = {
        "generator": "geopose synth",
        "n_train": n_train,
        "n_test": n_test,
        "size": size,
        "seed": seed,
        "cities": list(cities),
        "nadir": nadir,
        "uniform_angles": uniform_angles,
        "truth": asdict(truth),
        "j2k_psnr": j2k_psnr,
    }
    done = _prepare_out(out, overwrite, info)
    jobs = [
        _Job(
            split,
            k,
            cities[k % len(cities)],
            size,
            seed,
            str(out),
            nadir,
            uniform_angles,
            truth,
            j2k_psnr,
        )
        for split, n in (("train", n_train), ("test", n_test))
        for k in range(n)
    ]
    workers = (os.cpu_count() or 1) if workers <= 0 else workers
    workers = max(1, min(workers, len(jobs)))
    t0 = time.perf_counter()
    todo = [j for j in jobs if image_id(j.split, j.index) not in done]
    fresh = {r["id"]: r for r in _run_jobs(todo, min(workers, max(1, len(todo))), on_progress)}
    rows = [{**done, **fresh}[image_id(j.split, j.index)] for j in jobs]
    tables = _tables(rows)
    for name, df in tables.items():
        write_text_atomic(out / name, df.to_csv(index=False))
    write_text_atomic(out / "synth.json", json.dumps(info, indent=2) + "\n")
    (out / PROGRESS_DIR / PARAMS).unlink()  # finished: no longer resumable
    shutil.rmtree(out / PROGRESS_DIR)
    views = tables["synth_views.csv"]
    views.attrs["seconds"] = time.perf_counter() - t0
    return views


def _run_jobs(jobs: list[_Job], workers: int, on_progress: ProgressFn | None) -> list[dict]:
    rows: list[dict] = []

    def collect(results) -> None:
        for row in results:
            rows.append(row)
            if on_progress is not None:
                on_progress("synth", len(rows), len(jobs))

    if on_progress is not None:
        on_progress("synth", 0, len(jobs))
    if workers == 1:
        collect(map(_write_image, jobs))
    else:
        what = "synthetic data"
        collect(process_map(_write_image, jobs, workers, what, _init_worker, "spawn"))
    return rows


def mean_agl_by_city(views: pd.DataFrame) -> dict[str, float]:
    """Mean AGL (m) per city of a ``synth_views`` table (image means averaged)."""
    return {c: float(g["mean_agl"].mean()) for c, g in views.groupby("city")}
