"""Data: folds, the prepared cache, sources, the data set and its resumable sampler."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geopose.data import (
    CacheSource,
    EpochSampler,
    FolderSource,
    GeoposeDataset,
    ResumableLoader,
    is_cache,
    load_or_make_folds,
    make_folds,
    open_source,
    prepare_cache,
    split_stems,
)
from geopose.data.sources import downsample_agl
from geopose.errors import ConfigError, GeoposeDataError, OutputExistsError
from geopose.io import CITIES, load_index, read_agl, read_rgb, read_vflow
from geopose.synth.dataset import write_dataset
from geopose.transforms import GeometricAugment


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(out, 16, 2, 96, seed=3)
    return out


@pytest.fixture(scope="module")
def cache_dir(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "cache"
    prepare_cache(data_dir, out)
    return out


# --- folds -------------------------------------------------------------------------------------


def _index(n_per_city: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{c}_{i:03d}", c) for c, n in n_per_city.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["stem", "city"])


def test_stratified_folds_balance_every_city():
    index = _index({"JAX": 23, "OMA": 17, "ATL": 30, "ARG": 10})
    folds = make_folds(index, 5, "stratified", seed=4)
    assert sorted(folds["stem"]) == sorted(index["stem"])
    assert set(folds["fold"]) == set(range(5))
    counts = folds.groupby(["city", "fold"]).size().unstack()
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1
    again = make_folds(index.sample(frac=1, random_state=1), 5, "stratified", seed=4)
    assert folds.equals(again)  # independent of row order
    other = make_folds(index, 5, "stratified", seed=5)
    assert not folds["fold"].equals(other["fold"])


def test_stratified_folds_with_small_cities():
    folds = make_folds(_index({"JAX": 3, "OMA": 9}), 5, "stratified")
    assert set(folds["fold"]) <= set(range(5))
    assert folds[folds.city == "JAX"]["fold"].nunique() == 3


def test_city_folds_hold_out_whole_cities():
    index = _index({"JAX": 5, "OMA": 4, "ATL": 6, "ARG": 3})
    folds = make_folds(index, 4, "city")
    assert (folds.groupby("city")["fold"].nunique() == 1).all()
    assert folds.groupby("fold")["city"].nunique().eq(1).all()
    train, val = split_stems(folds, 2)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(index)
    held = folds[folds.fold == 2]["city"].iloc[0]
    assert all(s.startswith(held) for s in val) and not any(s.startswith(held) for s in train)
    with pytest.raises(ConfigError, match="cities"):
        make_folds(index, 5, "city")


def test_folds_written_once_and_checked(tmp_path):
    index = _index({"JAX": 6, "OMA": 6})
    path = tmp_path / "folds.csv"
    # A non-zero DDP rank computes the same folds without touching the run folder.
    other_rank = load_or_make_folds(path, index, 3, "stratified", 0, write=False)
    assert not path.exists()
    first = load_or_make_folds(path, index, 3, "stratified", 0)
    assert path.is_file()
    pd.testing.assert_frame_equal(first, other_rank)
    again = load_or_make_folds(path, index.iloc[:5], 3, "stratified", 0)  # read, not remade
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(GeoposeDataError, match="folds.csv.*scheme=stratified folds=3"):
        load_or_make_folds(path, index, 4, "stratified", 0)
    bigger = _index({"JAX": 6, "OMA": 7})
    with pytest.raises(GeoposeDataError, match="no fold for 1 image"):
        load_or_make_folds(path, bigger, 3, "stratified", 0)
    assert split_stems(first, None) == (sorted(index["stem"]), [])


# --- sources and the cache ---------------------------------------------------------------------


def test_cache_holds_the_decoded_images_exactly(data_dir, cache_dir):
    assert is_cache(cache_dir) and not is_cache(data_dir)
    index = load_index(data_dir, "all")
    cached = pd.read_csv(cache_dir / "index.csv")
    assert len(cached) == len(index) == 18
    src = CacheSource(cache_dir, "train")
    assert len(src) == 16 and src.downsample == 1
    for i in (0, 7):
        row = src.index.iloc[i]
        files = index[index.stem == row["stem"]].iloc[0]
        rgb, agl = src.open(i).read_all()
        np.testing.assert_array_equal(rgb, read_rgb(files["rgb"]))
        np.testing.assert_array_equal(agl, read_agl(files["agl"]))  # centimetre-exact
        pose = read_vflow(files["vflow"])
        assert math.isclose(row["angle"], pose.angle) and math.isclose(row["scale"], pose.scale)
        assert math.isclose(row["agl_max"], float(np.nanmax(agl)), abs_tol=1e-6)
    test = CacheSource(cache_dir, "test")
    rgb, agl = test.open(0).read_all()
    assert agl is None and rgb.shape == (96, 96, 3)


def test_cache_and_folder_windows_agree(data_dir, cache_dir):
    folder, cache = FolderSource(data_dir), open_source(cache_dir)
    assert isinstance(cache, CacheSource)
    for window in ((10, 20, 32, 40), (-8, 80, 32, 32)):  # inside, and leaving the image
        f_rgb, f_agl = folder.open(3).read(*window)
        c_rgb, c_agl = cache.open(3).read(*window)
        np.testing.assert_array_equal(f_rgb, c_rgb)
        np.testing.assert_array_equal(f_agl, c_agl)
    _, agl = cache.open(3).read(-8, 80, 32, 32)
    assert np.isnan(agl[:8]).all() and np.isnan(agl[:, 16:]).all()


def test_cache_keeps_an_images_maps_for_its_next_crop(cache_dir, monkeypatch):
    """An image's files are mapped once and reused (at most MAX_MAPPED images' maps are kept);
    a pickled source (to a loader process) carries no mapped data; the rows are the index's."""
    import pickle

    import geopose.data.cache as cache_mod

    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    monkeypatch.setattr(cache_mod, "MAX_MAPPED", 2)
    src = CacheSource(cache_dir)
    first = src.open(3).read(0, 0, 8, 8)
    again = src.open(3).read(0, 0, 8, 8)
    assert len(loads) == 2  # the RGB and the AGL of image 3, once
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    src.open(4), src.open(5)  # the third image lets the first go
    assert sorted(src._maps) == [4, 5]
    src.open(3)
    assert len(loads) == 8
    copy = pickle.loads(pickle.dumps(src))
    assert copy._maps == {} and len(pickle.dumps(src)) < 20_000
    np.testing.assert_array_equal(copy.open(3).read(0, 0, 8, 8)[0], first[0])
    for i in (0, 7):
        assert src.row(i) == src.index.iloc[i].to_dict()


