"""``geopose demo`` keeps its time budget, whatever the load.

The demo runs on a virtual clock (``time.monotonic`` of ``geopose.demo.budget`` and of Lightning's
``Timer``, which ``train.max_minutes`` sets): only the model's work costs virtual time, a fixed
amount per training step, validation, end of training, TTA view, report figure and
rectification; data, setup and the rest cost none. So the demo's total is deterministic, and a
busy machine is a multiplier of those costs that changes when the test says so.
"""

from __future__ import annotations

import json
import time
import types

import lightning.pytorch.callbacks.timer
import pytest
from lightning.pytorch.callbacks import Callback

import geopose.demo as demo
import geopose.rectify
import geopose.training.run
import geopose.viz.figures
from geopose.inference import Predictor
from geopose.inference.tta import tta_views

STEP, VAL, END, VIEW, FIGURE, RECTIFY = 1.0, 0.5, 1.0, 0.4, 0.5, 0.2
"""Virtual seconds of a training step, a validation, the end of a training, one TTA view of a
test image, a report figure and a rectification, at load 1."""


class VirtualTime(types.SimpleNamespace):
    """Stands in for the ``time`` module in ``geopose.demo.budget``: ``monotonic()`` is virtual."""

    def __init__(self) -> None:
        super().__init__(now=1000.0, load=1.0, steps=0)

    def monotonic(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds * self.load

    def __getattr__(self, name: str):
        return getattr(time, name)


class VirtualTraining(Callback):
    """Charges the virtual clock for each step and validation (before any other callback)."""

    def __init__(self, vt: VirtualTime, on_step, step: float) -> None:
        self.vt, self.on_step, self.step = vt, on_step, step

    def on_train_batch_end(self, trainer, *args) -> None:
        self.vt.steps += 1
        self.on_step(self.vt)
        self.vt.spend(self.step)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.vt.spend(self.step * VAL / STEP)

    def on_train_end(self, trainer, pl_module) -> None:
        self.vt.spend(END)


def run_virtual_demo(
    tmp_path, monkeypatch, minutes: float, on_step=None, after_training=None, step: float = STEP
):
    """The demo at 64² px (10 train, 6 test images) on the virtual clock, a training step
    costing ``step`` (and a validation half that) -> (scores, total minutes, clock)."""
    vt = VirtualTime()
    monkeypatch.setattr(demo.budget, "time", vt)
    monkeypatch.setattr(lightning.pytorch.callbacks.timer, "time", vt)  # train.max_minutes

    def charged(fn, cost):
        def wrapper(*args, **kwargs):
            vt.spend(cost(*args) if callable(cost) else cost)
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        Predictor, "predict", charged(Predictor.predict, lambda p, *a: VIEW * len(tta_views(p.tta)))
    )
    monkeypatch.setattr(
        geopose.viz.figures, "figure_png", charged(geopose.viz.figures.figure_png, FIGURE)
    )
    monkeypatch.setattr(
        geopose.rectify, "rectify_files", charged(geopose.rectify.rectify_files, RECTIFY)
    )
    train = geopose.training.run.train

    def virtual_train(config, out, resume=False, overwrite=False, callbacks=None, source=None):
        cbs = [VirtualTraining(vt, on_step or (lambda vt: None), step), *(callbacks or [])]
        return train(config, out, resume, overwrite, cbs, source)

    monkeypatch.setattr(geopose.training.run, "train", virtual_train)
    train_model = demo.train_model

    def then(*args, **kwargs):
        out = train_model(*args, **kwargs)
        if after_training is not None:
            after_training(vt)
        return out

    monkeypatch.setattr(demo.steps, "train_model", then)
    s = demo.DemoSettings(  # D4 asked (cpu_small's own is none): views to cut when late
        out=tmp_path / "demo", minutes=minutes, n_train=10, n_test=6, size=64, workers=1, tta="d4"
    )
    s.overrides = ["data.batch_size=4", "train.progress=false"]
    started = vt.now
    scores = demo.run_demo(s, log=print)
    return scores, (vt.now - started) / 60, vt


@pytest.mark.slow
def test_load_rising_during_training_is_caught_before_prediction(tmp_path, monkeypatch):
    """Three times slower from the 4th step on: the training stops early enough for D4."""

    def rise(vt: VirtualTime) -> None:
        if vt.steps == 4:
            vt.load = 3.0

    scores, total, vt = run_virtual_demo(tmp_path, monkeypatch, 2.5, on_step=rise)
    assert vt.steps > 4  # it trained past the rise
    assert total == pytest.approx(2.5, rel=0.05)
    assert scores["demo"]["tta"]["used"] == {"d4": 6}
    saved = json.loads((tmp_path / "demo" / "scores.json").read_text())
    assert saved["demo"]["tta"]["used"] == {"d4": 6}
    assert saved["final"] == scores["final"]


