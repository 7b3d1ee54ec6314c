"""geopose.validate: every kind of problem is reported, naming its file, and nothing changes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pytest
import tifffile

from geopose.errors import GeoposeDataError
from geopose.io import pack_submission, write_agl, write_prediction, write_rgb, write_vflow
from geopose.validate import (
    Problem,
    check_path,
    detect_kind,
    validate,
    validate_dataset,
    validate_predictions,
    validate_submission,
)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (or of ``root`` itself)."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


def assert_reported(problems: list[Problem], path: Path | str, words: str) -> None:
    """Exactly the file ``path`` is reported with a message containing ``words``."""
    hits = [p for p in problems if p.path == str(path) and words in p.message]
    assert hits, f"no problem {words!r} for {path}; got:\n" + "\n".join(map(str, problems))


def append_row(csv: Path, row: dict) -> None:
    df = pd.read_csv(csv, dtype=str)
    pd.concat([df, pd.DataFrame([row])]).to_csv(csv, index=False)


def edit_metadata(root: Path, img_id: str, **values) -> None:
    df = pd.read_csv(root / "metadata.csv", dtype=str)
    if not values:
        df = df[df.id != img_id]
    for col, v in values.items():
        df.loc[df.id == img_id, col] = v
    df.to_csv(root / "metadata.csv", index=False)


# --- data sets ------------------------------------------------------------------------------


def test_clean_dataset_has_no_problems_and_reports_progress(fake_dataset):
    calls = []
    assert validate(fake_dataset.root, on_progress=lambda *c: calls.append(c)) == []
    n_files = 3 * len(fake_dataset.train) + len(fake_dataset.test)
    assert calls[0] == ("dataset", 0, n_files) and calls[-1] == ("dataset", n_files, n_files)
    found = check_path(fake_dataset.root)
    assert (found.kind, found.problems, found.files) == ("dataset", [], n_files)


@pytest.fixture
def broken_dataset(tmp_path, make_fake_dataset):
    """A data set with one problem of each kind; returns (FakeDataset, expected problems)."""
    ds = make_fake_dataset(tmp_path / "data", n_train=10, n_test=2, size=32)
    root, tr, te = ds.root, ds.train, ds.test
    train, expected = root / "train", []

    def expect(path, words):
        expected.append((path, words))

    ds.path(tr[0], "AGL").unlink()  # listed file missing
    expect(ds.path(tr[0], "AGL"), "missing (listed in geopose_train.csv for id tr0000)")
    rgb1 = ds.path(tr[1])  # truncated RGB
    rgb1.write_bytes(rgb1.read_bytes()[:-40])
    expect(rgb1, "unreadable or truncated image")
    ds.path(tr[2], "AGL").write_bytes(b"II*\x00garbage")  # undecodable AGL
    expect(ds.path(tr[2], "AGL"), "unreadable or truncated TIFF")
    write_agl(ds.path(tr[3], "AGL"), np.ones((30, 32)))  # AGL size differs from RGB
    expect(ds.path(tr[3], "AGL"), "size 30×32 differs from its RGB")
    tifffile.imwrite(ds.path(tr[4], "AGL"), np.ones((32, 32), np.uint8))  # wrong AGL dtype
    expect(ds.path(tr[4], "AGL"), "AGL must be uint16 centimetres or float metres, got uint8")
    ds.path(tr[5]).write_bytes(imagecodecs.jpeg2k_encode(np.zeros((32, 32), np.uint8)))
    expect(ds.path(tr[5]), "single-band")  # RGB not 3-band
    ds.path(tr[6], "VFLOW").write_text('{"scale": 0.01}')
    expect(ds.path(tr[6], "VFLOW"), "lacks key(s) angle")
    ds.path(tr[7], "VFLOW").write_text('{"scale": 0.01, "angle": 7.0}')
    expect(ds.path(tr[7], "VFLOW"), "outside [0, 2π)")
    ds.path(tr[8], "VFLOW").write_text('{"scale": NaN, "angle": 1.0}')
    expect(ds.path(tr[8], "VFLOW"), "not finite")
    ds.path(tr[9], "VFLOW").write_text('{"scale": 0.01,')
    expect(ds.path(tr[9], "VFLOW"), "not valid JSON")

    # a csv row whose files do not exist
    ghost = {"id": "gh1", "agl": "JAX_gh1_AGL.tif", "json": "JAX_gh1_VFLOW.json"}
    append_row(root / "geopose_train.csv", {**ghost, "rgb": "JAX_gh1_RGB.j2k"})
    append_row(root / "metadata.csv", {"id": "gh1", "city": "JAX", "gsd": "0.5"})
    for name in ("JAX_gh1_RGB.j2k", "JAX_gh1_AGL.tif", "JAX_gh1_VFLOW.json"):
        expect(train / name, "missing (listed in geopose_train.csv for id gh1)")
    # files with no csv row, one partner missing
    write_rgb(train / "ATL_stray_RGB.j2k", ds.rgb[tr[0]], quality=0)
    write_agl(train / "ATL_stray_AGL.tif", np.ones((32, 32)))
    expect(train / "ATL_stray_RGB.j2k", "no row in geopose_train.csv")
    expect(train / "ATL_stray_AGL.tif", "no row in geopose_train.csv")
    expect(train / "ATL_stray_RGB.j2k", "has no partner ATL_stray_VFLOW.json")
    (train / "notes.txt").write_text("hello")
    expect(train / "notes.txt", "unexpected file name")
    write_vflow(root / "test" / f"{te[0]}_VFLOW.json", 1.0, 1.0)
    expect(root / "test" / f"{te[0]}_VFLOW.json", "does not belong in test/")
    # metadata problems: id without a row, bad gsd, city disagreeing with the file names
    edit_metadata(root, ds.ids[te[0]])
    expect(root / "geopose_test.csv", f"id {ds.ids[te[0]]}: no row in metadata.csv")
    edit_metadata(root, ds.ids[te[1]], gsd="abc")
    expect(root / "metadata.csv", f"id {ds.ids[te[1]]}: bad gsd 'abc'")
    edit_metadata(root, ds.ids[tr[9]], city="ARG")
    expect(root / "geopose_train.csv", "metadata.csv says city ARG")
    return ds, expected


def test_broken_dataset_reports_every_problem_and_changes_nothing(broken_dataset, monkeypatch):
    ds, expected = broken_dataset
    monkeypatch.chdir(ds.root.parent)
    before = snapshot(ds.root)
    problems = validate_dataset(ds.root, workers=2)
    assert snapshot(ds.root) == before
    assert sorted(p.name for p in ds.root.parent.iterdir()) == ["data"]
    for path, words in expected:
        assert_reported(problems, path, words)
    # nothing else: each problem once, and no false alarm on the sound images
    assert len(problems) == len(expected), "\n".join(map(str, problems))
    assert all(isinstance(p, Problem) and str(p).startswith(p.path + ": ") for p in problems)


def test_missing_tables_and_folders(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "d", n_train=1, n_test=1)
    (ds.root / "metadata.csv").unlink()
    (ds.root / "geopose_test.csv").unlink()
    for f in (ds.root / "train").iterdir():
        f.unlink()
    (ds.root / "train").rmdir()
    problems = validate_dataset(ds.root)
    assert_reported(problems, ds.root / "metadata.csv", "not found")
    assert_reported(problems, ds.root / "geopose_test.csv", "not found, but the folder test/")
    assert_reported(problems, ds.root / "train", "folder not found (geopose_train.csv lists 1")
    (ds.root / "geopose_train.csv").write_text("id,rgb\nx,JAX_x_RGB.j2k\n")
    assert_reported(validate_dataset(ds.root), ds.root / "geopose_train.csv", "missing column")


def test_dataset_test_truth_is_checked(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "d", n_train=1, n_test=2)
    truth = ds.root / "test_truth"
    for stem in ds.test:
        write_prediction(truth, stem, np.ones((32, 32)), 1.0, 2.0)
    assert validate_dataset(ds.root) == []
    (truth / f"{ds.test[0]}_VFLOW.json").unlink()
    assert_reported(
        validate_dataset(ds.root),
        truth / f"{ds.test[0]}_AGL.tif",
        f"has no partner {ds.test[0]}_VFLOW.json",
    )


# --- predictions and submissions ----------------------------------------------------------


@pytest.fixture
def images(tmp_path, make_fake_dataset):
    """A data set with five 32 px test images (and no training images)."""
    return make_fake_dataset(tmp_path / "data", n_train=0, n_test=5)


def good_predictions(folder: Path, stems: list[str]) -> Path:
    for i, stem in enumerate(stems):
        write_prediction(folder, stem, np.full((32, 32), i, np.float32), 0.5 + i, 2.0)
    return folder


def test_clean_predictions_and_submission(tmp_path, images):
    pred = good_predictions(tmp_path / "pred", images.test)
    truth = good_predictions(tmp_path / "truth", images.test)
    assert validate(pred, images=images.root, truth=truth) == []
    tar = pack_submission(pred, tmp_path / "sub.tar.gz")
    assert validate(tar, images=images.root / "test", truth=truth) == []


def test_broken_predictions(tmp_path, images):
    te = images.test
    pred = good_predictions(tmp_path / "pred", te[:1])
    write_agl(pred / f"{te[1]}_AGL.tif", np.ones((16, 16)))  # no VFLOW, wrong size
    write_vflow(pred / f"{te[2]}_VFLOW.json", 1.0, 1.0)  # no AGL
    write_agl(pred / f"{te[3]}_AGL.tif", np.ones((32, 32)), float_metres=True)
    (pred / f"{te[3]}_VFLOW.json").write_text('{"angle": 1.0, "scale": Infinity}')
    good_predictions(pred, ["ATL_extra"])  # no such image
    (pred / "log.txt").write_text("x")
    (pred / f"{te[0]}_RGB.j2k").write_bytes(b"")  # not a prediction file
    before = snapshot(pred)
    problems = validate_predictions(pred, images=images.root)
    assert snapshot(pred) == before
    expected = [
        (pred / f"{te[1]}_AGL.tif", f"has no partner {te[1]}_VFLOW.json"),
        (pred / f"{te[1]}_AGL.tif", "size 16×16 differs from the image"),
        (pred / f"{te[2]}_VFLOW.json", f"has no partner {te[2]}_AGL.tif"),
        (pred / f"{te[3]}_AGL.tif", "AGL is float32; predictions must be uint16 centimetres"),
        (pred / f"{te[3]}_VFLOW.json", "not finite"),
        (pred / f"{te[4]}_AGL.tif", "missing: no prediction for image"),
        (pred / "ATL_extra_AGL.tif", "no image ATL_extra_RGB.*"),
        (pred / "log.txt", "unexpected file"),
        (pred / f"{te[0]}_RGB.j2k", "unexpected file"),
    ]
    for path, words in expected:
        assert_reported(problems, path, words)
    assert len(problems) == len(expected), "\n".join(map(str, problems))


def test_predictions_against_truth(tmp_path, images):
    te = images.test
    pred = good_predictions(tmp_path / "pred", te[:3])
    truth = good_predictions(tmp_path / "truth", te[1:])
    write_agl(truth / f"{te[2]}_AGL.tif", np.ones((32, 40)))
    problems = validate_predictions(pred, truth=truth)
    assert_reported(problems, pred / f"{te[0]}_AGL.tif", f"no truth {te[0]}_AGL.*")
    assert_reported(problems, pred / f"{te[2]}_AGL.tif", "size 32×32 differs from the truth")
    for stem in te[3:]:
        assert_reported(problems, pred / f"{stem}_AGL.tif", "missing: no prediction for truth")
    assert len(problems) == 4


def _add(tar: tarfile.TarFile, name: str, data: bytes, kind=tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_broken_submission(tmp_path, images, monkeypatch):
    te = images.test
    pred = good_predictions(tmp_path / "pred", te)
    agl = (pred / f"{te[0]}_AGL.tif").read_bytes()
    vflow = (pred / f"{te[0]}_VFLOW.json").read_bytes()
    tar_path = tmp_path / "sub.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        _add(tar, f"{te[0]}_AGL.tif", agl)
        _add(tar, f"{te[0]}_VFLOW.json", vflow)
        _add(tar, f"preds/{te[1]}_AGL.tif", agl)  # not flat
        _add(tar, f"preds/{te[1]}_VFLOW.json", vflow)
        _add(tar, f"{te[2]}_AGL.tif", agl[: len(agl) // 2])  # truncated member
        _add(tar, f"{te[2]}_VFLOW.json", json.dumps({"angle": 1.0}).encode())
        _add(tar, f"{te[3]}_AGL.tif", agl)  # no VFLOW
        _add(tar, "preds", b"", tarfile.DIRTYPE)
        _add(tar, f"{te[4]}_VFLOW.json", b"", tarfile.SYMTYPE)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = snapshot(tar_path)
    problems = validate_submission(tar_path, images=images.root)
    assert snapshot(tar_path) == before and not list(cwd.iterdir())  # nothing extracted
    t = str(tar_path)
    expected = [
        (f"{t}:preds/{te[1]}_AGL.tif", "not flat"),
        (f"{t}:preds/{te[1]}_VFLOW.json", "not flat"),
        (f"{t}:{te[2]}_AGL.tif", "unreadable or truncated TIFF"),
        (f"{t}:{te[2]}_VFLOW.json", "lacks key(s) scale"),
        (f"{t}:{te[3]}_AGL.tif", f"has no partner {te[3]}_VFLOW.json"),
        (f"{t}:preds", "a folder"),
        (f"{t}:{te[4]}_VFLOW.json", "a link or special file"),
        (f"{t}:{te[1]}_AGL.tif", "missing: no prediction for image"),
        (f"{t}:{te[4]}_AGL.tif", "missing: no prediction for image"),
    ]
    for path, words in expected:
        assert_reported(problems, path, words)
    assert len(problems) == len(expected), "\n".join(map(str, problems))


def test_truncated_or_foreign_archive(tmp_path, images):
    pred = good_predictions(tmp_path / "pred", images.test)
    tar = pack_submission(pred, tmp_path / "sub.tar.gz")
    tar.write_bytes(tar.read_bytes()[:-300])
    assert_reported(validate(tar), tar, "archive")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    assert_reported(validate(junk), junk, "not a readable tar archive")


# --- kinds ---------------------------------------------------------------------------------


def test_detect_kind(tmp_path, fake_dataset):
    pred = good_predictions(tmp_path / "pred", ["JAX_1"])
    assert detect_kind(fake_dataset.root) == "dataset"
    assert detect_kind(pred) == "predictions"
    assert detect_kind(pack_submission(pred, tmp_path / "s.tar.gz")) == "submission"
    with pytest.raises(GeoposeDataError, match="not found"):
        detect_kind(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeoposeDataError, match="neither a data set folder"):
        validate(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(GeoposeDataError, match="not a submission archive"):
        validate(tmp_path / "x.txt")


def test_missing_reference_folder_is_one_problem(tmp_path, images):
    pred = good_predictions(tmp_path / "pred", images.test)
    problems = validate_predictions(pred, images=tmp_path / "nowhere")
    assert problems == [Problem(str(tmp_path / "nowhere"), "image folder not found")]
