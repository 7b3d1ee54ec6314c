"""Scene prediction (``geopose.inference.scene``): multi-band 16-bit georeferenced scenes of any
size predicted window by window in bounded memory, into COGs.

Windowed equals whole (AGL to float rounding, pose exactly when there is no nodata), nodata in
gives NaN out, CRS and transform kept, COG layout with overviews, the band choice reaches the
model, VRT mosaics, the no-evidence rule, resuming after the model pass, windowed rectification
equals whole rectification pixel for pixel, the CLI end to end (predict, re-run, rectify, show),
and the numpy memory of a scene 4 tiles wide staying at a band of tiles whatever its height.
"""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window
from torch import nn

from geopose.cli.main import main
from geopose.geometry import flow_from_agl
from geopose.inference import Predictor, resolve_jobs
from geopose.inference.scene import (
    PoseVote,
    pose_name,
    predict_scene,
    scene_done,
    scene_output_paths,
)
from geopose.io import read_vflow, write_rgb
from geopose.io.cog import is_cog
from geopose.io.scene import Scene
from geopose.models import GeoposeOutput, create_model, load_recipe
from geopose.rectify import rectify, rectify_windowed
from geopose.viz.figures import read_scene_for_figure

CRS_UTM = CRS.from_epsg(32617)
TRANSFORM = Affine(0.3, 0, 500_000, 0, -0.3, 4_000_000)
BORDER = 24  # px of nodata on the top and left edges of the test scenes


# --- inputs ---------------------------------------------------------------------------------


def scene_data(h: int, w: int, seed: int = 0, border: int = BORDER) -> np.ndarray:
    """4×h×w uint16 12-bit DN: smooth colour fields with bright blocks, a NIR-like 4th band,
    and a nodata (0) border on the top and left edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    data = np.empty((4, h, w), np.float32)
    for b in range(4):
        fx, fy, ph = rng.uniform(0.005, 0.03, 2).tolist() + [rng.uniform(0, 6)]
        data[b] = 1200 + 700 * np.sin(fx * xx + ph) * np.cos(fy * yy)
    for _ in range(max(4, h * w // 6000)):
        r, c = rng.integers(0, h - 12), rng.integers(0, w - 12)
        data[:, r : r + 12, c : c + 12] = rng.uniform(300, 4000, (4, 1, 1))
    data += rng.normal(0, 40, data.shape)
    out = np.clip(data, 1, 4095).astype(np.uint16)
    out[:, :border, :] = 0
    out[:, :, :border] = 0
    return out


def write_scene(path: Path, data: np.ndarray, transform: Affine = TRANSFORM, **kw) -> Path:
    """A tiled, deflate GeoTIFF of ``data`` (bands×h×w) with nodata 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, crs=CRS_UTM, transform=transform, nodata=0,
                   tiled=True, blockxsize=128, blockysize=128, compress="deflate")  # fmt: skip
    profile.update(kw)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_vrt_mosaic(path: Path, left: Path, right: Path, h: int, w_left: int, w_right: int):
    """A VRT placing two 4-band uint16 tiles side by side (GDAL's XML, as gdalbuildvrt does)."""
    bands = []
    for b in range(1, 5):
        sources = "".join(
            f"<SimpleSource><SourceFilename>{src.resolve()}"
            f"</SourceFilename><SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{sw}" ySize="{h}"/>'
            f'<DstRect xOff="{off}" yOff="0" xSize="{sw}" ySize="{h}"/></SimpleSource>'
            for src, sw, off in ((left, w_left, 0), (right, w_right, w_left))
        )
        bands.append(f'<VRTRasterBand dataType="UInt16" band="{b}"><NoDataValue>0</NoDataValue>'
                     f"{sources}</VRTRasterBand>")  # fmt: skip
    t = TRANSFORM
    path.write_text(
        f'<VRTDataset rasterXSize="{w_left + w_right}" rasterYSize="{h}">'
        f"<SRS>{CRS_UTM.to_wkt()}</SRS>"
        f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>"
        + "".join(bands)
        + "</VRTDataset>"
    )
    return path


