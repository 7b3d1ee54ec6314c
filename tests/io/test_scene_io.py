"""Scene I/O: satellite products (16-bit, 4/8 bands, nodata borders; GeoTIFF, VRT, JPEG 2000,
PNG) read window by window as uint8 RGB, and block-written COG outputs (geopose.io.scene,
geopose.io.cog). Every raster is made here with rasterio."""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window

from geopose.errors import ConfigError, GeoposeDataError, OutputExistsError, OutputPathError
from geopose.io import (
    BlockWriter,
    Georef,
    Scene,
    Stretch,
    compute_stretch,
    default_bands,
    is_cog,
    parse_bands,
)
from geopose.io import cog as cog_module
from geopose.io.cog import has_cog_driver, overview_factors
from geopose.synth import make_scene, render

UTM = CRS.from_epsg(32616)
GSD = 0.5
TRANSFORM = from_origin(500_000.0, 4_000_000.0, GSD, GSD)
IDENTITY = Stretch((0.0,) * 3, (4095.0,) * 3)  # 12-bit DN -> 0..255, for exact comparisons


def write_tif(path: Path, data: np.ndarray, georef: bool = True, **profile) -> Path:
    """Write band-first ``data`` as a GeoTIFF (UTM, 0.5 m) with extra ``profile`` keys."""
    prof = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
    )
    if georef:
        prof.update(crs=UTM, transform=TRANSFORM)
    colorinterp = profile.pop("colorinterp", None)
    descriptions = profile.pop("descriptions", None)
    prof.update(profile)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        if colorinterp is not None:
            dst.colorinterp = colorinterp
        for i, d in enumerate(descriptions or (), 1):
            dst.set_band_description(i, d)
    return path


def product(h: int = 64, w: int = 80, border: int = 6, seed: int = 0) -> np.ndarray:
    """A 4-band uint16 12-bit product (B, G, R, NIR) with a nodata (0) border."""
    rng = np.random.default_rng(seed)
    data = rng.integers(200, 4000, (4, h, w)).astype(np.uint16)
    data[:, :border] = 0
    data[:, :, -border:] = 0
    return data


def grey_error(ref: Stretch, other: Stretch) -> float:
    """Largest difference (grey levels, before rounding) between two stretches over the
    reference's DN range (a linear difference: largest at its ends)."""
    worst = 0.0
    for lo, hi, lo2, hi2 in zip(ref.low, ref.high, other.low, other.high, strict=True):
        for x in (lo, hi):
            worst = max(worst, abs((x - lo) * 255 / (hi - lo) - (x - lo2) * 255 / (hi2 - lo2)))
    return worst


# -- bands ---------------------------------------------------------------------------------------


def test_parse_bands() -> None:
    assert parse_bands("4,3,2") == (4, 3, 2)
    assert parse_bands(" 5, 3 ,2 ") == (5, 3, 2)
    assert parse_bands("1") == (1,)
    for bad in ("", "4,x,2", "0,1,2", "4;3;2", "-1,2,3"):
        with pytest.raises(ConfigError, match=repr(bad).replace("(", r"\(")):
            parse_bands(bad)


def test_default_bands_from_colorinterp(tmp_path: Path) -> None:
    interp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    path = write_tif(tmp_path / "bgrn.tif", product(), colorinterp=interp)
    with rasterio.open(path) as src:
        assert default_bands(src) == (3, 2, 1)
    rgb = np.zeros((3, 8, 8), np.uint8)
    path = write_tif(tmp_path / "rgb.tif", rgb, photometric="RGB")
    with rasterio.open(path) as src:
        assert default_bands(src) == (1, 2, 3)
    with Scene(tmp_path / "bgrn.tif") as scene:
        assert scene.bands == (3, 2, 1)


