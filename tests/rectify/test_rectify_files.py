"""Rectification files and the ``geopose rectify`` command."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from geopose.cli.main import main
from geopose.io import read_agl, read_georef, read_rgb, write_agl, write_vflow
from geopose.rectify import rectify, rectify_files


def run_cli(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    cap = capsys.readouterr()
    return exc.value.code or 0, cap.out + cap.err


def test_rectify_files_match_the_array_result(fake_dataset, tmp_path):
    stem = fake_dataset.train[0]
    out = tmp_path / "out"
    paths = rectify_files(
        fake_dataset.path(stem),
        fake_dataset.path(stem, "AGL"),
        fake_dataset.path(stem, "VFLOW"),
        out,
    )
    assert {p.name for p in paths.values()} == {
        f"{stem}_NADIR_RGB.png",
        f"{stem}_NADIR_AGL.tif",
        f"{stem}_OCCLUDED.png",
    }
    angle, scale = fake_dataset.vflow[stem]
    want = rectify(fake_dataset.rgb[stem], fake_dataset.agl[stem], angle, scale)
    np.testing.assert_array_equal(read_rgb(paths["rgb"]), want.rgb)
    np.testing.assert_allclose(read_agl(paths["agl"]), want.agl, atol=0.005)
    assert np.array_equal(np.isnan(read_agl(paths["agl"])), want.occluded)
    mask = np.asarray(Image.open(paths["occluded"]))
    np.testing.assert_array_equal(mask == 255, want.occluded)
    assert want.occluded.any()  # the fake buildings hide some ground


def test_geotiff_in_geotiff_out(tmp_path):
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    transform = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 3300000.0)
    src = tmp_path / "JAX_001_RGB.tif"
    with rasterio.open(
        src,
        "w",
        driver="GTiff",
        width=32,
        height=24,
        count=3,
        dtype="uint8",
        crs="EPSG:32617",
        transform=transform,
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    agl = np.zeros((24, 32), np.float32)
    agl[5:10, 5:12] = 4.0
    write_agl(tmp_path / "JAX_001_AGL.tif", agl)
    write_vflow(tmp_path / "JAX_001_VFLOW.json", 1.0, 1.5)
    paths = rectify_files(
        src, tmp_path / "JAX_001_AGL.tif", tmp_path / "JAX_001_VFLOW.json", tmp_path / "o"
    )
    assert all(p.suffix == ".tif" for p in paths.values())
    want = rectify(rgb, agl, 1.0, 1.5)
    for kind, p in paths.items():
        geo = read_georef(p)
        assert geo is not None and geo.crs.to_epsg() == 32617 and geo.transform == transform, kind
    with rasterio.open(paths["rgb"]) as ds:
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), want.rgb)
    with rasterio.open(paths["agl"]) as ds:
        assert ds.nodata == 65535
    np.testing.assert_allclose(read_agl(paths["agl"]), want.agl, atol=0.005)


def test_cli_one_image_and_overwrite(fake_dataset, tmp_path, capsys):
    stem = fake_dataset.train[1]
    args = [
        "rectify",
        fake_dataset.path(stem),
        "--agl",
        fake_dataset.path(stem, "AGL"),
        "--vflow",
        fake_dataset.path(stem, "VFLOW"),
        "--out",
        tmp_path / "o",
    ]
    code, text = run_cli(capsys, *args)
    assert code == 0, text
    assert (tmp_path / "o" / f"{stem}_NADIR_RGB.png").is_file()
    code, text = run_cli(capsys, *args)
    assert code == 1 and "exists already" in text and "Traceback" not in text
    assert run_cli(capsys, *args, "--overwrite")[0] == 0


def test_cli_folder_mode(fake_dataset, tmp_path, capsys):
    train = fake_dataset.root / "train"
    code, text = run_cli(
        capsys, "rectify", "--images", train, "--pred", train, "--out", tmp_path / "o"
    )
    assert code == 0, text
    for stem in fake_dataset.train:
        got = read_rgb(tmp_path / "o" / f"{stem}_NADIR_RGB.png")
        angle, scale = fake_dataset.vflow[stem]
        want = rectify(fake_dataset.rgb[stem], fake_dataset.agl[stem], angle, scale)
        np.testing.assert_array_equal(got, want.rgb)
    # a data set folder works as --images too (its train/ and test/ are searched)
    code, text = run_cli(
        capsys, "rectify", "--images", fake_dataset.root, "--pred", train, "--out", tmp_path / "d"
    )
    assert code == 0, text
    assert len(list((tmp_path / "d").glob("*_NADIR_RGB.png"))) == len(fake_dataset.train)
    # heights only, without images
    code, text = run_cli(capsys, "rectify", "--pred", train, "--out", tmp_path / "h")
    assert code == 0, text
    assert len(list((tmp_path / "h").glob("*_NADIR_AGL.tif"))) == len(fake_dataset.train)
    assert not list((tmp_path / "h").glob("*_NADIR_RGB*"))


def test_cli_bad_input_names_the_file(fake_dataset, tmp_path, capsys):
    train = fake_dataset.root / "train"
    empty = tmp_path / "imgs"
    empty.mkdir()
    code, text = run_cli(
        capsys, "rectify", "--images", empty, "--pred", train, "--out", tmp_path / "o"
    )
    assert code == 1 and "no RGB image" in text and str(empty) in text
    stem = fake_dataset.train[0]
    bad = tmp_path / "bad_VFLOW.json"
    bad.write_text('{"scale": 0.01}')
    code, text = run_cli(
        capsys,
        "rectify",
        fake_dataset.path(stem),
        "--agl",
        fake_dataset.path(stem, "AGL"),
        "--vflow",
        bad,
        "--out",
        tmp_path / "o",
    )
    assert code == 1 and str(bad) in text and "angle" in text
    small = tmp_path / "small_AGL.tif"
    write_agl(small, np.zeros((5, 5), np.float32))
    code, text = run_cli(
        capsys,
        "rectify",
        fake_dataset.path(stem),
        "--agl",
        small,
        "--vflow",
        fake_dataset.path(stem, "VFLOW"),
        "--out",
        tmp_path / "o",
    )
    assert code == 1 and str(small) in text and "5×5" in text
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_rectify_rejects_non_finite_pose():
    with pytest.raises(ValueError):
        rectify(None, np.zeros((4, 4), np.float32), math.nan, 1.0)


def test_cli_on_a_synthetic_data_set_matches_its_nadir_truth(tmp_path, capsys):
    """``geopose synth --nadir`` writes the nadir truth; ``geopose rectify`` of the test images
    with their true AGL/VFLOW files must reproduce it: heights within 0.5 m on ≥ 95% of the
    non-occluded pixels (worst of 64 renders 97.1%) after the centimetre rounding of the files,
    which moves footprints by up to 0.005 m × scale px (the reason for the 0.02 px tie rule)."""
    from geopose.synth.dataset import TruthOptions, write_dataset

    data = tmp_path / "synth"
    clean = TruthOptions(missing=False, speckle=0.0, hidden=0.0)
    write_dataset(data, 0, 2, 96, seed=3, nadir=True, truth=clean)
    out = tmp_path / "rect"
    code, text = run_cli(
        capsys, "rectify", "--images", data / "test", "--pred", data / "test_truth", "--out", out
    )
    assert code == 0, text
    nadir = sorted((data / "test_nadir").glob("*_NADIR_AGL.tif"))
    assert len(nadir) == 2
    for truth_path in nadir:
        got = read_agl(out / truth_path.name)
        want = read_agl(truth_path)
        vis = np.isfinite(got)
        assert 0.5 < vis.mean() <= 1.0
        assert (np.abs(got - want)[vis] < 0.5).mean() >= 0.95
