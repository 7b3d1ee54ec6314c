"""Round trips and error handling of geopose.io (rasters, VFLOW json, tables, submissions)."""

from __future__ import annotations

import io
import json
import math
import os
import stat
import tarfile

import numpy as np
import pandas as pd
import pytest
import tifffile

from geopose.errors import GeoposeDataError, OutputExistsError
from geopose.io import (
    AGL_NODATA,
    Vflow,
    agl_cm_to_m,
    agl_m_to_cm,
    agl_name,
    atomic_path,
    city_of,
    load_index,
    pack_submission,
    parse_vflow,
    prediction_files,
    read_agl,
    read_agl_raw,
    read_metadata,
    read_rgb,
    read_vflow,
    rgb_name,
    split_name,
    vflow_json,
    vflow_name,
    write_agl,
    write_bytes_atomic,
    write_prediction,
    write_rgb,
    write_text_atomic,
    write_vflow,
)

DEFLATE = (8, 32946)  # TIFF compression tags ADOBE_DEFLATE and the old DEFLATE


@pytest.fixture
def rgb() -> np.ndarray:
    """A 48×64 smooth-ish colour image with edges (not noise)."""
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    img[10:20, 30:45] = (250, 10, 120)
    return img


# --- RGB --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".j2k", ".jp2", ".png", ".tif"])
def test_rgb_lossless_round_trip(tmp_path, rgb, suffix):
    path = write_rgb(tmp_path / f"JAX_1_RGB{suffix}", rgb, quality=0)
    back = read_rgb(path)
    assert back.dtype == np.uint8 and back.shape == rgb.shape
    np.testing.assert_array_equal(back, rgb)
    np.testing.assert_array_equal(read_rgb(path, threads=2), rgb)


def test_rgb_j2k_lossy_is_close_and_smaller(tmp_path, rgb):
    lossless = write_rgb(tmp_path / "a_RGB.j2k", rgb, quality=0)
    lossy = write_rgb(tmp_path / "b_RGB.j2k", rgb)  # default: 40 dB PSNR target
    back = read_rgb(lossy).astype(float)
    psnr = 10 * math.log10(255**2 / np.mean((back - rgb) ** 2))
    assert psnr > 35
    assert lossy.stat().st_size < lossless.stat().st_size
    assert lossless.read_bytes()[:4] == b"\xff\x4f\xff\x51"  # raw J2K codestream (SOC, SIZ)


def test_rgb_tif_is_deflate_compressed(tmp_path, rgb):
    path = write_rgb(tmp_path / "a_RGB.tif", rgb)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression in DEFLATE


def test_rgb_band_first_and_four_band_tiffs(tmp_path, rgb):
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb")
    np.testing.assert_array_equal(read_rgb(tmp_path / "planar.tif"), rgb)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=[2])
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.tif"), rgb)


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("gray.tif", np.zeros((8, 8), np.uint8), "single-band"),
        ("deep.tif", np.zeros((8, 8, 3), np.uint16), "uint16"),
    ],
)
def test_rgb_wrong_bands_or_dtype(tmp_path, name, data, words):
    tifffile.imwrite(tmp_path / name, data)
    with pytest.raises(GeoposeDataError, match=words) as err:
        read_rgb(tmp_path / name)
    assert name in str(err.value)


def test_rgb_truncated_missing_empty_unsupported(tmp_path, rgb):
    path = write_rgb(tmp_path / "JAX_1_RGB.j2k", rgb)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 2):
        path.write_bytes(data[:cut])
        with pytest.raises(GeoposeDataError, match="unreadable or truncated") as err:
            read_rgb(path)
        assert "JAX_1_RGB.j2k" in str(err.value)
    with pytest.raises(GeoposeDataError, match="not found"):
        read_rgb(tmp_path / "nope_RGB.j2k")
    (tmp_path / "empty_RGB.j2k").write_bytes(b"")
    with pytest.raises(GeoposeDataError, match="empty"):
        read_rgb(tmp_path / "empty_RGB.j2k")
    (tmp_path / "x_RGB.bmp").write_bytes(b"BM")
    with pytest.raises(GeoposeDataError, match="unsupported"):
        read_rgb(tmp_path / "x_RGB.bmp")


def test_write_rgb_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError):
        write_rgb(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        write_rgb(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))


# --- AGL --------------------------------------------------------------------------------