def test_default_bands_from_descriptions(tmp_path: Path) -> None:
    wv3 = ["Coastal", "Blue", "Green", "Yellow", "Red", "Red-Edge", "NIR1", "NIR2"]
    data = np.ones((8, 8, 8), np.uint16)
    path = write_tif(tmp_path / "wv3.tif", data, descriptions=wv3)
    with rasterio.open(path) as src:
        assert default_bands(src) == (5, 3, 2)
    path = write_tif(tmp_path / "short.tif", data[:4], descriptions=["b", "G", "r", "nir"])
    with rasterio.open(path) as src:
        assert default_bands(src) == (3, 2, 1)


def test_default_bands_without_metadata(tmp_path: Path) -> None:
    with rasterio.open(write_tif(tmp_path / "four.tif", product())) as src:
        assert default_bands(src) == (1, 2, 3)  # no guess from the band count
    with rasterio.open(write_tif(tmp_path / "one.tif", product()[:1])) as src:
        assert default_bands(src) == (1, 1, 1)


def test_band_selection(tmp_path: Path) -> None:
    data = product()
    path = write_tif(tmp_path / "p.tif", data)
    win = Window(10, 12, 30, 20)
    with Scene(path, bands=(1, 2, 3), stretch=IDENTITY) as a:
        rgb_a, _ = a.read(win)
    with Scene(path, bands=parse_bands("3,2,1"), stretch=IDENTITY) as b:
        rgb_b, _ = b.read(win)
        assert b.bands == (3, 2, 1)
    np.testing.assert_array_equal(rgb_b, rgb_a[..., ::-1])
    expect = IDENTITY.apply(data[[3, 1, 0], 12:32, 10:40])
    with Scene(path, bands=(4, 2, 1), stretch=IDENTITY) as c:
        np.testing.assert_array_equal(c.read(win)[0], expect)
    with Scene(path, bands=(4,), stretch=IDENTITY) as grey:
        rgb, _ = grey.read(win)
        assert grey.bands == (4, 4, 4)
        np.testing.assert_array_equal(rgb, IDENTITY.apply(data[[3, 3, 3], 12:32, 10:40]))


# -- scenes --------------------------------------------------------------------------------------


def test_uint16_four_band_product_with_nodata_border(tmp_path: Path) -> None:
    data = product(border=6)
    path = write_tif(tmp_path / "wv.tif", data, nodata=0)
    with Scene(path) as scene:
        assert (scene.width, scene.height, scene.count, scene.dtype) == (80, 64, 4, "uint16")
        assert scene.bands == (1, 2, 3) and scene.nodata == 0
        assert scene.georef is not None and scene.georef.crs == UTM
        assert scene.gsd == pytest.approx(GSD)
        interior = data[:3, 6:, :-6].reshape(3, -1)
        np.testing.assert_allclose(scene.stretch.low, np.percentile(interior, 2, axis=1))
        np.testing.assert_allclose(scene.stretch.high, np.percentile(interior, 98, axis=1))
        rgb, valid = scene.read(Window(0, 0, 80, 64))
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8 and valid.shape == (64, 80)
    expect_valid = np.zeros((64, 80), bool)
    expect_valid[6:, :-6] = True
    np.testing.assert_array_equal(valid, expect_valid)
    assert not rgb[~valid].any()
    np.testing.assert_array_equal(rgb[valid], scene.stretch.apply(data[:3])[valid])


def test_nodata_override_and_float_nan(tmp_path: Path) -> None:
    data = product(border=4)
    path = write_tif(tmp_path / "no_tag.tif", data)  # no nodata in the file
    with Scene(path) as scene:
        assert scene.nodata is None and scene.read(Window(0, 0, 80, 64))[1].all()
    with Scene(path, nodata=0) as scene:
        assert scene.nodata == 0 and scene.stretch.low[0] > 0
        assert scene.read(Window(0, 0, 80, 64))[1].sum() == (64 - 4) * (80 - 4)
    refl = data.astype(np.float32) / 4000
    refl[:, :4] = np.nan
    with Scene(write_tif(tmp_path / "refl.tif", refl)) as scene:
        rgb, valid = scene.read(Window(0, 0, 80, 64))
        assert not valid[:4].any() and valid[4:, :-4].all() and not rgb[:4].any()