# --- models ---------------------------------------------------------------------------------


def recipe() -> dict:
    """cpu_small with softplus heights and a pooled direction head (as
    tests/inference/test_predict.py): random weights give positive, colour-dependent heights and
    image-dependent angles."""
    cfg = load_recipe("cpu_small")
    cfg["model"]["agl"]["out_activation"] = "softplus"
    cfg["model"]["direction"] = {"kind": "pooled"}
    return cfg


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model(recipe()).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = create_model(recipe())
    path = tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    state = {f"model.{k}": v for k, v in m.state_dict().items()}
    torch.save({"hyper_parameters": {"config": recipe()}, "state_dict": state}, path)
    return path


class Local(nn.Module):
    """A fast, local stand-in model: heights from a 3×3 conv of the colours (m), a fixed
    direction (or none: (0, 0)) and a fixed scale."""

    def __init__(self, direction: tuple[float, float] = (0.6, 0.8)) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.direction = torch.tensor(direction)

    def forward(self, image, gsd, city):
        agl = 20 * torch.sigmoid(self.conv(image))
        d = self.direction.to(image.device).expand(image.shape[0], 2)
        return GeoposeOutput(agl, agl, d, torch.full((image.shape[0],), 1.5))


# --- one scene predicted once, checked many ways -----------------------------------------------


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, model):
    """A 600×500 4-band uint16 scene with a nodata border, predicted with tiles of 256 px
    (bands 3,2,1, p2-98 stretch, flip TTA, rectified), and the reference: Predictor.predict of
    the whole stretched image with the same tiles."""
    root = tmp_path_factory.mktemp("scene")
    src = write_scene(root / "img" / "site.tif", scene_data(500, 600))
    predictor = Predictor([model], tta="flip", tile_size=256)
    with Scene(src, bands=(3, 2, 1), stretch="p2-98") as scene:
        result = predict_scene(predictor, scene, root / "out", "site", tile=256, overlap=64,
                               rectify=True)  # fmt: skip
        rgb, valid = scene.read(Window(0, 0, 600, 500))
    whole = predictor.predict(rgb, scene.gsd, -1)
    return root / "out", result, whole, rgb, valid, predictor


def test_windowed_agl_equals_whole_image_prediction(predicted):
    out, result, whole, _, valid, _ = predicted
    assert (result.tiles, result.empty_tiles) == (9, 0)
    with rasterio.open(out / "site_AGL.tif") as src:
        agl = src.read(1)
        assert (src.dtypes[0], src.count, math.isnan(src.nodata)) == ("float32", 1, True)
    np.testing.assert_allclose(agl[valid], whole.agl[valid], rtol=1e-5, atol=1e-5)
    assert agl[valid].min() > 0.1  # real heights, not clipped zeros
    # The pose: tiles vote by their valid window area (the whole-image path weights the
    # nodata border too), so it is close to, not equal to, the whole image's.
    assert result.direction_known
    assert abs(math.remainder(result.angle - whole.angle, math.tau)) < math.radians(0.5)
    assert result.scale == pytest.approx(whole.scale, rel=1e-3)
    assert result.max_agl == pytest.approx(float(np.nanmax(agl)), rel=1e-6)


def test_nodata_in_gives_nan_out(predicted):
    out, _, _, _, valid, _ = predicted
    assert not valid[:BORDER].any() and not valid[:, :BORDER].any()
    assert valid[BORDER:, BORDER:].all()
    for name in ("AGL", "FLOW"):
        with rasterio.open(out / f"site_{name}.tif") as src:
            data = src.read()
        assert np.isnan(data[:, ~valid]).all() and np.isfinite(data[:, valid]).all(), name


