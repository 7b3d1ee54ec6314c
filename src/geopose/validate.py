"""Check a data set folder, a predictions folder or a submission archive; report every problem.

Nothing is modified: files are only opened for reading, and archive members are read into
memory, never extracted. Every check collects :class:`Problem` records (the file and what is
wrong with it) instead of stopping at the first one; the decoders of :mod:`geopose.io` do the
reading, so a problem reads the same here as anywhere else in geopose.

- **data set** (a folder with ``metadata.csv``): the three tables (columns, empty cells,
  duplicate ids, gsd a positive number of m/px, every id with a metadata row, cities that agree
  with the file names), every listed file present, every file listed, train triplets complete,
  every RGB/AGL decoded in full (truncation shows), AGL the size of its RGB, VFLOW json valid;
  a ``test_truth/`` folder is checked like predictions against ``test/``.
- **predictions** (a folder of ``{stem}_AGL.tif`` + ``{stem}_VFLOW.json``) and **submission**
  (``.tar.gz`` of the same, flat): pairs complete, AGL uint16 centimetres and decodable, VFLOW
  valid; with ``images`` / ``truth`` also one prediction per image and the same sizes.
"""

from __future__ import annotations

import json
import math
import os
import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from geopose.errors import GeoposeDataError
from geopose.io import (
    agl_name,
    city_of,
    parse_vflow,
    read_agl_raw,
    read_rgb,
    read_vflow,
    split_name,
    vflow_name,
)
from geopose.io.tables import METADATA_CSV, TEST_CSV, TRAIN_CSV, read_csv

if TYPE_CHECKING:
    from geopose.types import ProgressFn

Kind = Literal["dataset", "predictions", "submission"]

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
PRED_KINDS = ("AGL", "VFLOW")
TRAIN_KINDS = ("RGB", "AGL", "VFLOW")
# Extra rasters the synthetic generator may write beside the training triplets.
EXTRA_KINDS = ("NADIR_AGL", "NADIR_RGB")