def test_stretch_ignores_nodata(tmp_path: Path) -> None:
    data = product(h=100, w=100, border=30)  # about half the pixels are the nodata border
    path = write_tif(tmp_path / "p.tif", data, nodata=0)
    interior = data[:3, 30:, :-30].reshape(3, -1)
    with rasterio.open(path) as src:
        s = compute_stretch(src, (1, 2, 3), max_side=100)
        np.testing.assert_allclose(s.low, np.percentile(interior, 2, axis=1))
        np.testing.assert_allclose(s.high, np.percentile(interior, 98, axis=1))
        assert compute_stretch(src, (1, 2, 3), nodata_mask=False).low == (0.0, 0.0, 0.0)
        minmax = compute_stretch(src, (1, 2, 3), percentiles=(0, 100))
        assert minmax.low == tuple(float(v) for v in interior.min(1))
    with Scene(path, stretch="minmax") as scene:
        assert scene.stretch == minmax


def test_stretch_samples_like_a_nearest_decimation(tmp_path: Path) -> None:
    """The block-by-block full-resolution sampler takes exactly the pixels of a nearest
    decimation, in tiled and striped files, with odd sizes and several block rows."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4096, (3, 130, 203)).astype(np.uint16)
    rows = ((np.arange(33) + 0.5) * 130 / 33).astype(int)
    cols = ((np.arange(51) + 0.5) * 203 / 51).astype(int)
    sample = data[:, rows][:, :, cols].reshape(3, -1)
    for name, prof in [
        ("tiled.tif", dict(tiled=True, blockxsize=16, blockysize=16)),
        ("striped.tif", dict(blockysize=3)),
    ]:
        with rasterio.open(write_tif(tmp_path / name, data, **prof)) as src:
            s = compute_stretch(src, (3, 1, 2), percentiles=(5, 95), max_side=51)
        np.testing.assert_allclose(s.low, np.percentile(sample[[2, 0, 1]], 5, axis=1))
        np.testing.assert_allclose(s.high, np.percentile(sample[[2, 0, 1]], 95, axis=1))


def synthetic_12bit(tiles: int = 2, size: int = 512) -> np.ndarray:
    """A ``tiles``×``tiles`` mosaic of synthetic oblique renders (geopose.synth, with sensor
    effects) as 12-bit DN, 3×H×W uint16 (per-band gains like an uncalibrated product)."""
    cities = ["ATL", "JAX", "OMA", "ARG"]
    rows = []
    for i in range(tiles):
        row = []
        for j in range(tiles):
            scene = make_scene(cities[(i * tiles + j) % 4], size, 10 + i * tiles + j, gsd=GSD)
            r = render(scene, 0.5 + i + j, 1.2, sun=2.0, sensor=True, seed=i, nadir=False)
            row.append(r.rgb)
        rows.append(np.concatenate(row, 1))
    rgb = np.concatenate(rows, 0).astype(np.float32)
    rng = np.random.default_rng(0)
    dn = rgb * np.float32([11, 13, 15]) + rng.uniform(0, 16, rgb.shape).astype(np.float32) + 40
    return np.clip(np.rint(dn), 0, 4095).astype(np.uint16).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def synthetic_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The synthetic 12-bit scene as a tiled GeoTIFF with *averaged* overviews (how most
    products' and COGs' overviews are built)."""
    data = synthetic_12bit(tiles=4)  # 2048² px
    path = write_tif(
        tmp_path_factory.mktemp("synth") / "scene.tif",
        data,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4, 8, 16], Resampling.average)
    return path, data