def test_prepare_reports_one_progress_stage_and_its_size(data_dir, tmp_path):
    """``prepare_cache``: one ProgressFn stage, and the count and size the CLI prints."""
    calls = []
    out = tmp_path / "c"
    cache = prepare_cache(data_dir, out, split="train", on_progress=lambda *c: calls.append(c))
    assert calls == [("convert", i, 16) for i in range(1, 17)]
    assert cache.root == out and len(cache.index) == 16 and cache.downsample == 1
    assert cache.size_bytes == sum(p.stat().st_size for p in out.rglob("*.npy")) > 0
    with pytest.raises(ConfigError, match="--split must be train, test or all, got 'val'"):
        prepare_cache(data_dir, tmp_path / "never", split="val")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_names_an_unreadable_image_with_any_number_of_workers(data_dir, tmp_path, workers):
    """A truncated image: the same error naming the file whether decoded here or in worker
    processes (the error crosses the process boundary whole, not as BrokenProcessPool)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    bad = sorted((data / "train").glob("*_RGB.j2k"))[3]
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(GeoposeDataError, match="unreadable or truncated image") as err:
        prepare_cache(data, tmp_path / "c", split="train", workers=workers)
    assert err.value.path == bad


def test_downsampled_cache_adjusts_gsd_and_scale(data_dir, tmp_path):
    out = tmp_path / "half"
    prepare_cache(data_dir, out, downsample=2, split="train", workers=2)
    half, full = CacheSource(out), FolderSource(data_dir)
    assert half.downsample == 2
    row, frow = half.index.iloc[0], full.index.iloc[0]
    assert math.isclose(row["gsd"], 2 * frow["gsd"]) and math.isclose(
        row["scale"], frow["scale"] / 2
    )
    rgb, agl = half.open(0).read_all()
    f_rgb, f_agl = full.open(0).read_all()
    assert rgb.shape == (48, 48, 3)
    np.testing.assert_allclose(agl, downsample_agl(f_agl, 2), atol=0.006)  # cm rounding
    # The folder source downsamples on the fly to the same thing.
    fly = FolderSource(data_dir, downsample=2)
    np.testing.assert_array_equal(fly.open(0).read_all()[0], rgb)
    assert math.isclose(fly.index.iloc[0]["scale"], row["scale"])
    with pytest.raises(ConfigError, match="downsample 2"):
        open_source(out, downsample=1)


def test_prepare_refuses_and_resumes(data_dir, tmp_path):
    out = tmp_path / "c"
    prepare_cache(data_dir, out, split="train")
    with pytest.raises(OutputExistsError):
        prepare_cache(data_dir, out, split="train")
    # An interrupted run (no index yet, one file missing) resumes.
    (out / "index.csv").unlink()
    victim = sorted((out / "train").glob("*_RGB.npy"))[0]
    victim.unlink()
    with pytest.raises(GeoposeDataError, match="unfinished"):
        CacheSource(out)
    cache = prepare_cache(data_dir, out, split="train")
    assert victim.is_file() and len(cache.index) == 16
    prepare_cache(data_dir, out, split="train", overwrite=True)
    other = tmp_path / "not_a_cache"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(GeoposeDataError, match="not a geopose cache"):
        prepare_cache(data_dir, other, overwrite=True)
    assert (other / "keep.txt").is_file()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from geopose.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_prepare_cli(data_dir, tmp_path, capsys):
    code, out, _ = _cli(
        capsys, "prepare", str(data_dir), "--out", str(tmp_path / "c"), "--split", "train"
    )
    assert code == 0 and "16 image(s)" in out
    code, _, err = _cli(capsys, "prepare", str(data_dir), "--out", str(tmp_path / "c"))
    assert code == 1 and "exists already" in err and "Traceback" not in err


def test_missing_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(GeoposeDataError, match="not found"):
        open_source(tmp_path / "nope")


# --- the data set ------------------------------------------------------------------------------


def test_training_items_follow_the_contract(cache_dir):
    src = CacheSource(cache_dir)
    ds = GeoposeDataset(
        src, list(range(len(src))), train=True, crop=64, geometric=GeometricAugment("heavy"), seed=1
    )
    item = ds[(2, 12345)]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype.is_floating_point
    assert item["agl"].shape == item["mag"].shape == (1, 64, 64)
    assert item["direction"].shape == (2,) and item["scale"].shape == ()
    assert item["city"].dtype.is_signed and 0 <= int(item["city"]) < len(CITIES)
    np.testing.assert_allclose(item["mag"], item["agl"] * item["scale"], rtol=1e-6)
    assert math.isclose(float(item["direction"].norm()), 1.0, rel_tol=1e-6)
    again = ds[(2, 12345)]
    for key in ("image", "agl", "direction", "scale", "gsd"):
        np.testing.assert_array_equal(item[key].numpy(), again[key].numpy())
    other = ds[(2, 54321)]
    assert not np.array_equal(item["image"].numpy(), other["image"].numpy())


def test_unaugmented_crop_is_a_window_of_the_image(cache_dir):
    src = CacheSource(cache_dir)
    ds = GeoposeDataset(src, [5], train=True, crop=48, seed=0)
    item = ds[(0, 7)]
    rgb, agl = src.open(5).read_all()
    img = (item["image"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    hits = [
        (r, c)
        for r in range(49)
        for c in range(49)
        if np.array_equal(rgb[r : r + 48, c : c + 48], img)
    ]
    assert len(hits) == 1
    r, c = hits[0]
    np.testing.assert_array_equal(item["agl"].numpy()[0], agl[r : r + 48, c : c + 48])
    row = src.index.iloc[5]
    assert math.isclose(float(item["scale"]), row["scale"], rel_tol=1e-6)
    assert math.isclose(
        math.atan2(*item["direction"].tolist()) % (2 * math.pi), row["angle"], abs_tol=1e-6
    )


def test_validation_items_are_whole_images(data_dir):
    src = FolderSource(data_dir)
    ds = GeoposeDataset(src, [0, 1], train=False)
    item = ds[1]
    assert item["image"].shape == (3, 96, 96)
    np.testing.assert_array_equal(item["agl"].numpy()[0], read_agl(src.index.iloc[1]["agl"]))


# --- the sampler -------------------------------------------------------------------------------


def test_sampler_shards_ranks_and_reshuffles():
    ranks = [EpochSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    items = [list(s) for s in ranks]
    assert all(len(it) == len(ranks[0]) == 4 for it in items)
    indices = [i for it in items for i, _ in it]
    assert set(indices) == set(range(10))  # 12 slots: everything, two repeated
    seeds = [s for it in items for _, s in it]
    assert len(set(seeds)) == 12
    first = [i for i, _ in EpochSampler(10, seed=3)]
    assert first == [i for i, _ in EpochSampler(10, seed=3)]
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    assert [i for i, _ in s] != first
    assert len(EpochSampler(10, samples_per_epoch=25)) == 25
    assert sorted(i for i, _ in EpochSampler(4, samples_per_epoch=8)) == [0, 0, 1, 1, 2, 2, 3, 3]


class _Indices:
    """A data set whose items are their (index, seed) keys' indices."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, item: tuple[int, int]) -> int:
        return item[0]


def test_loader_state_resumes_mid_epoch():
    ds = _Indices()
    full = ResumableLoader(ds, batch_size=4, sampler=EpochSampler(20, seed=1), collate_fn=list)
    full.sampler.set_epoch(2)
    batches = list(full)
    resumed = ResumableLoader(ds, batch_size=4, sampler=EpochSampler(20, seed=1), collate_fn=list)
    resumed.load_state_dict({"epoch": 2, "batches": 3})
    resumed.sampler.set_epoch(2)  # Lightning calls this after loading; the position stays
    assert list(resumed) == batches[3:]
    assert list(resumed) == batches  # the next pass of the same epoch starts over
    done = ResumableLoader(ds, batch_size=4, sampler=EpochSampler(20, seed=1), collate_fn=list)
    done.load_state_dict({"epoch": 2, "batches": 5})  # saved at the end of epoch 2
    assert done.sampler.epoch == 3 and done.state_dict() == {"epoch": 3, "batches": 0}
