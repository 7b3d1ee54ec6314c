"""The demo's time budget: the steps after training timed on this machine before it trains
(:class:`PostCosts`, :class:`SpeedProbe`), the training stopped when the time left is what they
need (:class:`TrainTimeBox`), and a late prediction given fewer TTA views (:class:`TtaPlanner`).
Every decision reads one clock (:func:`clock`)."""

from __future__ import annotations

import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from geopose.demo.settings import DemoSettings

MAX_REPORT_FIGURES_SHOWN = 3
"""The report's ``n_show``: the worst and the best images shown with figures."""


def tta_order() -> tuple[str, ...]:
    """TTA modes from the most views to the fewest: the fallbacks of a late prediction."""
    from geopose.inference.tta import TTA_MODES

    return tuple(reversed(TTA_MODES))


END_OF_TRAINING_SECONDS = 2.0
"""Seconds (at the calibration load) from the stop of training to its summary on disk."""
LOAD_RANGE = (0.2, 10.0)
"""Bounds of a measured slowdown against the calibration. The low one lets a calibration taken
in a load spike be corrected (a probe timed during a spike can be several times slower than
the machine's usual speed; a higher floor would keep much of that inflated reserve unused)."""


def clamp_load(ratio: float) -> float:
    """A measured slowdown (time now / time at the calibration), kept in ``LOAD_RANGE``."""
    return min(max(ratio, LOAD_RANGE[0]), LOAD_RANGE[1])


def clock() -> float:
    """The demo's clock, seconds (monotonic). Every time-box decision reads it."""
    return time.monotonic()


def n_views(tta: str) -> int:
    """Number of TTA views of a mode (``none`` 1, ``flip`` 2, ``d2`` 4, ``d4`` 8)."""
    from geopose.inference.tta import tta_views

    return len(tta_views(tta))


@dataclass
class PostCosts:
    """Seconds that the steps after training take on this machine, at one moment's load.

    ``view``: one TTA view of one test image through the model (the TTA's own work included);
    ``image``: the rest of predicting one image (reading it, writing its outputs);
    ``rectify``: one rectification, files in and out; ``figure``: one report figure;
    ``read``: reading one AGL tif and its VFLOW json (evaluate and report read every prediction
    and truth); ``load``: building the model (loading the checkpoint takes about as long).
    """

    view: float
    image: float
    rectify: float
    figure: float
    read: float
    load: float

    def predict(self, tta: str, n_images: int) -> float:
        """Seconds to predict ``n_images`` test images with TTA ``tta``."""
        return n_images * (self.image + n_views(tta) * self.view)

    def after_predict(self, s: DemoSettings) -> float:
        """Seconds of evaluate + rectify + report."""
        figures = min(2 * MAX_REPORT_FIGURES_SHOWN, s.n_test) + 1  # worst, best, score bars
        return 4 * s.n_test * self.read + s.n_rectify * self.rectify + figures * self.figure

    def post(self, s: DemoSettings, n_predict: int) -> float:
        """Seconds from the end of training to the end of the demo, ``n_predict`` images to
        predict with the demo's TTA."""
        return self.load + self.predict(s.tta, n_predict) + self.after_predict(s)


class SpeedProbe:
    """Times the demo's prediction of one test image now: a freshly built model of the demo's
    architecture (untrained, so just as fast) with the demo's TTA, kept for re-measuring."""

    def __init__(self, s: DemoSettings, model_cfg: dict) -> None:
        from geopose.inference.jobs import resolve_jobs
        from geopose.inference.predictor import Predictor
        from geopose.io import read_rgb
        from geopose.models import create_model

        self.job = resolve_jobs(s.data / "test")[0]
        t = clock()
        self.rgb = read_rgb(self.job.path)
        self.read_seconds = clock() - t
        t = clock()
        model = create_model(model_cfg).eval()
        self.load_seconds = clock() - t
        self.predictor = Predictor([model], tta=s.tta, device="cpu", max_batch=8, shrink_scale=True)
        self.last: Any = None

    def __call__(self, repeats: int = 2) -> float:
        """Seconds of one prediction (the fastest of ``repeats``: load spikes pass)."""
        times = []
        for _ in range(repeats):
            t = clock()
            self.last = self.predictor.predict(self.rgb, self.job.gsd, self.job.city)
            times.append(clock() - t)
        return min(times)