@dataclass(frozen=True, order=True)
class Problem:
    """One problem: the file (or archive member, ``archive.tar.gz:member``) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Validation:
    """What :func:`check_path` found: the kind of ``path``, its problems (sorted; none: clean)
    and the number of files decoded."""

    kind: Kind
    problems: list[Problem]
    files: int


class _Report:
    """Collects problems, once each."""

    def __init__(self) -> None:
        self._seen: set[Problem] = set()

    def add(self, path: str | Path, message: str) -> None:
        self._seen.add(Problem(str(path), message))

    def add_error(self, exc: GeoposeDataError, fallback: str | Path) -> None:
        self.add(exc.path if exc.path is not None else fallback, exc.problem)

    def problems(self) -> list[Problem]:
        return sorted(self._seen)


def default_workers() -> int:
    """Threads for decoding: the CPU count, at most 8 (the codecs release the GIL)."""
    return max(1, min(8, os.cpu_count() or 1))


def detect_kind(path: str | Path) -> Kind:
    """What ``path`` is: ``dataset``, ``predictions`` or ``submission``.

    Raises :class:`GeoposeDataError` when it does not exist or is none of them.
    """
    path = Path(path)
    if not path.exists():
        raise GeoposeDataError(path, "not found")
    if path.is_file():
        if path.name.lower().endswith(TAR_SUFFIXES) or tarfile.is_tarfile(path):
            return "submission"
        raise GeoposeDataError(path, "not a submission archive (.tar.gz) nor a folder")
    if any((path / name).is_file() for name in (METADATA_CSV, TRAIN_CSV, TEST_CSV)):
        return "dataset"
    if any(_layout_kind(p) in PRED_KINDS for p in path.iterdir() if p.is_file()):
        return "predictions"
    raise GeoposeDataError(
        path,
        f"neither a data set folder (no {METADATA_CSV}) nor a predictions folder "
        "(no *_AGL.tif / *_VFLOW.json files)",
    )


def validate(
    path: str | Path,
    images: str | Path | None = None,
    truth: str | Path | None = None,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
) -> list[Problem]:
    """Check whatever ``path`` is (see :func:`detect_kind`); an empty list means clean.

    ``images`` (a folder of RGB images, or a data set folder: its ``test/``) and ``truth`` (a
    folder of truth ``_AGL.tif``/``_VFLOW.json``) apply to predictions and submissions.
    ``on_progress(kind, done, total)`` follows the files decoded, from the calling thread.
    """
    return check_path(path, images, truth, workers, on_progress).problems


def check_path(
    path: str | Path,
    images: str | Path | None = None,
    truth: str | Path | None = None,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
) -> Validation:
    """:func:`validate`, with what ``geopose validate`` prints: the kind and the file count."""
    kind = detect_kind(path)
    files = 0

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal files
        files = max(files, total)
        if on_progress is not None:
            on_progress(stage, done, total)

    if kind == "dataset":
        problems = validate_dataset(path, workers=workers, on_progress=progress)
    else:
        check = validate_predictions if kind == "predictions" else validate_submission
        problems = check(path, images=images, truth=truth, workers=workers, on_progress=progress)
    return Validation(kind, problems, files)


# --- running the decoders ------------------------------------------------------------------


Job = tuple[str, Callable[[], Any]]


def _run(
    jobs: Iterable[Job],
    total: int,
    report: _Report,
    workers: int | None,
    on_progress: ProgressFn | None,
    stage: str,
) -> dict[str, Any]:
    """Run ``(label, fn)`` jobs on threads; return label -> result for those that succeeded.

    Jobs are consumed lazily with a bounded number in flight, so a generator that loads bytes
    (archive members) never holds more than a few files in memory.
    """
    results: dict[str, Any] = {}
    workers = workers or default_workers()
    done = 0
    if on_progress is not None:
        on_progress(stage, 0, total)

    def finish(fut: Future, label: str) -> None:
        nonlocal done
        try:
            results[label] = fut.result()
        except GeoposeDataError as exc:
            report.add_error(exc, label)
        except Exception as exc:  # a decoder bug must not hide the other files' problems
            report.add(label, f"could not be checked ({type(exc).__name__}: {exc})")
        done += 1
        if on_progress is not None:
            on_progress(stage, done, total)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: dict[Future, str] = {}
        for label, fn in jobs:
            pending[pool.submit(fn)] = label
            if len(pending) >= 2 * workers:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    finish(fut, pending.pop(fut))
        for fut in list(pending):
            finish(fut, pending.pop(fut))
    return results


def _agl_info(source: str | Path | bytes, label: str) -> tuple[tuple[int, int], np.dtype]:
    arr = read_agl_raw(source, label)
    return arr.shape, arr.dtype


def _rgb_shape(path: Path) -> tuple[int, int]:
    return read_rgb(path).shape[:2]


def _vflow_bytes(data: bytes, label: str):
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeoposeDataError(label, f"not valid JSON ({exc})") from exc
    return parse_vflow(obj, label)


def _image_shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header (no full decode)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


# --- file names ----------------------------------------------------------------------------


def _layout_kind(path: str | Path) -> str | None:
    parts = split_name(path)
    return parts[1] if parts else None


def _expected_name(stem: str, kind: str, name: str) -> bool:
    """Whether ``name`` is the exact layout name for (stem, kind); RGB may have any image suffix."""
    if kind == "AGL":
        return name == agl_name(stem)
    if kind == "VFLOW":
        return name == vflow_name(stem)
    return True


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


# --- data set ------------------------------------------------------------------------------


def _check_metadata(data_dir: Path, report: _Report) -> dict[str, str] | None:
    """Check ``metadata.csv``; return id -> city, or None when it cannot be read."""
    path = data_dir / METADATA_CSV
    if not path.is_file():
        report.add(path, "not found")
        return None
    try:
        df = read_csv(path, ["id", "city", "gsd"])
    except GeoposeDataError as exc:
        report.add_error(exc, path)
        return None
    cities: dict[str, str] = {}
    gsd = pd.to_numeric(df["gsd"], errors="coerce")
    for i, (img_id, city, raw, value) in enumerate(
        zip(df["id"], df["city"], df["gsd"], gsd, strict=True)
    ):
        row = f"row {i + 2}"
        if pd.isna(img_id):
            report.add(path, f"{row}: empty id")
            continue
        if img_id in cities:
            report.add(path, f"id {img_id}: duplicate row ({row})")
        if not (math.isfinite(value) and value > 0):
            report.add(path, f"id {img_id}: bad gsd {raw!r} (must be a positive number, m/px)")
        if pd.isna(city) or not str(city).strip():
            report.add(path, f"id {img_id}: empty city")
        cities[img_id] = "" if pd.isna(city) else str(city)
    return cities


def _check_table(
    data_dir: Path,
    split: str,
    cities: dict[str, str] | None,
    report: _Report,
    listed: dict[Path, str],
    missing: set[Path],
) -> None:
    """Check one split table; record listed files (path -> csv name) and missing ones."""
    csv_name = TRAIN_CSV if split == "train" else TEST_CSV
    cols = {"rgb": "RGB", "agl": "AGL", "json": "VFLOW"} if split == "train" else {"rgb": "RGB"}
    csv, folder = data_dir / csv_name, data_dir / split
    if not csv.is_file():
        if folder.is_dir():
            report.add(csv, f"not found, but the folder {split}/ exists")
        return
    try:
        df = read_csv(csv, ["id", *cols])
    except GeoposeDataError as exc:
        report.add_error(exc, csv)
        return
    if not folder.is_dir() and len(df):
        report.add(folder, f"folder not found ({csv_name} lists {len(df)} image(s))")
    seen: set[str] = set()
    for i, row in enumerate(df.itertuples(index=False)):
        img_id = row.id
        if pd.isna(img_id):
            report.add(csv, f"row {i + 2}: empty id")
            continue
        if img_id in seen:
            report.add(csv, f"id {img_id}: duplicate row (row {i + 2})")
        seen.add(img_id)
        if cities is not None and img_id not in cities:
            report.add(csv, f"id {img_id}: no row in {METADATA_CSV}")
        stems = set()
        for col, kind in cols.items():
            name = getattr(row, col)
            if pd.isna(name) or not str(name).strip():
                report.add(csv, f"id {img_id}: empty {col!r} cell")
                continue
            name = str(name)
            parts = split_name(name)
            if parts is None or parts[1] != kind or "/" in name:
                report.add(
                    csv, f"id {img_id}: {col!r} is {name!r}, not a {{CITY}}_{{ID}}_{kind} name"
                )
            else:
                stems.add(parts[0])
            file = folder / name
            listed[file] = csv_name
            if folder.is_dir() and not file.is_file():
                report.add(file, f"missing (listed in {csv_name} for id {img_id})")
                missing.add(file)
        if len(stems) > 1:
            report.add(csv, f"id {img_id}: file names of different images {sorted(stems)}")
        if cities is not None and cities.get(img_id) and len(stems) == 1:
            city, stem = cities[img_id], stems.pop()
            if city_of(stem) != city:
                report.add(csv, f"id {img_id}: {METADATA_CSV} says city {city}, files say {stem}")


def _scan_folder(
    folder: Path, split: str, listed: dict[Path, str], report: _Report
) -> dict[str, dict[str, Path]]:
    """Files of ``train/`` or ``test/`` grouped as stem -> kind -> path; report strays."""
    stems: dict[str, dict[str, Path]] = defaultdict(dict)
    if not folder.is_dir():
        return stems
    csv_name = TRAIN_CSV if split == "train" else TEST_CSV
    wanted = TRAIN_KINDS if split == "train" else ("RGB",)
    for p in _visible(folder):
        if p.is_dir():
            report.add(p, "unexpected folder")
            continue
        parts = split_name(p)
        if parts is None or not _expected_name(*parts, p.name):
            report.add(p, "unexpected file name (expected {CITY}_{ID}_RGB|AGL|VFLOW)")
            continue
        stem, kind = parts
        if kind in EXTRA_KINDS:
            stems[stem][kind] = p
            continue
        if kind not in wanted:
            report.add(p, f"a {kind} file does not belong in {split}/")
        elif p not in listed:
            report.add(p, f"no row in {csv_name}")
        if kind in stems[stem]:
            report.add(p, f"second {kind} file for {stem} (also {stems[stem][kind].name})")
        stems[stem][kind] = p
    return stems


def _check_partners(
    folder: Path, stems: dict[str, dict[str, Path]], missing: set[Path], report: _Report
) -> None:
    """Every training image needs its RGB, AGL and VFLOW."""
    for stem, kinds in sorted(stems.items()):
        present = [k for k in TRAIN_KINDS if k in kinds]
        if not present:
            continue
        for need in TRAIN_KINDS:
            if need in kinds:
                continue
            want = {"RGB": f"{stem}_RGB.*", "AGL": agl_name(stem), "VFLOW": vflow_name(stem)}[need]
            if folder / want in missing:
                continue
            report.add(kinds[present[0]], f"has no partner {want}")


def _file_jobs(stems: dict[str, dict[str, Path]]) -> Iterator[Job]:
    for kinds in stems.values():
        for kind, p in kinds.items():
            if kind in ("RGB", "NADIR_RGB"):
                yield str(p), (lambda p=p: _rgb_shape(p))
            elif kind in ("AGL", "NADIR_AGL"):
                yield str(p), (lambda p=p: _agl_info(p, str(p)))
            elif kind == "VFLOW":
                yield str(p), (lambda p=p: read_vflow(p))


def _check_sizes(stems: dict[str, dict[str, Path]], results: dict[str, Any], report: _Report):
    """AGL (and nadir rasters) the same height and width as the RGB."""
    for kinds in stems.values():
        rgb = kinds.get("RGB")
        if rgb is None or str(rgb) not in results:
            continue
        shape = tuple(results[str(rgb)])
        for kind in ("AGL", "NADIR_AGL", "NADIR_RGB"):
            p = kinds.get(kind)
            if p is None or str(p) not in results:
                continue
            got = results[str(p)][0] if kind != "NADIR_RGB" else results[str(p)]
            if tuple(got) != shape:
                report.add(p, f"size {_hw(got)} differs from its RGB {rgb.name} {_hw(shape)}")


def _hw(shape) -> str:
    return f"{shape[0]}×{shape[1]}"


def validate_dataset(
    data_dir: str | Path, workers: int | None = None, on_progress: ProgressFn | None = None
) -> list[Problem]:
    """Check a data set folder in the competition layout (see the module docstring);
    ``on_progress("dataset", done, total)`` follows the files decoded."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise GeoposeDataError(data_dir, "data set folder not found")
    report = _Report()
    cities = _check_metadata(data_dir, report)
    listed: dict[Path, str] = {}
    missing: set[Path] = set()
    if not (data_dir / TRAIN_CSV).is_file() and not (data_dir / TEST_CSV).is_file():
        report.add(data_dir, f"neither {TRAIN_CSV} nor {TEST_CSV} found")
    scans = {}
    for split in ("train", "test"):
        _check_table(data_dir, split, cities, report, listed, missing)
        scans[split] = _scan_folder(data_dir / split, split, listed, report)
    _check_partners(data_dir / "train", scans["train"], missing, report)
    merged = {f"{split}/{s}": k for split, sc in scans.items() for s, k in sc.items()}
    total = sum(len(k) for k in merged.values())
    results = _run(_file_jobs(merged), total, report, workers, on_progress, "dataset")
    _check_sizes(merged, results, report)
    truth = data_dir / "test_truth"
    if truth.is_dir():
        for p in validate_predictions(
            truth, images=data_dir / "test", workers=workers, strict_dtype=False
        ):
            report.add(p.path, p.message)
    return report.problems()


