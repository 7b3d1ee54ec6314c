"""``geopose synth`` / write_dataset: the competition layout, truth that reads back to the
rendered arrays, determinism (same seed, same bytes; 1 or 2 worker processes), refusal to
write into a non-empty folder, the truth troubles, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from geopose.cli.main import main
from geopose.errors import OutputExistsError, OutputPathError
from geopose.io import load_index, read_agl, read_rgb, read_vflow
from geopose.synth import TruthOptions, make_scene, render, render_image, write_dataset
from geopose.synth.dataset import _streams, degrade_truth
from geopose.validate import validate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    views = write_dataset(out, 4, 2, 64, seed=11, nadir=True)
    return out, views


def _files(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_validates_and_indexes(data):
    out, views = data
    assert validate(out) == []
    idx = load_index(out, "all")
    assert len(idx) == 6 and set(idx.city) == {"ARG", "ATL", "JAX", "OMA"}
    assert (idx.stem == idx.city + "_" + idx.id).all()
    assert sorted(p.name for p in (out / "test").iterdir()) == sorted(
        f"{s}_RGB.j2k" for s in idx.stem[idx.split == "test"]
    )
    truth = sorted(p.name for p in (out / "test_truth").iterdir())
    assert len(truth) == 4 and all(n.endswith(("_AGL.tif", "_VFLOW.json")) for n in truth)
    assert len(list((out / "test_nadir").glob("*_NADIR_AGL.tif"))) == 2
    info = json.loads((out / "synth.json").read_text())
    assert info["seed"] == 11 and info["size"] == 64
    assert len(views) == 6 and (views["pass"] >= 0).all()


def test_files_read_back_to_the_rendered_arrays(data):
    out, views = data
    idx = load_index(out, "all")
    for row in idx.itertuples():
        split, k = row.split, int(row.id.removeprefix(row.split))
        scene, geo, r, agl = render_image(row.city, 64, _streams(11, split, k))
        truth_dir = out / ("train" if split == "train" else "test_truth")
        got = read_agl(truth_dir / f"{row.stem}_AGL.tif")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(agl))
        assert np.nanmax(np.abs(got - agl)) <= 0.005 + 1e-6  # centimetre rounding
        v = read_vflow(truth_dir / f"{row.stem}_VFLOW.json")
        assert math.isclose(v.angle, geo.angle, abs_tol=1e-12)
        assert math.isclose(v.scale, geo.scale, rel_tol=1e-12)
        assert math.isclose(row.gsd, scene.gsd, rel_tol=1e-12)
        rgb = read_rgb(row.rgb)
        assert rgb.shape == (64, 64, 3)
        assert np.abs(rgb.astype(int) - r.rgb).mean() < 4  # JPEG 2000 at 40 dB
        nadir_dir = out / ("train" if split == "train" else "test_nadir")
        nadir = read_agl(nadir_dir / f"{row.stem}_NADIR_AGL.tif")
        assert np.abs(nadir - scene.height).max() <= 0.005 + 1e-6
        np.testing.assert_array_equal(
            read_rgb(nadir_dir / f"{row.stem}_NADIR_RGB.png"), r.nadir_rgb
        )


def test_same_seed_same_bytes_with_one_or_two_workers(tmp_path, data):
    out, _ = data
    again = tmp_path / "again"
    write_dataset(again, 4, 2, 64, seed=11, nadir=True, workers=2)
    assert _files(again) == _files(out)
    other = tmp_path / "other"
    write_dataset(other, 4, 2, 64, seed=12, nadir=True)
    assert _files(other)["metadata.csv"] != _files(out)["metadata.csv"]


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "d"
    write_dataset(out, 2, 0, 32, seed=0)
    before = _files(out)
    with pytest.raises(OutputExistsError):
        write_dataset(out, 1, 0, 32, seed=1)
    assert _files(out) == before
    with pytest.raises(OutputPathError, match="not a folder"):  # CLI exit code 2
        write_dataset(out / "metadata.csv", 1, 0, 32, seed=1, overwrite=True)
    write_dataset(out, 1, 1, 32, seed=1, overwrite=True)
    names = sorted(p.name for p in (out / "train").iterdir())
    assert len(names) == 3  # the earlier second image's files are gone
    assert validate(out) == []


def test_truth_troubles():
    scene = make_scene("JAX", 96, 4)
    r = render(scene, 1.0, 0.9, sun=3.0)
    rng = np.random.default_rng(0)
    clean = degrade_truth(r.agl, r.kind, rng, TruthOptions(missing=False))
    np.testing.assert_array_equal(clean, r.agl)
    holes = degrade_truth(r.agl, r.kind, rng, TruthOptions(missing=True))
    assert 0 < np.isnan(holes).mean() < 0.1
    speck = degrade_truth(r.agl, r.kind, rng, TruthOptions(missing=False, speckle=0.05))
    changed = speck != r.agl
    assert 0.02 < changed.mean() < 0.08 and (speck >= 0).all()
    # hidden buildings: in the AGL, not in the RGB
    seeds = _streams(3, "train", 1)
    _, _, shown, _ = render_image("ATL", 96, seeds, truth=TruthOptions(hidden=1.0))
    _, _, full, _ = render_image("ATL", 96, seeds)
    np.testing.assert_array_equal(shown.agl, full.agl)
    assert (shown.rgb != full.rgb).any(-1).mean() > 0.05


def test_uniform_angles_and_city_choice(tmp_path):
    views = write_dataset(tmp_path / "u", 6, 0, 32, seed=2, cities=["OMA"], uniform_angles=True)
    assert (views.city == "OMA").all() and (views["pass"] == -1).all()
    assert views.angle.between(0, 2 * math.pi).all() and views.scale.between(0.65, 1.05).all()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--train", "2", "--test", "1", "--size", "32", "--workers", "1"]
    with pytest.raises(SystemExit) as e:
        main(args + ["--cities", "oma,ARG"])
    assert e.value.code == 0
    meta = pd.read_csv(out / "metadata.csv", dtype={"id": str})
    assert list(meta.columns) == ["id", "city", "gsd"] and set(meta.city) == {"OMA", "ARG"}
    assert "wrote 2 train + 1 test" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["synth", str(tmp_path / "x"), "--cities", "XYZ"])
    assert e.value.code == 1 and "unknown city 'XYZ'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