def measure_post_costs(s: DemoSettings, probe: SpeedProbe) -> PostCosts:
    """Time the steps after training (:class:`PostCosts`) on the probe's test image."""
    from geopose.inference.jobs import write_outputs
    from geopose.io import agl_name, vflow_name
    from geopose.rectify import rectify_files
    from geopose.viz.figures import figure_png, image_figure
    from geopose.viz.report import read_truth

    job, truth_dir = probe.job, s.data / "test_truth"
    predict = probe()  # the faster of two: the first one also warms up
    t = clock()
    truth = read_truth(truth_dir, job.stem)
    t_read = clock() - t
    scratch = s.out / ".calibration"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        t = clock()
        write_outputs(job, probe.last, scratch, overwrite=True)
        t_write = clock() - t
        t = clock()
        agl, vflow = truth_dir / agl_name(job.stem), truth_dir / vflow_name(job.stem)
        rectify_files(job.path, agl, vflow, scratch / "rectified", stem=job.stem, overwrite=True)
        t_rectify = clock() - t
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures = []
    for _ in range(2):  # the first one also imports matplotlib
        t = clock()
        figure_png(image_figure(probe.rgb, truth.agl, truth.angle, truth.scale, truth=truth))
        figures.append(clock() - t)
    return PostCosts(
        view=predict / n_views(s.tta),
        image=probe.read_seconds + t_write,
        rectify=t_rectify,
        figure=min(figures),
        read=t_read,
        load=probe.load_seconds,
    )


def validation_seconds(s: DemoSettings, cfg: dict, costs: PostCosts) -> float:
    """Expected seconds of one validation of the demo's training (one view per image)."""
    d = cfg["data"]
    if d["fold"] is None:
        return 0.0
    n = math.ceil(s.n_train / d["folds"])
    if d["val_max_images"]:
        n = min(n, d["val_max_images"])
    return n * (costs.view + 2 * costs.read)


@dataclass
class TrainTimeBox:
    """When to stop training so that the whole demo ends by ``deadline`` (``clock()`` s).

    Checked at each step's end and each validation's end: stop when the next step, the
    validation a stop brings, and ``post(load)`` (seconds from the end of training to the end
    of the demo at the calibration's speed, times ``load``) would not fit before the deadline.

    ``load``, the slowdown since the calibration: near the end (when twice, then 1.25 times,
    what is needed would not fit) ``probe()`` re-times a prediction and
    ``load = probe() / probe_seconds``; before that, how much slower the training steps have
    become since they began (median of the last 3 step times over that of steps 2-4; 1 until
    5 steps, and within -20 %/+25 %: noise). Kept in ``LOAD_RANGE``. ``val_seconds`` is an estimate
    until a validation is timed.
    """

    deadline: float
    post: Callable[[float], float]
    val_seconds: float = 0.0
    probe: Callable[[], float] | None = None
    probe_seconds: float = 0.0
    steps: list[float] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    last: float | None = None
    val_started: float | None = None
    stopped: bool = False

    def load(self) -> float:
        """The slowdown since the calibration (see the class doc)."""
        if self.probes and self.probe_seconds > 0:
            ratio = self.probes[-1] / self.probe_seconds
        elif len(self.steps) >= 5:
            first = max(statistics.median(self.steps[1:4]), 1e-9)
            ratio = statistics.median(self.steps[-3:]) / first
            ratio = 1.0 if 0.8 <= ratio <= 1.25 else ratio
        else:
            ratio = 1.0
        return clamp_load(ratio)

    def start(self, now: float) -> None:
        """Training starts (its first step's time runs from here)."""
        self.last = now

    def batch_end(self, now: float) -> bool:
        """A training step ended at ``now``; True: stop training."""
        if self.last is not None:
            self.steps.append(now - self.last)
        return self.check(now)

    def validation_start(self, now: float) -> None:
        """A validation starts."""
        self.val_started = now

    def validation_end(self, now: float) -> bool:
        """A validation ended at ``now`` (timed, and not counted in the next step); True: stop."""
        if self.val_started is not None:
            self.val_seconds = now - self.val_started
        return self.check(now)

    def need(self) -> float:
        """Seconds needed from after the next step to the end of the demo."""
        step = statistics.median(self.steps[-3:]) if self.steps else 0.0
        return step + self.val_seconds + self.post(self.load())

    def check(self, now: float) -> bool:
        """True (and remembered) when the rest of the demo no longer fits after one more step.

        Re-times a prediction first when near the end (see the class doc).
        """
        need = self.need()
        windows = (2.0, 1.25)  # re-time when this many times what is needed no longer fits
        n = len(self.probes)
        cost = 2 * self.probe_seconds * self.load()  # a probe predicts twice
        if (
            self.probe is not None
            and not self.stopped
            and n < len(windows)
            and now + windows[n] * need >= self.deadline
            and now + cost + need < self.deadline
        ):
            self.probes.append(self.probe())
            now = clock()
            need = self.need()
        self.stopped = self.stopped or now + need >= self.deadline
        self.last = now  # the next step's time runs from here (probes not counted)
        return self.stopped