def test_agl_units_rounding_and_nodata():
    m = np.array([[1.234, 1.236, np.nan], [-3.0, 1e6, np.inf], [0.0, 655.34, 655.35]])
    cm = agl_m_to_cm(m)
    assert cm.dtype == np.uint16
    np.testing.assert_array_equal(
        cm, [[123, 124, AGL_NODATA], [0, 65534, AGL_NODATA], [0, 65534, 65534]]
    )
    back = agl_cm_to_m(cm)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(back), [[0, 0, 1], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_allclose(back[0, :2], [1.23, 1.24], rtol=1e-6)


def test_agl_round_trip_values_nan_and_compression(tmp_path):
    rng = np.random.default_rng(0)
    agl = rng.uniform(0, 80, (40, 56)).astype(np.float32)
    agl[rng.random(agl.shape) < 0.1] = np.nan
    path = write_agl(tmp_path / "JAX_1_AGL.tif", agl)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression in DEFLATE
        raw = page.asarray()
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw == AGL_NODATA, np.isnan(agl))
    np.testing.assert_array_equal(raw[~np.isnan(agl)], np.rint(agl[~np.isnan(agl)] * 100))
    back = read_agl(path)
    assert back.dtype == np.float32 and back.shape == agl.shape
    np.testing.assert_array_equal(np.isnan(back), np.isnan(agl))
    np.testing.assert_allclose(back, agl, atol=0.005 + 1e-5, equal_nan=True)
    # a second write of what was read is exact (values are whole centimetres)
    again = read_agl(write_agl(tmp_path / "again_AGL.tif", back))
    np.testing.assert_array_equal(again, back)


def test_agl_clips_negative_and_huge_heights(tmp_path):
    path = write_agl(tmp_path / "a_AGL.tif", np.array([[-5.0, 0.004], [700.0, 12.0]]))
    np.testing.assert_array_equal(read_agl_raw(path), [[0, 0], [65534, 1200]])


def test_agl_float_metres_tiff(tmp_path):
    agl = np.array([[1.23456, np.nan], [-0.5, 900.0]], np.float32)
    path = write_agl(tmp_path / "a_AGL.tif", agl, float_metres=True)
    assert read_agl_raw(path).dtype == np.float32
    np.testing.assert_array_equal(read_agl(path), agl)  # exact, negatives and > 655 m kept
    tifffile.imwrite(tmp_path / "us3d_AGL.tif", np.array([[np.inf, 2.5]], np.float64))
    back = read_agl(tmp_path / "us3d_AGL.tif")
    assert back.dtype == np.float32 and np.isnan(back[0, 0]) and back[0, 1] == 2.5


def test_agl_from_bytes_equals_from_path(tmp_path):
    path = write_agl(tmp_path / "a_AGL.tif", np.arange(12, dtype=float).reshape(3, 4))
    np.testing.assert_array_equal(read_agl_raw(path.read_bytes(), "x"), read_agl_raw(path))
    with pytest.raises(GeoposeDataError, match="sub.tar.gz:a_AGL.tif: file is empty"):
        read_agl_raw(b"", "sub.tar.gz:a_AGL.tif")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (np.zeros((4, 4), np.uint8), "uint16 centimetres or float metres"),
        (np.zeros((4, 4, 3), np.uint16), "single-band"),
    ],
)
def test_agl_wrong_dtype_or_bands(tmp_path, data, words):
    tifffile.imwrite(tmp_path / "JAX_1_AGL.tif", data)
    with pytest.raises(GeoposeDataError, match=words) as err:
        read_agl(tmp_path / "JAX_1_AGL.tif")
    assert "JAX_1_AGL.tif" in str(err.value)


def test_agl_truncated_and_garbage(tmp_path):
    path = write_agl(tmp_path / "JAX_1_AGL.tif", np.ones((64, 64)))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(GeoposeDataError, match="JAX_1_AGL.tif: unreadable or truncated"):
        read_agl(path)
    (tmp_path / "g_AGL.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(GeoposeDataError, match="g_AGL.tif: unreadable"):
        read_agl(tmp_path / "g_AGL.tif")


def test_write_agl_rejects_non_2d(tmp_path):
    with pytest.raises(ValueError):
        write_agl(tmp_path / "a_AGL.tif", np.zeros((2, 2, 2)))


# --- VFLOW ------------------------------------------------------------------------------


def test_vflow_round_trip_and_units(tmp_path):
    path = write_vflow(tmp_path / "JAX_1_VFLOW.json", 1.25, 2.5)  # px/m
    obj = json.loads(path.read_text())
    assert obj == {"scale": pytest.approx(0.025), "angle": pytest.approx(1.25)}  # px/cm
    v = read_vflow(path)
    assert isinstance(v, Vflow)
    assert v.angle == pytest.approx(1.25) and v.scale == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("angle", "wrapped"), [(-0.5, 2 * math.pi - 0.5), (2 * math.pi, 0.0), (7.0, 7.0 - 2 * math.pi)]
)
def test_vflow_angle_is_wrapped_on_write(angle, wrapped):
    obj = json.loads(vflow_json(angle, 1.0))
    assert obj["angle"] == pytest.approx(wrapped) and 0 <= obj["angle"] < 2 * math.pi