def test_decimated_stretch_matches_full_resolution(synthetic_scene) -> None:
    path, data = synthetic_scene
    full = Stretch(
        tuple(np.percentile(data.reshape(3, -1), 2, axis=1)),
        tuple(np.percentile(data.reshape(3, -1), 98, axis=1)),
    )
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4, 8, 16]
        assert compute_stretch(src, (1, 2, 3), max_side=4096) == full
        dec = compute_stretch(src, (1, 2, 3), max_side=512)  # 4× decimated: 1/16 of the pixels
        fast = compute_stretch(src, (1, 2, 3), max_side=512, overviews=True)
    assert grey_error(full, dec) <= 1.0  # measured 0.15
    applied = np.abs(full.apply(data).astype(int) - dec.apply(data).astype(int))
    assert applied.max() <= 1
    # averaged overviews are smoother than the image: their percentiles are narrower (this
    # is why the default samples full-resolution pixels); measured 7 grey levels here
    assert grey_error(full, fast) > 2.0
    with Scene(path) as scene:
        assert grey_error(full, scene.stretch) <= 1.0


def test_boundless_read_at_the_border(tmp_path: Path) -> None:
    data = product(border=0)
    path = write_tif(tmp_path / "p.tif", data)
    with Scene(path, stretch=IDENTITY) as scene:
        rgb, valid = scene.read(Window(-8, -5, 32, 32))
        inner, inner_valid = scene.read(Window(0, 0, 24, 27))
        assert rgb.shape == (32, 32, 3) and inner_valid.all()
        assert not valid[:5].any() and not valid[:, :8].any() and valid[5:, 8:].all()
        assert not rgb[:5].any() and not rgb[:, :8].any()
        np.testing.assert_array_equal(rgb[5:, 8:], inner)
        rgb, valid = scene.read(Window(70, 60, 16, 8))  # past the bottom-right corner
        assert valid[:4, :10].all() and not valid[4:].any() and not valid[:, 10:].any()
        rgb, valid = scene.read(Window(100, 100, 8, 8))  # wholly outside
        assert rgb.shape == (8, 8, 3) and not valid.any() and not rgb.any()
        with pytest.raises(ValueError, match="not inside"):
            scene.read(Window(-1, 0, 8, 8), boundless=False)
        rgb, valid = scene.read(Window(0, 0, 8, 8), boundless=False)
        assert valid.all()


def test_vrt_mosaic_reads_like_the_mosaic(tmp_path: Path) -> None:
    data = product(border=3)
    full = write_tif(tmp_path / "full.tif", data, nodata=0)
    for name, c0, c1 in (("left.tif", 0, 40), ("right.tif", 40, 80)):
        with rasterio.open(
            tmp_path / name,
            "w",
            driver="GTiff",
            width=c1 - c0,
            height=64,
            count=4,
            dtype="uint16",
            crs=UTM,
            transform=TRANSFORM @ TRANSFORM.translation(c0, 0),
            nodata=0,
        ) as dst:
            dst.write(data[:, :, c0:c1])
    bands = []
    for b in range(1, 5):
        sources = "".join(
            f"""<SimpleSource>
        <SourceFilename relativeToVRT="1">{name}</SourceFilename>
        <SourceBand>{b}</SourceBand>
        <SrcRect xOff="0" yOff="0" xSize="40" ySize="64"/>
        <DstRect xOff="{c0}" yOff="0" xSize="40" ySize="64"/>
      </SimpleSource>"""
            for name, c0 in (("left.tif", 0), ("right.tif", 40))
        )
        bands.append(
            f'<VRTRasterBand dataType="UInt16" band="{b}">'
            f"<NoDataValue>0</NoDataValue>{sources}</VRTRasterBand>"
        )
    gt = ", ".join(repr(v) for v in TRANSFORM.to_gdal())
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="80" rasterYSize="64"><SRS>{escape(UTM.to_wkt())}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    with Scene(vrt) as mosaic, Scene(full) as ref:
        assert mosaic.stretch == ref.stretch
        assert mosaic.gsd == pytest.approx(GSD) and mosaic.georef.crs == UTM
        assert mosaic.georef.transform == ref.georef.transform
        for win in (Window(0, 0, 80, 64), Window(30, 10, 20, 40), Window(-4, 50, 30, 30)):
            a, va = mosaic.read(win)
            b, vb = ref.read(win)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(va, vb)