# --- predictions and submissions -----------------------------------------------------------


def _group_predictions(
    names: Iterable[tuple[str, str]], where: str, report: _Report
) -> dict[str, dict[str, str]]:
    """(name, label) pairs -> stem -> kind -> label, reporting names outside the layout."""
    stems: dict[str, dict[str, str]] = defaultdict(dict)
    for name, label in names:
        parts = split_name(name)
        if parts is None or parts[1] not in PRED_KINDS or not _expected_name(*parts, name):
            report.add(
                label,
                f"unexpected file in {where} (only {{stem}}_AGL.tif and {{stem}}_VFLOW.json)",
            )
            continue
        stem, kind = parts
        stems[stem][kind] = label
    for stem, kinds in sorted(stems.items()):
        for kind, other in (("AGL", "VFLOW"), ("VFLOW", "AGL")):
            if kind in kinds and other not in kinds:
                want = vflow_name(stem) if other == "VFLOW" else agl_name(stem)
                report.add(kinds[kind], f"has no partner {want}")
    return stems


def _check_agl_dtypes(
    stems: dict[str, dict[str, str]], results: dict[str, Any], strict: bool, report: _Report
) -> None:
    if not strict:
        return
    for kinds in stems.values():
        label = kinds.get("AGL")
        if label in results and results[label][1] != np.uint16:
            report.add(label, f"AGL is {results[label][1]}; predictions must be uint16 centimetres")