def test_write_vflow_refuses_non_finite(tmp_path):
    with pytest.raises(ValueError):
        write_vflow(tmp_path / "a_VFLOW.json", float("nan"), 1.0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"scale": 0.01}', "lacks key"),
        ('{"angle": 1.0}', "lacks key"),
        ('{"scale": NaN, "angle": 1.0}', "not finite"),
        ('{"scale": 0.01, "angle": Infinity}', "not finite"),
        ('{"scale": 0.01, "angle": 6.3}', "outside"),
        ('{"scale": 0.01, "angle": -0.1}', "outside"),
        ('{"scale": -0.01, "angle": 1.0}', "negative"),
        ('{"scale": "0.01", "angle": 1.0}', "must be a number"),
        ('{"scale": true, "angle": 1.0}', "must be a number"),
        ("[0.01, 1.0]", "must be an object"),
        ('{"scale": 0.01, "angle": ', "not valid JSON"),
    ],
)
def test_vflow_bad_json(tmp_path, text, words):
    path = tmp_path / "JAX_1_VFLOW.json"
    path.write_text(text)
    with pytest.raises(GeoposeDataError, match=words) as err:
        read_vflow(path)
    assert "JAX_1_VFLOW.json" in str(err.value)


def test_parse_vflow_converts_px_per_cm():
    assert parse_vflow({"scale": 0.02, "angle": 0.0}).scale == pytest.approx(2.0)


# --- names ------------------------------------------------------------------------------


def test_layout_names():
    assert rgb_name("JAX_1") == "JAX_1_RGB.j2k" and rgb_name("JAX_1", ".tif") == "JAX_1_RGB.tif"
    assert agl_name("JAX_1") == "JAX_1_AGL.tif" and vflow_name("JAX_1") == "JAX_1_VFLOW.json"
    assert split_name("/a/b/OMA_x_y_AGL.tif") == ("OMA_x_y", "AGL")
    assert split_name("JAX_1_NADIR_AGL.tif") == ("JAX_1", "NADIR_AGL")
    assert split_name("JAX_1_VFLOW.json") == ("JAX_1", "VFLOW")
    assert split_name("readme.txt") is None
    assert city_of("ARG_007") == "ARG"


# --- tables -----------------------------------------------------------------------------


def test_load_index_joins_tables(fake_dataset):
    ds = fake_dataset
    train = load_index(ds.root, "train")
    assert list(train.columns) == ["id", "stem", "city", "gsd", "split", "rgb", "agl", "vflow"]
    assert list(train.stem) == ds.train
    for row in train.itertuples():
        assert row.id == ds.ids[row.stem] and row.city == city_of(row.stem)
        assert row.gsd == pytest.approx(ds.gsd[row.stem]) and row.split == "train"
        for col, kind in (("rgb", "RGB"), ("agl", "AGL"), ("vflow", "VFLOW")):
            p = getattr(row, col)
            assert os.path.isabs(p) and p == str(ds.path(row.stem, kind).resolve())
        np.testing.assert_array_equal(read_rgb(row.rgb), ds.rgb[row.stem])
        np.testing.assert_array_equal(read_agl(row.agl), ds.agl[row.stem])
        assert read_vflow(row.vflow).angle == pytest.approx(ds.vflow[row.stem].angle)
    test = load_index(ds.root, "test")
    assert list(test.stem) == ds.test and test.agl.isna().all() and test.vflow.isna().all()
    both = load_index(ds.root, "all")
    assert len(both) == len(ds.train) + len(ds.test)
    assert set(both.split) == {"train", "test"}


def test_load_index_keeps_ids_as_strings(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "d", n_train=1, n_test=0)
    stem = ds.train[0]
    for name in ("metadata.csv", "geopose_train.csv"):
        p = ds.root / name
        p.write_text(p.read_text().replace(ds.ids[stem] + ",", "0012,"))
    index = load_index(ds.root)
    assert index.id.tolist() == ["0012"] and index.gsd.tolist() == [ds.gsd[stem]]


def _edit_csv(path, fn):
    """Rewrite a csv as ``fn(table)`` (all columns read as text)."""
    fn(pd.read_csv(path, dtype=str)).to_csv(path, index=False)


def _set(df, row, col, value):
    df.loc[row, col] = value
    return df