def test_jpeg2000_input(tmp_path: Path) -> None:
    data = product(border=0)
    tif = write_tif(tmp_path / "p.tif", data)
    jp2 = write_tif(tmp_path / "p.jp2", data, driver="JP2OpenJPEG", quality=100, reversible=True)
    with Scene(jp2) as j, Scene(tif) as t:
        assert (j.width, j.height, j.count, j.dtype) == (80, 64, 4, "uint16")
        assert j.gsd == pytest.approx(GSD) and j.georef.crs == UTM
        assert j.stretch == t.stretch  # lossless
        win = Window(5, 5, 50, 40)
        np.testing.assert_array_equal(j.read(win)[0], t.read(win)[0])


def test_plain_png_with_alpha(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(1, 255, (4, 20, 30)).astype(np.uint8)
    rgba[3] = 255
    rgba[3, :5, :7] = 0  # transparent corner
    path = tmp_path / "img.png"
    with rasterio.open(path, "w", driver="PNG", width=30, height=20, count=4, dtype="uint8") as dst:
        dst.write(rgba)
    with Scene(path) as scene:
        assert scene.georef is None and scene.gsd is None and scene.stretch is None
        assert scene.bands == (1, 2, 3)
        rgb, valid = scene.read(Window(0, 0, 30, 20))
    assert not valid[:5, :7].any() and valid.sum() == 20 * 30 - 35
    np.testing.assert_array_equal(rgb[valid], rgba[:3].transpose(1, 2, 0)[valid])
    assert not rgb[~valid].any()


def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tif"
    with pytest.raises(GeoposeDataError, match="missing.tif: file not found"):
        Scene(missing)
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(GeoposeDataError, match="junk.tif: cannot be read as a raster") as e:
        Scene(junk)
    assert "\n" not in str(e.value)
    path = write_tif(tmp_path / "four.tif", product())
    with pytest.raises(GeoposeDataError, match="four.tif: band 5 out of range.* 4 band"):
        Scene(path, bands=(5, 3, 2))
    with pytest.raises(ConfigError, match="four.tif: stretch 'none' needs uint8"):
        Scene(path, stretch="none")
    for bad in ("p98-2", "p2-101", "gamma"):
        with pytest.raises(ConfigError, match="stretch"):
            Scene(path, stretch=bad)
    with pytest.raises(ConfigError, match="three bands"):
        Scene(path, bands=(1, 2))
    empty = write_tif(tmp_path / "empty.tif", np.zeros((3, 8, 8), np.uint16), nodata=0)
    with pytest.raises(GeoposeDataError, match="empty.tif: band 1 has no valid pixels"):
        Scene(empty)
    with Scene(path, stretch="p1-99") as scene:
        assert scene.stretch is not None


# -- Stretch ---------------------------------------------------------------------------------------


def test_stretch_apply_rounding_and_json() -> None:
    s = Stretch((100, 0, 7), (355, 510, 7))
    x = np.array(
        [
            [[50, 100, 227, 355, 400]],
            [[0, 1, 3, 509, 2000]],  # gain 0.5: 0.5 -> 0 and 1.5 -> 2 (round half to even)
            [[0, 7, 8, 6, 9]],  # constant band: a step at 7
        ],
        np.float32,
    )
    out = s.apply(x)
    assert out.dtype == np.uint8 and out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 127, 255, 255])
    np.testing.assert_array_equal(out[0, :, 1], [0, 0, 2, 254, 255])
    np.testing.assert_array_equal(out[0, :, 2], [0, 0, 255, 0, 255])
    x[0, 0, 2] = np.nan
    assert s.apply(x)[0, 2, 0] == 0
    back = Stretch.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and isinstance(back.low, tuple)
    for bad in ({"low": [1]}, {"low": [1, 2], "high": [3]}, {"low": "x", "high": "y"}):
        with pytest.raises(ConfigError):
            Stretch.from_dict(bad)