def test_outputs_keep_the_georeference_and_are_cogs_with_overviews(predicted):
    out, result, _, _, _, _ = predicted
    names = ["AGL", "FLOW", "NADIR_RGB", "NADIR_AGL", "OCCLUDED"]
    for name in names:
        path = out / f"site_{name}.tif"
        assert is_cog(path), name
        with rasterio.open(path) as src:
            assert (src.crs, src.transform, src.shape) == (CRS_UTM, TRANSFORM, (500, 600)), name
            assert src.block_shapes[0] == (512, 512) and src.overviews(1) == [2], name
    assert set(result.paths) == {"agl", "flow", "nadir_rgb", "nadir_agl", "nadir_occluded",
                                 "vflow"}  # fmt: skip
    assert list(result.paths)[-1] == "vflow" and not (out / pose_name("site")).exists()
    v = read_vflow(out / "site_VFLOW.json")
    assert (v.angle, v.scale) == pytest.approx((result.angle, result.scale))


def test_flow_is_agl_times_scale_along_the_angle(predicted):
    out, result, _, _, _, _ = predicted
    with rasterio.open(out / "site_AGL.tif") as a, rasterio.open(out / "site_FLOW.tif") as f:
        agl, flow = a.read(1), f.read()
        assert f.descriptions == ("dx", "dy")
    want = np.moveaxis(flow_from_agl(agl, result.angle, result.scale), -1, 0)
    np.testing.assert_allclose(flow, want, rtol=1e-6, atol=1e-6)


def test_windowed_rectification_equals_whole(predicted):
    out, result, _, rgb, _, _ = predicted
    with rasterio.open(out / "site_AGL.tif") as src:
        agl = src.read(1)
    whole = rectify(rgb, agl, result.angle, result.scale)
    with rasterio.open(out / "site_NADIR_AGL.tif") as src:
        np.testing.assert_array_equal(src.read(1), whole.agl)  # NaN where occluded, both
    with rasterio.open(out / "site_NADIR_RGB.tif") as src:
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, -1), whole.rgb)
    with rasterio.open(out / "site_OCCLUDED.tif") as src:
        np.testing.assert_array_equal(src.read(1) == 255, whole.occluded)


def test_windowed_rectification_with_a_large_flow_and_small_windows(tmp_path):
    """Windows of 64 px, flows up to 60 px in both axes: the halo carries every pixel in."""
    rng = np.random.default_rng(3)
    h, w = 300, 260
    agl = np.zeros((h, w), np.float32)
    for _ in range(40):
        r, c = rng.integers(0, h - 20), rng.integers(0, w - 20)
        agl[r : r + rng.integers(4, 20), c : c + rng.integers(4, 20)] = rng.uniform(2, 30)
    agl[rng.random((h, w)) < 0.01] = np.nan
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    agl_path = write_scene(tmp_path / "a.tif", agl[None], nodata=float("nan"))
    img_path = write_scene(tmp_path / "i.tif", np.moveaxis(rgb, -1, 0), nodata=None)
    angle, scale = 2.3, 2.0
    with Scene(img_path) as scene:
        paths = rectify_windowed(agl_path, angle, scale, tmp_path / "r", "x", scene=scene,
                                 window=64, blocksize=32)  # fmt: skip
    whole = rectify(rgb, agl, angle, scale)
    with rasterio.open(paths["agl"]) as a, rasterio.open(paths["rgb"]) as b:
        np.testing.assert_array_equal(a.read(1), whole.agl)
        np.testing.assert_array_equal(np.moveaxis(b.read(), 0, -1), whole.rgb)
    assert whole.occluded.mean() > 0.01  # the test has occlusions to get right


# --- pose, bands, VRT, resume -----------------------------------------------------------------


def test_pose_equals_the_whole_image_without_nodata(tmp_path, model):
    """Without nodata the tile votes weigh like predict_tiled's; small blocks make the band
    accumulator flush and shift many times on the way."""
    src = write_scene(tmp_path / "s.tif", scene_data(300, 420, seed=4, border=0))
    predictor = Predictor([model], tta="none", tile_size=160)
    with Scene(src) as scene:
        res = predict_scene(predictor, scene, tmp_path / "o", "s", tile=160, overlap=40,
                            blocksize=32)  # fmt: skip
        rgb, _ = scene.read(Window(0, 0, 420, 300))
    whole = predictor.predict(rgb, scene.gsd)
    assert res.tiles == 3 * 4
    assert res.angle == pytest.approx(whole.angle, abs=1e-5)
    assert res.scale == pytest.approx(whole.scale, rel=1e-5)
    with rasterio.open(res.paths["agl"]) as src:
        assert src.block_shapes[0] == (32, 32)
        np.testing.assert_allclose(src.read(1), whole.agl, rtol=1e-5, atol=1e-5)