def _image_folder(images: Path) -> Path:
    """A data set folder stands for its ``test/`` images."""
    return images / "test" if (images / METADATA_CSV).is_file() else images


def _stems_of(folder: Path, kind: str) -> dict[str, Path]:
    """stem -> path of the layout files of one kind in a folder."""
    out = {}
    for p in _visible(folder):
        parts = split_name(p)
        if p.is_file() and parts and parts[1] == kind and _expected_name(*parts, p.name):
            out[parts[0]] = p
    return out


def _check_against(
    stems: dict[str, dict[str, str]],
    results: dict[str, Any],
    label_of: Callable[[str], str],
    images: str | Path | None,
    truth: str | Path | None,
    report: _Report,
) -> None:
    """One prediction per image / truth file, each AGL the size of the image / truth AGL.

    ``label_of(name)`` names a prediction file that is missing.
    """
    refs = []
    if images is not None:
        refs.append(("image", _image_folder(Path(images)), "RGB"))
    if truth is not None:
        refs.append(("truth", Path(truth), "AGL"))
    for what, folder, kind in refs:
        if not folder.is_dir():
            report.add(folder, f"{what} folder not found")
            continue
        ref = _stems_of(folder, kind)
        for stem in sorted(set(ref) - set(stems)):
            report.add(label_of(agl_name(stem)), f"missing: no prediction for {what} {ref[stem]}")
        for stem, kinds in sorted(stems.items()):
            label = kinds.get("AGL") or kinds["VFLOW"]
            if stem not in ref:
                report.add(label, f"no {what} {stem}_{kind}.* in {folder}")
                continue
            if kinds.get("AGL") not in results:
                continue
            try:
                shape = _image_shape(ref[stem])
            except Exception as exc:
                report.add(ref[stem], f"unreadable header ({type(exc).__name__}: {exc})")
                continue
            got = results[kinds["AGL"]][0]
            if tuple(got) != tuple(shape):
                report.add(
                    kinds["AGL"],
                    f"size {_hw(got)} differs from the {what} {ref[stem].name} {_hw(shape)}",
                )