# -- BlockWriter / COG -----------------------------------------------------------------------------


def write_blocks(writer: BlockWriter, data: np.ndarray, step: int) -> None:
    """Write ``data`` (count×H×W) tile by tile in row-major order, as a scene predictor does."""
    _, h, w = data.shape
    for r in range(0, h, step):
        for c in range(0, w, step):
            win = Window(c, r, min(step, w - c), min(step, h - r))
            writer.write(data[:, r : r + win.height, c : c + win.width], win)


def test_blockwriter_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    agl = rng.uniform(0, 40, (1, 900, 1300)).astype(np.float32)
    agl[0, 100:140, 200:260] = np.nan
    georef = Georef(UTM, TRANSFORM)
    out = tmp_path / "maps" / "AGL.tif"
    with BlockWriter(
        out, 1300, 900, 1, "float32", georef, nodata=np.nan, blocksize=256, band_names=["agl"]
    ) as writer:
        write_blocks(writer, agl, 300)  # windows not aligned to blocks
    assert writer.used_cog_driver == has_cog_driver()
    assert sorted(os.listdir(out.parent)) == ["AGL.tif"]  # no temporaries left
    with rasterio.open(out) as src:
        assert src.crs == UTM and src.transform == TRANSFORM
        assert np.isnan(src.nodata) and src.dtypes[0] == "float32"
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.overviews(1) == [2, 4, 8] and src.descriptions == ("agl",)
        np.testing.assert_array_equal(src.read(), agl)
        # overviews average the map, leaving out nodata
        half = src.read(1, out_shape=(450, 650))
    a = agl[0, 400:900, :1300].reshape(250, 2, 650, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(half[200:], a, rtol=1e-5)
    assert is_cog(out)
    if has_cog_driver():
        with rasterio.open(out) as src:
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_blockwriter_uint8_nearest_and_plain(tmp_path: Path) -> None:
    mask = (np.random.default_rng(2).uniform(size=(2, 600, 700)) > 0.5).astype(np.uint8) * 7
    with BlockWriter(tmp_path / "m.tif", 700, 600, 2, "uint8", None, blocksize=128) as w:
        write_blocks(w, mask, 128)
    with rasterio.open(tmp_path / "m.tif") as src:
        assert src.crs is None and src.overviews(1) == [2, 4, 8]
        np.testing.assert_array_equal(src.read(), mask)
        assert set(np.unique(src.read(out_shape=(2, 150, 175)))) <= {0, 7}  # nearest
    assert is_cog(tmp_path / "m.tif")


def test_blockwriter_without_cog_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cog_module, "has_cog_driver", lambda: False)
    data = np.arange(3 * 300 * 500, dtype=np.uint16).reshape(3, 300, 500)
    with BlockWriter(
        tmp_path / "t.tif", 500, 300, 3, "uint16", Georef(UTM, TRANSFORM), blocksize=64
    ) as w:
        write_blocks(w, data, 64)
    assert w.used_cog_driver is False
    with rasterio.open(tmp_path / "t.tif") as src:
        np.testing.assert_array_equal(src.read(), data)
        assert src.overviews(1) == overview_factors(500, 300, 64) == [2, 4, 8]
    assert is_cog(tmp_path / "t.tif")


def test_blockwriter_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "o" / "AGL.tif"
    data = np.ones((1, 300, 300), np.float32)
    with (
        pytest.raises(RuntimeError, match="boom"),
        BlockWriter(out, 300, 300, 1, "float32", None, blocksize=64) as w,
    ):
        write_blocks(w, data, 64)
        raise RuntimeError("boom")
    assert list(out.parent.iterdir()) == []
    bad_writes = [
        ("float32", np.ones((1, 10, 10), np.float32), Window(0, 0, 20, 20), "does not match"),
        ("uint8", np.ones((10, 10), np.float32), Window(0, 0, 10, 10), "cannot write float32"),
        ("uint8", np.ones((10, 10), np.uint8), Window(295, 0, 10, 10), "not inside"),
    ]
    for dtype, array, win, message in bad_writes:
        with (
            pytest.raises(ValueError, match=message),
            BlockWriter(out, 300, 300, 1, dtype, None) as w,
        ):
            w.write(array, win)
        assert list(out.parent.iterdir()) == []