def test_pose_vote_rule():
    vote = PoseVote()
    assert vote.result() == (0.0, 0.0, False)  # nothing voted: zero flow
    assert not vote.add(np.zeros(2), 5.0, 100.0)  # no evidence: no vote, not even for scale
    assert vote.result() == (0.0, 0.0, False)
    vote.add(np.array([1.0, 0.0]), 2.0, 3.0)  # angle π/2
    vote.add(np.array([0.0, 1.0]), 4.0, 1.0)  # angle 0
    angle, scale, known = vote.result()
    assert known and scale == pytest.approx((3 * 2 + 4) / 4)
    assert angle == pytest.approx(math.atan2(3, 1))


def test_no_direction_evidence_writes_zero_flow(tmp_path):
    src = write_scene(tmp_path / "s.tif", scene_data(200, 200, seed=5))
    with Scene(src) as scene:
        res = predict_scene(Predictor([Local((0.0, 0.0))], tta="flip"), scene, tmp_path / "o",
                            "s", tile=128, overlap=32)  # fmt: skip
    assert (res.angle, res.scale, res.direction_known) == (0.0, 0.0, False)
    v = read_vflow(tmp_path / "o" / "s_VFLOW.json")
    assert (v.angle, v.scale) == (0.0, 0.0)
    with rasterio.open(tmp_path / "o" / "s_FLOW.tif") as f:
        flow = f.read()
    assert np.nanmax(np.abs(flow)) == 0 and np.isnan(flow).any()  # zero, NaN on nodata


def test_all_nodata_tiles_are_skipped(tmp_path):
    data = scene_data(256, 512, seed=6)
    data[:, :, 256:] = 0  # the right half: nodata
    src = write_scene(tmp_path / "s.tif", data)
    with Scene(src) as scene:
        res = predict_scene(Predictor([Local()], tta="none"), scene, tmp_path / "o", "s",
                            tile=128, overlap=32)  # fmt: skip
    with rasterio.open(tmp_path / "o" / "s_AGL.tif") as a:
        agl = a.read(1)
    assert res.empty_tiles == 3 * 2 and res.tiles == 3 * 3  # columns from 288 and 384 empty
    assert np.isnan(agl[:, 256:]).all() and np.isfinite(agl[BORDER:, BORDER:256]).all()


def test_bands_choose_what_the_model_sees(tmp_path, model):
    src = write_scene(tmp_path / "s.tif", scene_data(200, 200, seed=7))
    predictor = Predictor([model], tta="none")
    agl = {}
    for bands in ((1, 2, 3), (3, 2, 1), (4, 3, 2)):
        with Scene(src, bands=bands) as scene:
            predict_scene(predictor, scene, tmp_path / str(bands), "s", tile=256)
        with rasterio.open(tmp_path / str(bands) / "s_AGL.tif") as a:
            agl[bands] = a.read(1)
    ok = np.isfinite(agl[(1, 2, 3)])
    for other in ((3, 2, 1), (4, 3, 2)):
        assert np.abs(agl[other][ok] - agl[(1, 2, 3)][ok]).mean() > 1e-3, other