@pytest.mark.slow
def test_load_rising_after_training_gives_fewer_views_not_an_overrun(tmp_path, monkeypatch):
    """Three times slower once the training is over: the late images get fewer TTA views."""

    def surge(vt: VirtualTime) -> None:
        vt.load = 3.0

    scores, total, _ = run_virtual_demo(tmp_path, monkeypatch, 1.5, after_training=surge, step=3)
    assert total == pytest.approx(1.5, rel=0.05)
    used = scores["demo"]["tta"]["used"]
    assert sum(used.values()) == 6 and used.get("d4", 0) < 6, used
    saved = json.loads((tmp_path / "demo" / "scores.json").read_text())
    assert saved["demo"]["tta"]["used"] == used
    assert len(list((tmp_path / "demo" / "predictions").glob("*_VFLOW.json"))) == 6
    assert (tmp_path / "demo" / "report.html").is_file()


# --- the parts -----------------------------------------------------------------------------


def test_choose_tta_takes_the_most_views_that_fit():
    # 4 images, 0.1 s of reading/writing each, 1 s per view: d4 takes 32.4 s, none 4.4 s.
    assert demo.choose_tta("d4", 4, 40.0, 1.0, 0.1) == "d4"
    assert demo.choose_tta("d4", 4, 20.0, 1.0, 0.1) == "d2"
    assert demo.choose_tta("d4", 4, 9.0, 1.0, 0.1) == "flip"
    assert demo.choose_tta("d4", 4, 1.0, 1.0, 0.1) == "none"  # the least there is
    assert demo.choose_tta("flip", 4, 100.0, 1.0, 0.1) == "flip"  # never more than asked


def test_time_box_stops_when_the_rest_no_longer_fits(monkeypatch):
    box = demo.TrainTimeBox(deadline=100.0, post=lambda load: 20.0 * load, val_seconds=5.0)
    box.start(0.0)
    assert not box.batch_end(10.0)  # 10 + 10 (a step) + 5 (validation) + 20 < 100
    assert not box.batch_end(20.0)
    assert box.batch_end(66.0)  # median step 10 s: 66 + 10 + 5 + 20 > 100
    assert box.stopped and box.batch_end(67.0)  # stays stopped


def test_time_box_probes_the_prediction_speed_near_the_end(monkeypatch):
    vt = VirtualTime()
    monkeypatch.setattr(demo.budget, "time", vt)
    probes = []

    def probe() -> float:
        probes.append(vt.now)
        return 6.0  # three times the calibration's 2 s

    box = demo.TrainTimeBox(1100.0, post=lambda load: 10.0 * load, probe=probe, probe_seconds=2.0)
    box.start(vt.now)
    stopped = False
    while not stopped:  # 1 s steps
        vt.now += 1.0
        stopped = box.batch_end(vt.now)
    # Needed: a step and 10 s. The probe comes when twice that no longer fits (at 1078), finds
    # the machine three times slower (load 3: 1 + 30 s needed), and the training stops there
    # instead of at 1089.
    assert probes == [1078.0] and box.load() == 3.0 and vt.now == 1078.0


def test_time_box_corrects_a_calibration_taken_in_a_load_spike(monkeypatch):
    vt = VirtualTime()
    monkeypatch.setattr(demo.budget, "time", vt)
    # The calibration timed the prediction at 5 s and reserved 100 s after training; near the
    # end the probe predicts in 1 s: the machine is 5 times faster than when calibrated.
    box = demo.TrainTimeBox(
        2100.0, post=lambda load: 100.0 * load, probe=lambda: 1.0, probe_seconds=5.0
    )
    box.start(vt.now)
    stopped = False
    while not stopped:  # 1 s steps
        vt.now += 1.0
        stopped = box.batch_end(vt.now)
    # Load 0.2: a step and 20 s are needed, so training runs to 2079 s (virtual time starts at
    # 1000); with the reserve cut only by half (a floor of 0.5) it would stop at 2049.
    assert box.load() == demo.LOAD_RANGE[0] == 0.2
    assert vt.now == 2079.0


def test_tta_planner_follows_the_measured_speed_but_not_the_warm_up():
    costs = demo.PostCosts(view=0.1, image=0.0, rectify=0.0, figure=0.0, read=0.0, load=0.0)
    # 10 images left, 20 s, evaluate/rectify/report 4 s: d4 (8 s) fits at the measured speed.
    plan = demo.TtaPlanner("d4", 10, deadline=20.0, after=4.0, costs=costs)
    assert plan.choose(0.0) == "d4"
    plan.done("d4", 4.0, 4.0)  # the first image: 0.5 s per view (warming up, or a slow machine)
    plan.left = 9
    assert plan.choose(4.0) == "none"  # 5 × slower: the 4 s after predicting become 20 s
    plan.done("none", 0.1, 0.1)  # ... but it was the warm-up: back to 0.1 s per view
    plan.left = 8
    assert plan.choose(4.1) == "d4"  # 8 images × 8 views × 0.1 s <= 20 - 4.1 - 4