def time_box_callback(box: TrainTimeBox) -> Any:
    """A Lightning callback that feeds ``box`` and stops the trainer when it says so."""
    from lightning.pytorch.callbacks import Callback

    class TimeBoxCallback(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            box.start(clock())

        def on_train_batch_end(self, trainer, *args) -> None:
            if box.batch_end(clock()):
                trainer.should_stop = True

        def on_validation_start(self, trainer, pl_module) -> None:
            box.validation_start(clock())

        def on_validation_end(self, trainer, pl_module) -> None:
            if box.validation_end(clock()):
                trainer.should_stop = True

    return TimeBoxCallback()


def choose_tta(asked: str, n_images: int, seconds: float, view: float, image: float) -> str:
    """The TTA mode with the most views, at most ``asked``'s, with which ``n_images`` images take
    at most ``seconds`` (``view``, ``image``: seconds as in :class:`PostCosts`); else ``none``."""
    modes = tta_order()[tta_order().index(asked) :]
    for mode in modes:
        if n_images * (image + n_views(mode) * view) <= seconds:
            return mode
    return modes[-1]


@dataclass
class TtaPlanner:
    """Each test image's TTA: the most views (at most ``asked``'s) with which the ``left``
    images, then evaluate + rectify + report (``after`` s at the calibration's speed), end by
    ``deadline`` (``clock()`` s).

    Speeds (s per TTA view, s per image besides) start as the calibration's (``costs``) times
    ``load`` and then follow the images predicted: the median of those after the first (the
    first one warms the model up), or the first alone. ``after`` scales like the views.
    """

    asked: str
    left: int
    deadline: float
    after: float
    costs: PostCosts
    load: float = 1.0
    views: list[float] = field(default_factory=list)
    images: list[float] = field(default_factory=list)

    @staticmethod
    def _typical(values: list[float]) -> float:
        return statistics.median(values[1:]) if len(values) > 1 else values[0]

    def speed(self) -> tuple[float, float, float]:
        """(s per view, s per image besides the views, load relative to the calibration)."""
        if not self.views:
            return self.costs.view * self.load, self.costs.image * self.load, self.load
        view = self._typical(self.views)
        load = clamp_load(view / self.costs.view) if self.costs.view > 0 else 1.0
        return view, self._typical(self.images), load

    def done(self, tta: str, model_seconds: float, image_seconds: float) -> None:
        """An image was predicted with ``tta``: ``model_seconds`` in the model (TTA included)
        of ``image_seconds`` in all."""
        self.views.append(model_seconds / n_views(tta))
        self.images.append(max(0.0, image_seconds - model_seconds))

    def choose(self, now: float) -> str:
        """The TTA mode for the next image."""
        view, image, load = self.speed()
        seconds = self.deadline - now - load * self.after
        return choose_tta(self.asked, self.left, seconds, view, image)
