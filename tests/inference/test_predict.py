"""``geopose predict``: submissions round-tripped through validate/evaluate, resumable runs,
GSD/city discovery, GeoTIFF georeference kept, YAML ensembles, 2-process sharded runs."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from geopose.cli.main import main
from geopose.geometry import angle_error_deg, flow_from_agl
from geopose.inference import Predictor, resolve_jobs
from geopose.io import CITIES, Georef, georef_gsd, read_agl, read_rgb, read_vflow, write_rgb
from geopose.metrics import evaluate_folders
from geopose.models import create_model, load_recipe
from geopose.models.loading import read_ensemble_spec, resolve_models


def recipe() -> dict:
    """cpu_small with a softplus AGL output and a pooled direction head: random weights then
    give positive heights (not clipped to 0 m) and image-dependent angles (an untrained ramp
    head has no facades to read), so the output files carry information."""
    cfg = load_recipe("cpu_small")
    cfg["model"]["agl"]["out_activation"] = "softplus"
    cfg["model"]["direction"] = {"kind": "pooled"}
    return cfg


def save_checkpoint(path: Path, seed: int) -> Path:
    """A Lightning-format checkpoint of a randomly initialised model."""
    torch.manual_seed(seed)
    model = create_model(recipe())
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": recipe()}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return [save_checkpoint(d / "a.ckpt", 0), save_checkpoint(d / "b.ckpt", 1)]


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run ``geopose ...`` in-process -> (exit code, stdout + stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def test_submission_round_trip(tmp_path, capsys, ckpts, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=2, n_test=1, size=64)
    images, pred, tar = ds.root / "train", tmp_path / "pred", tmp_path / "sub.tar.gz"
    code, out = cli(capsys, "predict", ckpts[0], "--images", images, "--out", pred,
                    "--tta", "flip", "--tar", tar, "--device", "cpu")  # fmt: skip
    assert code == 0, out
    assert "2 predicted" in out and "validated" in out
    # The files hold what the predictor computed (AGL rounded to cm, angle, scale).
    predictor, _ = Predictor.from_checkpoints([(ckpts[0], 1.0)], tta="flip")
    for stem in ds.train:
        p = predictor.predict(read_rgb(ds.path(stem)), ds.gsd[stem], CITIES.index(stem[:3]))
        assert p.agl.min() > 0.1  # heights, not clipped zeros
        np.testing.assert_allclose(read_agl(pred / f"{stem}_AGL.tif"), p.agl, atol=0.0051)
        v = read_vflow(pred / f"{stem}_VFLOW.json")
        assert angle_error_deg(v.angle, p.angle) < 1e-6 and v.scale == pytest.approx(p.scale)
    # Archive: flat, the same files; evaluate scores the archive's contents like the folder.
    with tarfile.open(tar) as t:
        names = sorted(t.getnames())
        t.extractall(tmp_path / "unpacked", filter="data")
    assert names == sorted(p.name for p in pred.iterdir())
    direct = evaluate_folders(pred, images)
    unpacked = evaluate_folders(tmp_path / "unpacked", images)
    assert direct["images"] == 2 and direct["final"] == unpacked["final"]
    assert set(direct["cities"]) == {"JAX", "OMA"}


def test_resume_skips_valid_outputs_and_redoes_broken_ones(
    tmp_path, capsys, ckpts, make_fake_dataset
):
    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=3, size=64)
    args = ["predict", ckpts[0], "--images", ds.root / "test", "--out", tmp_path / "p",
            "--tta", "none"]  # fmt: skip
    assert cli(capsys, *args)[0] == 0
    files = sorted((tmp_path / "p").iterdir())
    stamp = {f: f.stat().st_mtime_ns for f in files}
    code, out = cli(capsys, *args)
    assert code == 0 and "0 predicted, 3 already done" in out
    assert all(f.stat().st_mtime_ns == stamp[f] for f in files)
    broken = tmp_path / "p" / f"{ds.test[1]}_VFLOW.json"
    broken.write_text("{")  # an interrupted or corrupt output
    code, out = cli(capsys, *args)
    assert code == 0 and "1 predicted, 2 already done" in out and "1 incomplete redone" in out
    read_vflow(broken)
    code, out = cli(capsys, *args, "--overwrite")
    assert code == 0 and "3 predicted" in out
    # An existing archive is not replaced without --overwrite.
    (tmp_path / "s.tar.gz").write_bytes(b"old")
    code, out = cli(capsys, *args, "--tar", tmp_path / "s.tar.gz")
    assert code == 1 and "exists already" in out and (tmp_path / "s.tar.gz").read_bytes() == b"old"


def test_gsd_and_city_discovery(tmp_path, capsys, ckpts):
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    folder = tmp_path / "imgs"
    write_rgb(folder / "JAX_x1_RGB.png", rgb)
    write_rgb(folder / "scene.png", rgb)
    code, out = cli(capsys, "predict", ckpts[0], "--images", folder, "--out", tmp_path / "o")
    assert code == 1 and "JAX_x1_RGB.png" in out and "--gsd" in out
    assert not (tmp_path / "o").exists()
    jobs = {j.stem: j for j in resolve_jobs(folder, gsd=0.4)}
    assert jobs["JAX_x1"].gsd == 0.4 and jobs["JAX_x1"].city == CITIES.index("JAX")
    assert jobs["scene"].city == -1
    assert resolve_jobs(folder, gsd=0.4, city="OMA")[0].city == CITIES.index("OMA")
    # metadata.csv in the parent folder wins over --gsd; ids may be bare or city-prefixed.
    (tmp_path / "metadata.csv").write_text("id,city,gsd\nx1,JAX,0.31\nscene,ATL,0.52\n")
    jobs = {j.stem: j for j in resolve_jobs(folder, gsd=0.4)}
    assert (jobs["JAX_x1"].gsd, jobs["scene"].gsd, jobs["scene"].city) == (0.31, 0.52, 1)
    code, out = cli(capsys, "predict", ckpts[0], "--images", folder, "--out", tmp_path / "o",
                    "--tta", "none")  # fmt: skip
    assert code == 0 and (tmp_path / "o" / "scene_VFLOW.json").is_file()


def test_geotiff_input_keeps_georeference(tmp_path, capsys, ckpts):
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    crs, transform = CRS.from_epsg(32615), Affine(0.5, 0, 500_000, 0, -0.5, 4_100_000)
    rgb = np.random.default_rng(1).integers(0, 256, (3, 64, 80), dtype=np.uint8)
    src = tmp_path / "geo" / "site.tif"
    src.parent.mkdir()
    with rasterio.open(src, "w", driver="GTiff", width=80, height=64, count=3, dtype="uint8",
                       crs=crs, transform=transform) as dst:  # fmt: skip
        dst.write(rgb)
    (job,) = resolve_jobs(src.parent)
    assert job.gsd == pytest.approx(0.5) and job.city == -1 and job.georef is not None
    code, out = cli(capsys, "predict", ckpts[0], "--images", src.parent, "--out", tmp_path / "o",
                    "--tta", "none")  # fmt: skip
    assert code == 0, out
    v = read_vflow(tmp_path / "o" / "site_VFLOW.json")
    with rasterio.open(tmp_path / "o" / "site_AGL.tif") as a:
        assert (a.crs, a.transform, a.count, a.dtypes[0]) == (crs, transform, 1, "float32")
        agl = a.read(1)
    with rasterio.open(tmp_path / "o" / "site_FLOW.tif") as f:
        assert (f.crs, f.transform, f.count, f.shape) == (crs, transform, 2, (64, 80))
        flow = f.read()
    want = flow_from_agl(agl, v.angle, v.scale)
    np.testing.assert_allclose(np.moveaxis(flow, 0, -1), want, rtol=1e-5, atol=1e-5)
    # A geographic CRS: degrees -> metres (cos(latitude) across).
    geo = Georef(CRS.from_epsg(4326), Affine(1e-5, 0, -90.0, 0, -1e-5, 60.0))
    assert georef_gsd(geo) == pytest.approx(
        0.5 * (1 + math.cos(math.radians(60))) * 1.1132, rel=1e-3
    )
    # GeoTIFF outputs are not a competition submission.
    code, out = cli(capsys, "predict", ckpts[0], "--images", src.parent, "--out", tmp_path / "o",
                    "--tar", tmp_path / "s.tar.gz")  # fmt: skip
    assert code == 1 and "site.tif" in out and "--tar" in out


def test_ensemble_spec(tmp_path, capsys, ckpts):
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_rgb(tmp_path / "imgs" / "JAX_e_RGB.png", rgb)
    spec = tmp_path / "ens.yaml"
    spec.write_text(f"members:\n  - checkpoint: {ckpts[0]}\n    weight: 3\n  - {ckpts[1].name}\n")
    (tmp_path / ckpts[1].name).write_bytes(ckpts[1].read_bytes())  # relative to the spec
    assert [w for _, w in read_ensemble_spec(spec)] == [3.0, 1.0]
    code, out = cli(capsys, "predict", "--ensemble", spec, "--images", tmp_path / "imgs",
                    "--out", tmp_path / "o", "--tta", "none", "--gsd", "0.5")  # fmt: skip
    assert code == 0 and "2 model(s)" in out
    models = [create_model(recipe()) for _ in ckpts]
    for m, c in zip(models, ckpts, strict=True):
        m.load_state_dict({k[6:]: v for k, v in torch.load(c)["state_dict"].items()})
    want = Predictor(models, [3, 1], tta="none").predict(rgb, 0.5, CITIES.index("JAX"))
    single = Predictor(models[:1], tta="none").predict(rgb, 0.5, CITIES.index("JAX"))
    got = read_vflow(tmp_path / "o" / "JAX_e_VFLOW.json")
    assert angle_error_deg(got.angle, want.angle) < 1e-6 and got.scale == pytest.approx(want.scale)
    np.testing.assert_allclose(read_agl(tmp_path / "o" / "JAX_e_AGL.tif"), want.agl, atol=0.0051)
    assert np.abs(want.agl - single.agl).max() > 0.05  # the second member mattered
    assert angle_error_deg(want.angle, single.angle) > 1
    spec.write_text("members:\n  - missing.ckpt\n")
    code, out = cli(capsys, "predict", "--ensemble", spec, "--images", tmp_path / "imgs",
                    "--out", tmp_path / "o2", "--gsd", "0.5")  # fmt: skip
    assert code == 1 and "missing.ckpt" in out and "not found" in out


@pytest.mark.slow
def test_two_process_gloo_run_writes_each_output_once(tmp_path, ckpts, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=5, size=64)
    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "geopose.cli.main", "predict", str(ckpts[0]), "--images", str(ds.root / "test"),
           "--out", str(out), "--tta", "none", "--device", "cpu",
           "--tar", str(tmp_path / "s.tar.gz")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log
    written = {int(r): int(n) for r, n in re.findall(r"rank (\d): (\d+) written", res.stdout)}
    assert sorted(written) == [0, 1] and written == {0: 3, 1: 2}, log  # stems[r::2]
    assert res.stdout.count("5 image(s)") == 1  # one summary, from rank 0
    # 5 images written in all and all 10 files there: no image was written by both ranks.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_{k}" for s in ds.test for k in ("AGL.tif", "VFLOW.json")
    )
    assert "validated" in res.stdout


# --- the library call behind `geopose predict` -----------------------------------------------


def test_run_predict_resolves_models_tta_and_device_and_reports_one_progress(
    tmp_path, ckpts, make_fake_dataset
):
    """``run_predict`` takes the models as the command does (files + an ensemble YAML), picks
    the TTA and the device, and reports images through one ProgressFn."""
    from geopose.inference.run import run_predict

    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=2, size=64)
    spec = tmp_path / "ens.yaml"
    spec.write_text(f"members:\n  - checkpoint: {ckpts[1]}\n    weight: 3\n")
    calls = []
    report = run_predict(
        [str(ckpts[0])],
        ds.root / "test",
        tmp_path / "p",
        ensemble=spec,
        on_progress=lambda *c: calls.append(c),
    )
    assert report.members == [(str(ckpts[0]), 1.0), (ckpts[1], 3.0)]
    assert report.tta == "none"  # cpu_small trains without D4 turns (learned_tta)
    assert report.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert calls == [("images", 0, 2), ("images", 1, 2), ("images", 2, 2)]
    assert len(report.written) == 2


def test_resolve_members_and_choices_are_one_line_errors(tmp_path, ckpts, monkeypatch):
    from geopose.errors import ConfigError, GeoposeDataError
    from geopose.inference import run
    from geopose.inference.tta import choose_tta

    specs = resolve_models([ckpts[0], (ckpts[1], 2.0)])
    assert specs.members == ((ckpts[0], 1.0), (ckpts[1], 2.0)) and specs.authors_tta is None
    with pytest.raises(ConfigError, match="give at least one model"):
        resolve_models([])
    with pytest.raises(GeoposeDataError, match="no such model file"):
        resolve_models([tmp_path / "missing.ckpt"])
    assert choose_tta(None).mode == "d4"
    assert choose_tta(None, "d2").mode == "d2" and choose_tta("flip", "d2").mode == "flip"
    with pytest.raises(ConfigError, match="--tta must be one of none, flip, d2, d4, got 'x'"):
        choose_tta("x")
    no_d4 = [{"data": {"aug": "none", "d4": False}}]
    assert choose_tta(None, None, no_d4) == choose_tta("none", None, no_d4)  # no warning
    turned = choose_tta("d4", None, no_d4)
    assert turned.mode == "d4" and "trained without D4" in turned.warning
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run.choose_device(None) == "cpu" and run.choose_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        run.choose_device("cuda")
    # Checked before anything is written.
    with pytest.raises(ConfigError, match="--tta"):
        run.run_predict([ckpts[0]], tmp_path, tmp_path / "never", tta="d8")
    assert not (tmp_path / "never").exists()


def test_run_predict_names_scene_stages_by_stem():
    from geopose.inference.run import scene_stage

    assert scene_stage("JAX_1", "flow") == "JAX_1: flow"


def test_default_tta_is_the_one_the_models_were_trained_for(tmp_path, ckpts, make_fake_dataset):
    """No --tta: D4 for models trained on D4-turned crops, none when a member was trained
    without them (cpu_small: its direction is learned in the images' own orientation); an
    asked TTA wins; configs without a data section (published models) count as D4."""
    from geopose.inference.run import run_predict
    from geopose.inference.tta import learned_tta

    turned = tmp_path / "turned.ckpt"
    state = torch.load(ckpts[0], weights_only=True)
    state["hyper_parameters"]["config"]["data"]["d4"] = True
    torch.save(state, turned)
    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=1, size=64)
    runs = {"own": [ckpts[0]], "turned": [turned], "mixed": [turned, ckpts[1]]}
    got = {
        name: run_predict([str(m) for m in models], ds.root / "test", tmp_path / name).tta
        for name, models in runs.items()
    }
    assert got == {"own": "none", "turned": "d4", "mixed": "none"}
    asked = run_predict([str(ckpts[0])], ds.root / "test", tmp_path / "asked", tta="flip")
    assert asked.tta == "flip" and "trained without D4" in asked.warnings[0]
    own = run_predict([str(turned)], ds.root / "test", tmp_path / "flip", tta="flip")
    assert own.tta == "flip" and own.warnings == []  # trained with turns: no warning
    done = run_predict([str(turned)], ds.root / "test", tmp_path / "flip")
    assert done.tta is None and done.skipped  # nothing to predict: no model loaded, no TTA
    assert learned_tta([{"data": {"aug": "heavy"}}, {"model": {}}]) == "d4"
    assert learned_tta([{"data": {"aug": "none"}}]) == "none"
    assert learned_tta([{"data": {"aug": "none", "geometric": "light"}}]) == "d4"
    assert learned_tta([]) == "d4"
