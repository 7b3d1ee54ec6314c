"""``geopose demo`` end to end at a tiny budget: every step runs and leaves its output."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from helpers.scoring import reference_score
from typer.testing import CliRunner

from geopose.cli.main import app
from geopose.errors import ConfigError, OutputPathError
from geopose.io import read_agl, read_vflow


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", str(out), "--minutes", "0.3", "--train", "10", "--test", "2", "--size", "64"]
    args += ["--set", "data.batch_size=4"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output

    # every step left its output
    assert (out / "data" / "synth.json").is_file()
    assert (out / "run" / "summary.json").is_file()
    # training read the training images from the cache made once (geopose prepare's format)
    from geopose.config import load_config
    from geopose.data.cache import CacheSource

    cache = CacheSource(out / "cache")
    assert len(cache.index) == 10
    assert load_config(out / "run" / "config.yaml")["data"]["root"] == str(
        (out / "cache").resolve()
    )
    assert len(list((out / "predictions").glob("*_AGL.tif"))) == 2
    assert len(list((out / "rectified").glob("*_NADIR_AGL.tif"))) == 2
    page = (out / "report.html").read_text()
    assert "<table" in page and "data:image/png;base64," in page

    # the printed and saved scores are the competition score of the written files, computed
    # here independently (straightforward numpy over the files, not geopose.metrics)
    saved = json.loads((out / "scores.json").read_text())
    images = []
    for truth in sorted((out / "data" / "test_truth").glob("*_AGL.tif")):
        stem = truth.name[: -len("_AGL.tif")]
        pred = out / "predictions" / truth.name
        a_p, s_p = read_vflow(out / "predictions" / f"{stem}_VFLOW.json")
        a_t, s_t = read_vflow(out / "data" / "test_truth" / f"{stem}_VFLOW.json")
        images.append((stem[:3], read_agl(pred), read_agl(truth), a_p, s_p, a_t, s_t))
    ref = reference_score(images)
    assert saved["final"] == pytest.approx(np.mean([r["score"] for r in ref.values()]), abs=1e-6)
    assert set(saved["cities"]) == set(ref)
    assert f"{saved['final']:.4f}" in first.output
    # cpu_small trains without D4 turns, so the demo predicts without TTA unless told
    assert saved["demo"]["tta"]["asked"] == "none" and saved["demo"]["tta"]["used"] == {"none": 2}
    assert "prediction ran late" not in first.output
    # the training's progress: its time against its budget and its steps, never the epochs'
    # count (a million: the minutes end the demo's training), nor Lightning's model summary
    bar = next(ln for ln in first.output.splitlines() if ln.startswith("train  "))
    assert re.search(r"\d\d:\d\d / \d\d:\d\d  [\d,]+ steps?", bar), bar
    assert "Epoch" not in first.output and not re.search(r"99999|1,?000,?000", first.output)
    assert "params" not in first.output.lower()

    # a second run reuses the data and the trained model
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "data: reusing" in second.output and "train: reusing" in second.output
    assert "cache: reusing" in second.output
    assert json.loads((out / "scores.json").read_text())["final"] == saved["final"]


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    """A non-empty folder that is not a demo folder is refused before anything is written."""
    out = tmp_path / "mine"
    (out / "data" / "train").mkdir(parents=True)
    precious = out / "data" / "train" / "JAX_abc_RGB.j2k"
    precious.write_bytes(b"not the demo's")
    result = CliRunner().invoke(app, ["demo", str(out), "--minutes", "0.3"])
    assert result.exit_code != 0
    assert "was not made by geopose demo" in str(result.exception) + result.output
    assert precious.read_bytes() == b"not the demo's"
    assert sorted(p.name for p in out.rglob("*")) == ["JAX_abc_RGB.j2k", "data", "train"]


def test_demo_refuses_a_cache_folder_it_did_not_make(tmp_path, fake_dataset):
    """OUT/cache holding someone's files: one error naming it, the files untouched (the demo
    has no --overwrite to offer)."""
    from geopose import demo
    from geopose.errors import GeoposeDataError

    s = demo.DemoSettings(out=tmp_path / "demo", data_dir=fake_dataset.root)
    s.cache.mkdir(parents=True)
    (s.cache / "notes.txt").write_text("mine")
    with pytest.raises(GeoposeDataError, match="not the demo's cache") as err:
        demo.make_cache(s, print)
    assert str(s.cache) in str(err.value)
    assert [p.name for p in s.cache.iterdir()] == ["notes.txt"]
    # the demo's own finished cache is reused, an empty folder is filled
    (s.cache / "notes.txt").unlink()
    lines: list[str] = []
    demo.make_cache(s, lines.append)
    demo.make_cache(s, lines.append)
    assert lines[0].startswith("cache: ") and lines[1] == f"cache: reusing {s.cache}"


@pytest.mark.parametrize(
    "override, message",
    [("model.facade.depth=0", "model.facade.depth"), ("train.no_such_key=1", "no_such_key")],
)
def test_demo_rejects_a_bad_set_before_writing_anything(tmp_path, override, message):
    """A bad --set is one error line naming the key, before any data is rendered."""
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--minutes", "0.3", "--set", override])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)  # the CLI prints it as one error: line
    assert message in str(result.exception)
    assert not out.exists()


def test_demo_training_spends_its_minutes_on_steps(tmp_path, monkeypatch):
    """Validation every 4 epochs on one image in 10; on 2 cores no loader process (it would
    take a core from the model's threads); a user's --set still wins."""
    import geopose.demo as demo

    s = demo.DemoSettings(out=tmp_path / "d")
    for cores, workers in ((2, 0), (1, 0), (8, 1)):
        monkeypatch.setattr(demo.steps.os, "cpu_count", lambda cores=cores: cores)
        cfg = demo.train_config(s, 5.0)
        assert cfg["data"]["workers"] == workers, cores
        assert cfg["data"]["folds"] == 10 and cfg["train"]["val_every"] == 4
        assert cfg["train"]["max_minutes"] == 5.0
    # The minutes end it: the epochs never do, and the learning rate decays with the time.
    assert cfg["train"]["epochs"] == demo.UNBOUNDED_EPOCHS
    from geopose.training.task import lr_factor

    # Step 2200 (the recipe's 100 epochs of 22 steps) half-way through the time: half-way
    # down the cosine, not at its end.
    assert 0.45 < lr_factor(2200, cfg["train"], 22, 22 * cfg["train"]["epochs"], 0.5) < 0.55
    s = demo.DemoSettings(out=tmp_path / "d", overrides=["train.val_every=1", "data.workers=2"])
    cfg = demo.train_config(s, 5.0)
    assert cfg["train"]["val_every"] == 1 and cfg["data"]["workers"] == 2


def test_demo_tta_is_the_recipes_unless_asked_or_uniform(tmp_path):
    """cpu_small trains without D4 turns: no TTA; turned back on by --set data.d4=true; on
    uniform angles every turned view is in the training distribution: D4; --tta wins."""
    from geopose.demo import DemoSettings, demo_tta

    s = DemoSettings(out=tmp_path)
    assert demo_tta(s) == "none"
    assert demo_tta(DemoSettings(out=tmp_path, overrides=["data.d4=true"])) == "d4"
    assert demo_tta(DemoSettings(out=tmp_path, uniform_angles=True)) == "d4"
    assert demo_tta(DemoSettings(out=tmp_path, tta="flip", uniform_angles=True)) == "flip"
    assert demo_tta(s, "baseline") == "d4"  # bench_recipes: each recipe's own


def test_demo_refuses_to_start_without_the_disk_it_needs(tmp_path, monkeypatch):
    """Too little free disk for the data, cache and checkpoints: one error (exit 2) naming the
    folder and the megabytes, before anything is written; what is made already is not counted."""
    from collections import namedtuple

    from geopose import demo

    s = demo.DemoSettings(out=tmp_path / "demo")
    need = demo.disk_needed(s)
    assert 550e6 < need < 800e6  # a 1200-image demo folder measured 588 MB
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, int(need) - 1))
    result = CliRunner().invoke(app, ["demo", str(s.out), "--minutes", "0.3"])
    assert isinstance(result.exception, OutputPathError)  # the CLI prints it, exits with 2
    assert str(s.out) in str(result.exception) and "MB of disk" in str(result.exception)
    assert not s.out.exists()
    # rendered data is not needed again: the same demo needs less
    s.data.mkdir(parents=True)
    (s.data / "synth.json").write_text("{}")
    assert demo.disk_needed(s) < need - 30e6
