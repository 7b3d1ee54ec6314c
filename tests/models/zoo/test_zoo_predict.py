"""Published models end to end: ``geopose predict --model FILE --tta none`` writes what each
solution's own inference writes (AGL to 1 cm, angle to 0.01°, scale), for every family, from
files in the published formats rebuilt from the reference fixtures. Also: D4 TTA stays exactly
equivariant on a converted model, ONNX parity, loading errors, and fine-tuning a published
model (``train --init-from FILE``) whose checkpoint then loads and predicts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import zoo_fixtures as zf
from typer.testing import CliRunner

from geopose.cli.main import app, main
from geopose.errors import GeoposeDataError
from geopose.io import read_agl, write_rgb
from geopose.models import load_model

runner = CliRunner()


def _images_folder(root, name: str):
    """A one-image folder in the competition layout: the fixture's tile as lossless PNG, with
    its city and GSD in metadata.csv."""
    io = zf.io(name)
    city = str(io["city"]) if "city" in io else "JAX"
    images = root / "images"
    images.mkdir(parents=True)
    write_rgb(images / f"{city}_fix_RGB.png", io["image_rgb_uint8"])
    (root / "metadata.csv").write_text(f"id,city,gsd\nfix,{city},{float(io['gsd'])}\n")
    return images, f"{city}_fix", io


@pytest.mark.slow
@pytest.mark.parametrize("name", zf.FAMILY_FIXTURES)
def test_predict_writes_what_the_original_writes(tmp_path, name):
    weights = zf.write_published(name, tmp_path / f"{name}.weights")  # any name works
    images, stem, io = _images_folder(tmp_path / "data", name)
    out = tmp_path / "preds"
    args = ["predict", "--model", str(weights), "--tta", "none"]
    result = runner.invoke(app, [*args, "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    agl_cm = np.rint(read_agl(out / f"{stem}_AGL.tif") * 100.0)
    ref = io["sub_agl_cm_uint16"].astype(np.float64)
    # The 2nd place writer casts negative metres to uint16 (they wrap); geopose writes 0 there.
    valid = io["agl_m"] >= 0
    # 1 cm of rounding plus the fp32 tolerance of two independent forward passes (zf.RTOL of the
    # largest height; AVX-512 kernels give rdtsc_unet a 2 cm difference at 384 m).
    tol_cm = 1.0 + zf.RTOL * float(np.abs(io["agl_m"]).max()) * 100.0
    assert np.abs(agl_cm - ref)[valid].max() <= tol_cm
    assert np.all(agl_cm[~valid] == 0)
    vflow = json.loads((out / f"{stem}_VFLOW.json").read_text())
    d_angle = math.remainder(vflow["angle"] - float(io["sub_vflow_angle"]), 2 * math.pi)
    assert abs(math.degrees(d_angle)) <= 0.01
    ref_scale = float(io["sub_vflow_scale_px_per_cm"])
    assert abs(vflow["scale"] - ref_scale) <= zf.RTOL * abs(ref_scale) + 1e-6


@pytest.fixture(scope="module")
def baseline_model(tmp_path_factory):
    path = zf.write_published("baseline", tmp_path_factory.mktemp("zoo") / "model_best.pth")
    model, config = load_model(path)
    return model, config, path


def test_d4_tta_is_exactly_equivariant_on_a_converted_model(baseline_model):
    from geopose.geometry import D4, d4_angle, d4_image
    from geopose.inference import Predictor

    model, _, _ = baseline_model
    predictor = Predictor([model], tta="d4", device="cpu", amp=False)
    rgb = zf.io("baseline")["image_rgb_uint8"]
    ref = predictor.predict(rgb, gsd=0.35)
    for k, t in D4[1:4]:
        got = predictor.predict(np.ascontiguousarray(d4_image(rgb, k, t)), gsd=0.35)
        np.testing.assert_allclose(got.agl, d4_image(ref.agl, k, t), atol=1e-4)
        d = math.remainder(got.angle - d4_angle(ref.angle, k, t), 2 * math.pi)
        assert abs(d) < 1e-5 and got.scale == pytest.approx(ref.scale, rel=1e-5)


@pytest.mark.slow
def test_onnx_export_of_a_published_model_matches_torch(tmp_path, baseline_model):
    _, _, path = baseline_model
    onnx = tmp_path / "baseline.onnx"
    result = runner.invoke(app, ["export", "--model", str(path), str(onnx), "--size", "128"])
    assert result.exit_code == 0, result.output
    assert onnx.is_file() and "max |torch - onnxruntime|" in result.output


def test_foreign_and_corrupt_files_are_one_line_errors(tmp_path, capsys):
    foreign = tmp_path / "foreign.pth"
    torch.save({"net": {"conv.weight": torch.zeros(2, 3, 3, 3)}}, foreign)
    with pytest.raises(GeoposeDataError, match="not a published Geopose Challenge model") as e:
        load_model(foreign)
    assert str(foreign) in str(e.value) and "\n" not in str(e.value)
    corrupt = tmp_path / "cut.pth"
    good = zf.write_published("baseline", tmp_path / "good.pth")
    corrupt.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(GeoposeDataError, match="not a readable") as e:
        load_model(corrupt)
    assert str(corrupt) in str(e.value)
    images, _, _ = _images_folder(tmp_path / "data", "baseline")
    out = tmp_path / "preds"
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "-m", str(corrupt), "--images", str(images), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and err.startswith(f"error: {corrupt}: not a readable")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_unknown_model_name_says_how_to_list(tmp_path):
    with pytest.raises(GeoposeDataError, match="geopose models"):
        load_model("no_such_model")


@pytest.mark.slow
def test_fine_tune_a_published_model_then_load_and_predict(
    tmp_path, baseline_model, make_fake_dataset
):
    """``train --init-from FILE``: the published architecture replaces the recipe's model, the
    first weights are the published ones, and the run's checkpoint loads like any other."""
    model, _, path = baseline_model
    data = make_fake_dataset(tmp_path / "data", n_train=4, n_test=1, size=64)
    run = tmp_path / "run"
    args = ["train", "--config", "baseline", "--data", str(data.root), "--out", str(run)]
    overrides = [
        "train.max_steps=1",
        "train.lr=0",
        "train.progress=false",
        "data.crop=64",
        "data.batch_size=2",
        "data.workers=0",
        "data.folds=2",
        "data.fold=null",
        "data.aug=none",
    ]
    result = runner.invoke(app, [*args, "--init-from", str(path), *overrides])
    assert result.exit_code == 0, result.output
    tuned, config = load_model(run / "checkpoints" / "last.ckpt")
    assert config["model"]["family"] == "baseline"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x, torch.tensor([0.35])), tuned.eval()(x, torch.tensor([0.35]))
    # lr 0: the weights are the published ones (batch-norm statistics may move in train mode).
    same = [torch.equal(p, q) for p, q in zip(model.parameters(), tuned.parameters(), strict=True)]
    assert all(same) and a.agl.shape == b.agl.shape


def test_published_ensembles_expand_to_weighted_members_with_the_authors_tta():
    from geopose.models import expand_specs
    from geopose.models.zoo import catalog

    members, tta = expand_specs([("second-lite", 1.0), ("my.ckpt", 2.0)])
    lite = catalog.ENSEMBLES["second-lite"]
    assert tta == lite.tta == "d4"
    assert members[:-1] == [(name, w) for name, w in lite.members] and members[-1] == (
        "my.ckpt",
        2.0,
    )
    assert sum(w for _, w in members[:-1]) == pytest.approx(1.0)
    assert expand_specs([("first-v2l-fold5", 1.0)]) == ([("first-v2l-fold5", 1.0)], None)


def test_predict_with_an_ensemble_not_downloaded_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOPOSE_CACHE", str(tmp_path / "cache"))
    images, _, _ = _images_folder(tmp_path / "data", "baseline")
    with pytest.raises(SystemExit) as exit_:
        main(
            ["predict", "--model", "fourth", "--images", str(images), "--out", str(tmp_path / "p")]
        )
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "geopose models download fourth-" in err
    assert not (tmp_path / "p").exists()