def test_rerun_skips_and_a_kill_after_the_model_pass_resumes(tmp_path, monkeypatch):
    import geopose.inference.scene as scene_mod

    src = write_scene(tmp_path / "s.tif", scene_data(200, 260, seed=8))
    out = tmp_path / "o"
    predictor = Predictor([Local()], tta="none")

    def killed(*a, **k):
        raise KeyboardInterrupt  # killed while writing the flow

    monkeypatch.setattr(scene_mod, "write_flow", killed)
    with Scene(src) as scene, pytest.raises(KeyboardInterrupt):
        predict_scene(predictor, scene, out, "s", tile=128, overlap=32)
    assert (out / "s_AGL.tif").is_file() and (out / pose_name("s")).is_file()
    assert not (out / "s_FLOW.tif").exists() and not scene_done(out, "s")
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written
    monkeypatch.undo()

    def no_model(*a, **k):
        raise AssertionError("the model pass was done already")

    monkeypatch.setattr(predictor, "predict_tiles", no_model)
    with Scene(src) as scene:
        res = predict_scene(predictor, scene, out, "s", tile=128, overlap=32)
    assert scene_done(out, "s") and not (out / pose_name("s")).exists()
    assert res.direction_known and res.scale == pytest.approx(1.5)
    stamps = {p: p.stat().st_mtime_ns for p in scene_output_paths(out, "s").values()}
    with Scene(src) as scene:
        again = predict_scene(predictor, scene, out, "s", tile=128, overlap=32)
    assert again.skipped and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_a_vrt_mosaic_reads_like_one_geotiff(tmp_path):
    data = scene_data(180, 300, seed=9)
    one = write_scene(tmp_path / "one.tif", data)
    left = write_scene(tmp_path / "tiles" / "l.tif", data[:, :, :140])
    right = write_scene(tmp_path / "tiles" / "r.tif", data[:, :, 140:],
                        transform=TRANSFORM @ Affine.translation(140, 0))  # fmt: skip
    vrt = write_vrt_mosaic(tmp_path / "mosaic.vrt", left, right, 180, 140, 160)
    with Scene(vrt, bands=(3, 2, 1)) as a, Scene(one, bands=(3, 2, 1)) as b:
        assert (a.georef, a.gsd) == (b.georef, b.gsd) and a.stretch == b.stretch
        for win in (Window(0, 0, 300, 180), Window(100, 30, 90, 70)):
            ra, rb = a.read(win), b.read(win)
            np.testing.assert_array_equal(ra[0], rb[0])
            np.testing.assert_array_equal(ra[1], rb[1])


# --- job discovery, CLI -------------------------------------------------------------------


def test_which_images_are_scenes(tmp_path):
    """One rule for predict, rectify and show (``geopose.io.inputs.is_scene``)."""
    from geopose.io.inputs import SCENE_SIDE, WHOLE_SIDE, is_scene, prediction_is_scene

    folder = tmp_path / "imgs"
    write_scene(folder / "multi.tif", scene_data(64, 64))  # 4-band uint16, georeferenced
    rgb8 = np.random.default_rng(0).integers(0, 256, (3, 64, 80), dtype=np.uint8)
    write_scene(folder / "small.tif", rgb8, nodata=None)  # 8-bit RGB GeoTIFF
    big = np.zeros((3, 16, SCENE_SIDE + 1), np.uint8)
    write_scene(folder / "big.tif", big, nodata=None)  # georeferenced, above SCENE_SIDE
    write_rgb(folder / "plain.png", np.moveaxis(rgb8, 0, -1))
    write_rgb(folder / "wide.png", np.zeros((16, SCENE_SIDE + 1, 3), np.uint8))
    write_rgb(folder / "huge.png", np.zeros((16, WHOLE_SIDE + 1, 3), np.uint8))
    (folder / "mosaic.vrt").write_text(_vrt_of(folder / "multi.tif", 64, 64))
    jobs = {j.stem: j for j in resolve_jobs(folder, gsd=0.5)}
    assert {s: j.scene for s, j in jobs.items()} == {
        "big": True, "huge": True, "mosaic": True, "multi": True, "plain": False,
        "small": False, "wide": False,
    }  # fmt: skip
    assert jobs["mosaic"].gsd == pytest.approx(0.3) and jobs["mosaic"].georef is not None
    for stem, job in jobs.items():  # rectify and show decide the same, image or AGL alone
        assert prediction_is_scene(job.path, tmp_path / "none") == job.scene, stem
    agl = np.zeros((1, 16, SCENE_SIDE + 1), np.float32)
    write_scene(tmp_path / "agl_geo.tif", agl, nodata=None)
    assert prediction_is_scene(None, tmp_path / "agl_geo.tif")  # as the image it came from
    write_scene(tmp_path / "agl_small.tif", agl[:, :, :64], nodata=None)
    assert not prediction_is_scene(None, tmp_path / "agl_small.tif")  # 1 band: an AGL, not RGB
    assert is_scene(tmp_path / "agl_small.tif")  # as an image, one band is not RGB
    jobs = {j.stem: j for j in resolve_jobs(folder, gsd=0.5, stretch="p2-98")}
    assert all(j.scene for j in jobs.values())  # --bands / --stretch: every image
    jobs = {j.stem: j for j in resolve_jobs(folder, gsd=0.5, rectify=True)}
    assert jobs["small"].scene and not jobs["plain"].scene