def test_load_index_errors_name_the_file(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "d", n_train=2, n_test=1)
    meta, train = ds.root / "metadata.csv", ds.root / "geopose_train.csv"
    meta_text, train_text = meta.read_text(), train.read_text()

    _edit_csv(meta, lambda df: df.drop(index=0))
    with pytest.raises(GeoposeDataError, match="no metadata row") as err:
        load_index(ds.root)
    assert "metadata.csv" in str(err.value)
    meta.write_text(meta_text)

    _edit_csv(meta, lambda df: _set(df, 0, "gsd", "-1"))
    with pytest.raises(GeoposeDataError, match="metadata.csv: gsd"):
        load_index(ds.root)
    meta.write_text(meta_text)

    _edit_csv(meta, lambda df: df.drop(columns="gsd"))
    with pytest.raises(GeoposeDataError, match="metadata.csv: missing column"):
        read_metadata(ds.root)
    meta.write_text(meta_text + meta_text.splitlines()[1] + "\n")
    with pytest.raises(GeoposeDataError, match="duplicate id"):
        read_metadata(ds.root)
    meta.write_text(meta_text)

    _edit_csv(train, lambda df: _set(df, 0, "agl", None))
    with pytest.raises(GeoposeDataError, match="geopose_train.csv: empty cell"):
        load_index(ds.root)
    train.write_text(train_text)

    with pytest.raises(GeoposeDataError, match="data folder not found"):
        load_index(tmp_path / "nowhere")
    (ds.root / "geopose_train.csv").unlink()
    (ds.root / "geopose_test.csv").unlink()
    with pytest.raises(GeoposeDataError, match="neither"):
        load_index(ds.root, "all")


# --- submissions and atomic writes -------------------------------------------------------


def test_submission_is_flat_and_round_trips(tmp_path):
    pred = tmp_path / "pred"
    rng = np.random.default_rng(1)
    truth = {}
    for stem in ("JAX_a", "OMA_b", "ARG_c"):
        agl = np.round(rng.uniform(0, 30, (16, 24)), 2).astype(np.float32)
        agl[0, :3] = np.nan
        angle, scale = float(rng.uniform(0, 6.28)), float(rng.uniform(1, 3))
        write_prediction(pred, stem, agl, angle, scale)
        truth[stem] = (agl, angle, scale)
    (pred / "notes.txt").write_text("not packed")
    assert [p.name for p in prediction_files(pred)] == sorted(
        n for s in truth for n in (agl_name(s), vflow_name(s))
    )
    tar_path = pack_submission(pred, tmp_path / "sub.tar.gz")
    with tarfile.open(tar_path, "r:gz") as tar:
        members = tar.getmembers()
        assert all(m.isfile() and "/" not in m.name for m in members)
        assert len(members) == 6
        data = {m.name: tar.extractfile(m).read() for m in members}
    for stem, (agl, angle, scale) in truth.items():
        np.testing.assert_array_equal(agl_cm_to_m(read_agl_raw(data[agl_name(stem)])), agl)
        v = parse_vflow(json.loads(data[vflow_name(stem)]))
        assert v.angle == pytest.approx(angle) and v.scale == pytest.approx(scale)
        raw = tifffile.TiffFile(io.BytesIO(data[agl_name(stem)])).pages[0]
        assert raw.dtype == np.uint16 and raw.compression in DEFLATE
    with pytest.raises(OutputExistsError):
        pack_submission(pred, tar_path)
    pack_submission(pred, tar_path, overwrite=True)


def test_pack_submission_errors(tmp_path):
    with pytest.raises(GeoposeDataError, match="not found"):
        pack_submission(tmp_path / "none", tmp_path / "s.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeoposeDataError, match="no \\*_AGL.tif"):
        pack_submission(tmp_path / "empty", tmp_path / "s.tar.gz")
    assert not (tmp_path / "s.tar.gz").exists()


def test_atomic_write_leaves_no_temp_file_on_error(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half written")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_atomic_write_refuses_overwrite_when_asked(tmp_path):
    target = write_text_atomic(tmp_path / "a.json", "first")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_text_atomic(target, "second", overwrite=False)
    with pytest.raises(OutputExistsError):
        write_agl(tmp_path / "a.json", np.zeros((2, 2)), overwrite=False)
    assert target.read_text() == "first"
    write_bytes_atomic(target, b"second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    (tmp_path / "plain").write_text("x")
    target = write_text_atomic(tmp_path / "atomic", "x")
    mode = stat.S_IMODE
    assert mode(target.stat().st_mode) == mode((tmp_path / "plain").stat().st_mode)