def validate_predictions(
    pred_dir: str | Path,
    images: str | Path | None = None,
    truth: str | Path | None = None,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
    strict_dtype: bool = True,
) -> list[Problem]:
    """Check a predictions folder (``{stem}_AGL.tif`` + ``{stem}_VFLOW.json`` per image);
    ``on_progress("predictions", done, total)`` follows the files decoded.

    ``strict_dtype`` requires uint16 centimetre AGL (the submission format); float metres are
    accepted otherwise (truth folders).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise GeoposeDataError(pred_dir, "predictions folder not found")
    report = _Report()
    files = []
    for p in _visible(pred_dir):
        if p.is_dir():
            report.add(p, "unexpected folder in a predictions folder")
        else:
            files.append((p.name, str(p)))
    stems = _group_predictions(files, "a predictions folder", report)
    if not stems and not files:
        report.add(pred_dir, "no *_AGL.tif / *_VFLOW.json files")

    def jobs() -> Iterator[Job]:
        for kinds in stems.values():
            for kind, label in kinds.items():
                if kind == "AGL":
                    yield label, (lambda lb=label: _agl_info(Path(lb), lb))
                else:
                    yield label, (lambda lb=label: read_vflow(lb))

    total = sum(len(k) for k in stems.values())
    results = _run(jobs(), total, report, workers, on_progress, "predictions")
    _check_agl_dtypes(stems, results, strict_dtype, report)
    _check_against(stems, results, lambda n: str(pred_dir / n), images, truth, report)
    return report.problems()


def validate_submission(
    tar_path: str | Path,
    images: str | Path | None = None,
    truth: str | Path | None = None,
    workers: int | None = None,
    on_progress: ProgressFn | None = None,
) -> list[Problem]:
    """Check a submission archive: flat, complete pairs, every member decodable, uint16 AGL;
    ``on_progress("submission", done, total)`` follows the members decoded.

    Members are read into memory one by one (never extracted to disk).
    """
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise GeoposeDataError(tar_path, "submission archive not found")
    report = _Report()
    try:
        tar = tarfile.open(tar_path, "r:*")  # noqa: SIM115  (closed by the with below)
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.add(tar_path, f"not a readable tar archive ({type(exc).__name__}: {exc})")
        return report.problems()
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            report.add(tar_path, f"truncated or corrupt archive ({type(exc).__name__}: {exc})")
            return report.problems()
        files = []
        by_label: dict[str, tarfile.TarInfo] = {}
        names: set[str] = set()
        for m in members:
            label = f"{tar_path}:{m.name}"
            if not m.isfile():
                what = "folder" if m.isdir() else "link or special file"
                report.add(label, f"a {what}; the archive must hold only flat files")
                continue
            if "/" in m.name.strip("/") or m.name.startswith(("/", "./")):
                report.add(label, "not flat: members must sit at the top of the archive")
                continue
            if m.name in names:
                report.add(label, "appears twice in the archive")
            names.add(m.name)
            files.append((m.name, label))
            by_label[label] = m
        if not members:
            report.add(tar_path, "empty archive")
        stems = _group_predictions(files, "a submission", report)

        def read_member(label: str) -> bytes:
            f = tar.extractfile(by_label[label])
            return b"" if f is None else f.read()

        def jobs() -> Iterator[Job]:
            # Archive order: reading members in order never seeks backwards in the gzip stream.
            wanted = {lb: k for kinds in stems.values() for k, lb in kinds.items()}
            for m in members:
                label = f"{tar_path}:{m.name}"
                if label not in wanted or by_label.get(label) is not m:
                    continue
                try:
                    data = read_member(label)
                except (tarfile.TarError, OSError, EOFError) as exc:
                    report.add(label, f"cannot be read from the archive ({type(exc).__name__})")
                    continue
                if wanted[label] == "AGL":
                    yield label, (lambda d=data, lb=label: _agl_info(d, lb))
                else:
                    yield label, (lambda d=data, lb=label: _vflow_bytes(d, lb))

        total = sum(len(k) for k in stems.values())
        results = _run(jobs(), total, report, workers, on_progress, "submission")
    _check_agl_dtypes(stems, results, True, report)
    _check_against(stems, results, lambda n: f"{tar_path}:{n}", images, truth, report)
    return report.problems()


__all__ = [
    "Kind",
    "Problem",
    "Validation",
    "check_path",
    "detect_kind",
    "validate",
    "validate_dataset",
    "validate_predictions",
    "validate_submission",
]