def _vrt_of(src: Path, h: int, w: int) -> str:
    """A VRT of all 4 bands of one GeoTIFF (absolute path)."""
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{b}"><NoDataValue>0</NoDataValue><SimpleSource>'
        f"<SourceFilename>{src}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource>"
        "</VRTRasterBand>"
        for b in range(1, 5)
    )
    t = TRANSFORM
    return (
        f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{CRS_UTM.to_wkt()}</SRS>'
        f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{bands}</VRTDataset>"
    )


def cli(capsys, *args) -> tuple[int, str]:
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_end_to_end_vrt_bands_stretch_rectify_rerun_show(tmp_path, capsys, ckpt):
    data = scene_data(300, 420, seed=10)
    images = tmp_path / "images"
    left = write_scene(tmp_path / "tiles" / "l.tif", data[:, :, :200])
    right = write_scene(tmp_path / "tiles" / "r.tif", data[:, :, 200:],
                        transform=TRANSFORM @ Affine.translation(200, 0))  # fmt: skip
    images.mkdir()
    write_vrt_mosaic(images / "strip.vrt", left, right, 300, 200, 220)
    out = tmp_path / "pred"
    args = ["predict", ckpt, "--images", images, "--out", out, "--bands", "3,2,1",
            "--stretch", "p2-98", "--rectify", "--scene-tile", "256", "--tta", "none",
            "--device", "cpu"]  # fmt: skip
    code, text = cli(capsys, *args)
    assert code == 0, text
    assert "1 image(s): 1 predicted" in text
    for name in ("AGL", "FLOW", "NADIR_RGB", "NADIR_AGL", "OCCLUDED"):
        with rasterio.open(out / f"strip_{name}.tif") as src:
            assert (src.crs, src.transform, src.shape) == (CRS_UTM, TRANSFORM, (300, 420))
        assert is_cog(out / f"strip_{name}.tif")
    # The same as predict_scene with those settings.
    predictor, _ = Predictor.from_checkpoints([(ckpt, 1.0)], tta="none")
    with Scene(images / "strip.vrt", bands=(3, 2, 1), stretch="p2-98") as scene:
        res = predict_scene(predictor, scene, tmp_path / "direct", "strip", tile=256, overlap=32)
    with rasterio.open(out / "strip_AGL.tif") as a, rasterio.open(res.paths["agl"]) as b:
        np.testing.assert_allclose(a.read(1), b.read(1), rtol=1e-6, atol=1e-6)
    v = read_vflow(out / "strip_VFLOW.json")
    assert v.angle == pytest.approx(res.angle, abs=1e-9) and v.scale == pytest.approx(res.scale)
    # A re-run skips the scene and rewrites nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    code, text = cli(capsys, *args)
    assert code == 0 and "0 predicted, 1 already done" in text, text
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # geopose rectify on the prediction gives the nadir views predict --rectify wrote.
    code, text = cli(capsys, "rectify", "--pred", out, "--images", images, "--out",
                     tmp_path / "rect", "--bands", "3,2,1", "--stretch", "p2-98")  # fmt: skip
    assert code == 0, text
    for name in ("NADIR_RGB", "NADIR_AGL", "OCCLUDED"):
        here, there = out / f"strip_{name}.tif", tmp_path / "rect" / f"strip_{name}.tif"
        with rasterio.open(here) as a, rasterio.open(there) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    # geopose show reads the scene (16-bit, 4 bands) through the same band choice.
    code, text = cli(capsys, "show", "--pred", out, "--images", images, "--out",
                     tmp_path / "figs", "--bands", "3,2,1")  # fmt: skip
    assert code == 0, text
    assert (tmp_path / "figs" / "strip_figure.png").stat().st_size > 10_000
    # Bad options are one error line.
    code, text = cli(capsys, *args[:-2], "--bands", "3,x")
    assert code == 1 and "--bands" in text and "Traceback" not in text
    code, text = cli(capsys, *args, "--stretch", "p98")
    assert code == 1 and "--stretch" in text