def test_blockwriter_failing_finish_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rasterio.shutil

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rasterio.shutil, "copy", full_disk)
    out = tmp_path / "o" / "AGL.tif"
    with (
        pytest.raises(OutputPathError, match="No space left"),
        BlockWriter(out, 600, 600, 1, "float32", None, blocksize=64) as w,
    ):
        write_blocks(w, np.ones((1, 600, 600), np.float32), 64)
    assert list(out.parent.iterdir()) == []


def test_blockwriter_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "AGL.tif"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError), BlockWriter(out, 64, 64, 1, "float32", None) as w:
        w.write(np.zeros((1, 64, 64), np.float32), Window(0, 0, 64, 64))
    assert out.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["AGL.tif"]
    with BlockWriter(out, 64, 64, 1, "float32", None, overwrite=True) as w:
        w.write(np.full((1, 64, 64), 2.5, np.float32), Window(0, 0, 64, 64))
    with rasterio.open(out) as src:
        assert (src.read() == 2.5).all() and src.overviews(1) == []
    assert is_cog(out) and sorted(os.listdir(tmp_path)) == ["AGL.tif"]


def test_intermediate_is_zstd_where_gdal_has_it(tmp_path: Path) -> None:
    """The intermediate of a BlockWriter is compressed with what intermediate_compression
    chose (the rasterio wheels' GDAL has ZSTD), and it is gone after the copy."""
    opts = cog_module.intermediate_compression()
    assert opts in ({"compress": "zstd", "zstd_level": 1}, {"compress": "deflate", "zlevel": 1})
    seen = {}
    copy = cog_module.copy_to_cog

    def spy(src, dst, *a, **k):
        with rasterio.open(src) as part:
            seen["compress"] = part.profile["compress"]
            seen["overviews"] = part.overviews(1)
        return copy(src, dst, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(cog_module, "copy_to_cog", spy)
    try:
        with BlockWriter(tmp_path / "a.tif", 300, 200, 1, "float32", None, blocksize=64) as w:
            w.write(np.ones((1, 200, 300), np.float32), Window(0, 0, 300, 200))
    finally:
        mp.undo()
    assert seen == {"compress": opts["compress"], "overviews": [2, 4, 8]}
    assert sorted(os.listdir(tmp_path)) == ["a.tif"]
    with rasterio.open(tmp_path / "a.tif") as src:
        assert src.profile["compress"] == "deflate"  # the COG: what users' tools all read


def test_write_scaled_cog_scales_pixels_and_overviews(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    agl = rng.uniform(0, 40, (1, 700, 900)).astype(np.float32)
    agl[0, :50] = np.nan  # a nodata border
    src = tmp_path / "AGL.tif"
    with BlockWriter(
        src, 900, 700, 1, "float32", Georef(UTM, TRANSFORM), np.nan, blocksize=128
    ) as w:
        write_blocks(w, agl, 128)
    out = tmp_path / "FLOW.tif"
    factors = (0.6 * np.sin(1.1), 0.6 * np.cos(1.1))
    assert cog_module.write_scaled_cog(src, out, factors, ["dx", "dy"]) == out
    assert is_cog(out) and sorted(os.listdir(tmp_path)) == ["AGL.tif", "FLOW.tif"]
    with rasterio.open(src) as a, rasterio.open(out) as f:
        assert f.crs == UTM and f.transform == TRANSFORM and np.isnan(f.nodata)
        assert f.count == 2 and f.dtypes == ("float32", "float32")
        assert f.descriptions == ("dx", "dy") and f.block_shapes[0] == (128, 128)
        assert f.overviews(1) == a.overviews(1) == [2, 4, 8]
        flow = f.read()
        a4, f4 = a.read(1, out_shape=(175, 225)), f.read(out_shape=(2, 175, 225))
    for band, k in enumerate(factors):
        np.testing.assert_allclose(flow[band], agl[0] * k, rtol=1e-6)  # NaN where AGL is NaN
        np.testing.assert_allclose(f4[band], a4 * k, rtol=1e-6)  # the overviews, scaled
    # zero factors: zero flow, NaN kept on nodata; an existing output is refused
    with pytest.raises(OutputExistsError):
        cog_module.write_scaled_cog(src, out, (0.0, 0.0))
    cog_module.write_scaled_cog(src, out, (0.0, 0.0), overwrite=True)
    with rasterio.open(out) as f:
        zero = f.read()
    assert np.nanmax(np.abs(zero)) == 0 and np.isnan(zero[:, :50]).all()
    assert np.isfinite(zero[:, 50:]).all()


def test_write_scaled_cog_bad_input_names_the_file(tmp_path: Path) -> None:
    out = tmp_path / "FLOW.tif"
    with pytest.raises(GeoposeDataError, match="missing.tif"):
        cog_module.write_scaled_cog(tmp_path / "missing.tif", out, (1.0, 2.0))
    ints = tmp_path / "ints.tif"
    with BlockWriter(ints, 64, 64, 1, "uint8", None) as w:
        w.write(np.zeros((1, 64, 64), np.uint8), Window(0, 0, 64, 64))
    with pytest.raises(GeoposeDataError, match="ints.tif.*uint8"):
        cog_module.write_scaled_cog(ints, out, (1.0,))
    agl = tmp_path / "AGL.tif"
    with BlockWriter(agl, 64, 64, 1, "float32", None) as w:
        w.write(np.ones((1, 64, 64), np.float32), Window(0, 0, 64, 64))
    with pytest.raises(ValueError, match="finite"):
        cog_module.write_scaled_cog(agl, out, (float("nan"), 1.0))
    assert sorted(os.listdir(tmp_path)) == ["AGL.tif", "ints.tif"]  # nothing written


def test_is_cog_rejects_other_layouts(tmp_path: Path) -> None:
    data = np.zeros((1, 1200, 1200), np.uint8)
    assert not is_cog(write_tif(tmp_path / "striped.tif", data))
    assert not is_cog(write_tif(tmp_path / "tiled.tif", data, tiled=True))  # no overviews
    appended = write_tif(tmp_path / "appended.tif", data, tiled=True)
    with rasterio.open(appended, "r+") as dst:  # overviews after the image data
        dst.build_overviews([2, 4, 8], Resampling.nearest)
    with rasterio.open(appended) as src:
        assert src.overviews(1) == [2, 4, 8]
    assert not is_cog(appended)
    png = tmp_path / "x.png"
    with rasterio.open(png, "w", driver="PNG", width=8, height=8, count=1, dtype="uint8") as d:
        d.write(data[:, :8, :8])
    assert not is_cog(png)
    assert not is_cog(tmp_path / "missing.tif")


def test_scene_reads_blockwriter_output(tmp_path: Path) -> None:
    """An output of the writer is a valid input of the reader (georef and values)."""
    data = product(border=5)
    with BlockWriter(
        tmp_path / "c.tif", 80, 64, 4, "uint16", Georef(UTM, TRANSFORM), nodata=0, blocksize=32
    ) as w:
        write_blocks(w, data, 32)
    with (
        Scene(tmp_path / "c.tif", stretch=IDENTITY) as scene,
        Scene(write_tif(tmp_path / "ref.tif", data, nodata=0), stretch=IDENTITY) as ref,
    ):
        assert scene.gsd == pytest.approx(GSD)
        (a, va), (b, vb) = scene.read(Window(-3, -3, 90, 70)), ref.read(Window(-3, -3, 90, 70))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(va, vb)