def test_run_predict_reports_scene_stages_by_stem(tmp_path, ckpt):
    """One ProgressFn: the image count, then each scene's stages named ``"{stem}: stage"``."""
    from geopose.inference.run import run_predict

    images = tmp_path / "images"
    write_scene(images / "site.tif", scene_data(200, 260, seed=3))
    calls = []
    report = run_predict([ckpt], images, tmp_path / "out", tta="none", device="cpu",
                         bands=(3, 2, 1), rectify=True, scene_tile=128,
                         on_progress=lambda *c: calls.append(c))  # fmt: skip
    assert report.written == ["site"]
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["images", "site: predict", "site: flow", "site: rectify"]
    assert calls[0] == ("images", 0, 1) and calls[-1] == ("images", 1, 1)


def test_decimated_figure_input_of_a_scene(predicted):
    out, result, _, _, _, _ = predicted
    rgb, agl, factor = read_scene_for_figure(None, out / "site_AGL.tif", max_side=256)
    assert rgb is None and agl.shape == (167, 200) and factor == pytest.approx(200 / 600)


# --- memory ---------------------------------------------------------------------------------


def _numpy_peak(
    tmp_path: Path, h: int, w: int, tile: int, threads: bool = False
) -> tuple[int, int]:
    """Peak bytes of Python/numpy allocations (tracemalloc) while predicting an h×w scene with
    ``tile``-px tiles and blocks, and the number of tiles. Without the reader and writer
    threads by default: with them, how many queued tiles and strips are alive at the peak
    depends on the machine's load (bounded by the queues' depth)."""
    src = write_scene(tmp_path / f"{h}x{w}.tif", scene_data(h, w, seed=11))
    predictor = Predictor([Local()], tta="none", max_batch=1)
    with Scene(src) as scene:
        tracemalloc.start()
        try:
            res = predict_scene(predictor, scene, tmp_path / f"o{h}", "s", tile=tile,
                                overlap=tile // 8, blocksize=tile, threads=threads)  # fmt: skip
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return peak, res.tiles + res.empty_tiles


def test_memory_is_a_band_of_tiles_whatever_the_scene_height(tmp_path):
    """numpy's allocations (tracemalloc: torch's own are not counted) for a scene 4 tiles wide
    stay within a few times the band accumulator (tile + block rows × the width, float32),
    whatever the scene's height: at 16 tiles tall, below half of one full-scene float32 map."""
    tile = 128
    w = 4 * tile
    band = (tile + tile) * w * 4  # the accumulator: 2 rows of float32 tiles
    peaks = {}
    for h in (4 * tile, 16 * tile):
        peaks[h], n_tiles = _numpy_peak(tmp_path, h, w, tile)
        assert n_tiles == math.ceil((h - 16) / (tile - 16)) * 5
    assert peaks[4 * tile] < 4 * band, peaks
    assert peaks[16 * tile] < 1.1 * peaks[4 * tile], peaks  # the height does not count
    assert peaks[16 * tile] < 0.5 * (16 * tile * w * 4), peaks
    # with the threads: at most the queues' few tiles and strips more, whatever the load
    threaded, _ = _numpy_peak(tmp_path / "t", 16 * tile, w, tile, threads=True)
    assert threaded < peaks[16 * tile] + 3 * band, (threaded, peaks)
