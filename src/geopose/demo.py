"""``geopose demo``: the whole pipeline on synthetic data, on CPU, within a time budget.

synth -> train (``cpu_small``) -> predict with D4 TTA -> evaluate -> rectify a few -> report.
Each step leaves its output in the demo folder and is skipped (or resumed) when run again.

The budget covers the whole pipeline. Right before training, the steps after it are timed on
this machine at its present load (:func:`measure_post_costs`: the demo's model predicting a
test image with the demo's TTA, a rectification, a report figure). Training stops when the time
left is what those steps need, times the slowdown since (:class:`TrainTimeBox`: the training
steps' times, and near the end the prediction re-timed). Prediction measures itself as it goes:
if it runs late anyway, the images left get fewer TTA views (d4 -> d2 -> flip -> none,
:class:`TtaPlanner`). ``scores.json`` (``demo``) records the times and the TTA each image got.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopose.errors import GeoposeDataError, GeoposeError, OutputExistsError

if TYPE_CHECKING:
    from geopose.training.run import TrainingView
    from geopose.types import ProgressFn

DEMO_RECIPE = "cpu_small"
TTA_ORDER = ("d4", "d2", "flip", "none")
"""TTA modes from the most views to the fewest: the fallbacks of a late prediction."""
END_OF_TRAINING_SECONDS = 2.0
"""Seconds (at the calibration load) from the stop of training to its summary on disk."""
LOAD_RANGE = (0.2, 10.0)
"""Bounds of a measured slowdown against the calibration. The low one lets a calibration taken
in a load spike be corrected: on a 2-core Xeon one timed the prediction 6.6× slower than the
probe near the end of training did; with a floor of 0.5, half (75 s) of its inflated 151 s
reserve stayed where the steps after training took 32 s, and the demo ended at 8.5 of its 10
minutes (BENCHMARKS.md, Demo, round 16)."""


TRAIN_IMAGES = 1200
"""Training images the demo renders (90 % train, 10 % validation). More than the 400 of rounds
1-19: rendering and caching them take 0.9 of the ten minutes (0.4 for 400) on a 2-core EPYC,
and a city's rarer passes (Argentina's 35° pass: 23 images of 400) are seen three times as
often. Float32, three seeds: +0.02 to +0.10 on the demo's own test images, +0.006 on average on
96 others (BENCHMARKS.md, Demo, round 20)."""

DATA_BYTES_PER_PIXEL, CACHE_BYTES_PER_PIXEL = 0.6, 4.9
"""Disk per training-image pixel: the rendered set (JPEG 2000 image, AGL GeoTIFF, JSON) and its
cache (a 1200-image 256² demo: 46 MB and 385 MB)."""
RUN_BYTES = 170e6
"""Disk of the training run: ``cpu_small``'s three kept checkpoints and ``last.ckpt`` (38 MB
each), its logs."""

UNBOUNDED_EPOCHS = 1_000_000
"""The demo's ``train.epochs``: more than any budget reaches, so that the minutes end training."""

MAX_REPORT_FIGURES_SHOWN = 3
"""The report's ``n_show``: the worst and the best images shown with figures."""


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
class DemoSettings:
    """What the demo makes and how long it may take.

    ``minutes`` is the wall-clock budget of the whole demo; training gets what the other steps
    are expected to leave (at least ``min_train_minutes``).
    """

    out: Path
    minutes: float = 10.0
    n_train: int = TRAIN_IMAGES
    n_test: int = 24
    size: int = 256
    seed: int = 0
    tta: str | None = None  # None: the one the recipe suits (demo_tta)
    n_rectify: int = 4
    workers: int = 2
    uniform_angles: bool = False
    min_train_minutes: float = 0.2
    overrides: list[str] = field(default_factory=list)
    data_dir: Path | None = None  # default: OUT/data

    @property
    def data(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.out / "data"

    @property
    def cache(self) -> Path:
        """The training images as a ``geopose prepare`` cache (what training reads)."""
        return self.out / "cache"

    @property
    def run(self) -> Path:
        return self.out / "run"

    @property
    def pred(self) -> Path:
        return self.out / "predictions"

    @property
    def scores(self) -> Path:
        return self.out / "scores.json"

    @property
    def rectified(self) -> Path:
        return self.out / "rectified"

    @property
    def report(self) -> Path:
        return self.out / "report.html"


Log = Callable[[str], None]


def make_data(s: DemoSettings, log: Log, on_progress: ProgressFn | None = None) -> None:
    """Render the synthetic city set, unless a complete one is there (``on_progress``: as
    :func:`geopose.synth.write_dataset`'s)."""
    from geopose.synth import write_dataset

    if (s.data / "synth.json").is_file():
        log(f"data: reusing {s.data}")
        return
    log(f"data: rendering {s.n_train} train + {s.n_test} test images of {s.size}² px")
    write_dataset(
        s.data,
        n_train=s.n_train,
        n_test=s.n_test,
        size=s.size,
        seed=s.seed,
        workers=s.workers,
        uniform_angles=s.uniform_angles,
        overwrite=True,  # an incomplete folder (no synth.json) from an interrupted run
        on_progress=on_progress,
    )


def cache_done(s: DemoSettings) -> bool:
    """Whether ``s.cache`` is a finished training cache (``make_cache`` reuses it)."""
    from geopose.data.cache import INDEX, is_cache

    return is_cache(s.cache) and (s.cache / INDEX).is_file()


def disk_needed(s: DemoSettings) -> float:
    """Bytes the demo has still to write (the data and cache not made yet, the run), +10 %."""
    pixels = (s.n_train + s.n_test) * s.size**2
    need = RUN_BYTES
    if not (s.data / "synth.json").is_file():
        need += DATA_BYTES_PER_PIXEL * pixels
    if not cache_done(s):
        need += CACHE_BYTES_PER_PIXEL * pixels
    return 1.1 * need


def make_cache(s: DemoSettings, log: Log) -> None:
    """Convert the training images once into a memory-mapped cache (``geopose prepare``): a
    training crop is then a window read instead of a JPEG 2000 decode, which took about 14 % of
    a 2-core training step (BENCHMARKS.md, Demo, round 10). Reuses a finished cache and resumes
    an unfinished one."""
    from geopose.data.cache import prepare_cache

    if cache_done(s):
        log(f"cache: reusing {s.cache}")
        return
    t0 = clock()
    try:
        made = prepare_cache(s.data, s.cache, split="train")
    except OutputExistsError as exc:  # the demo has no --overwrite: never touch such a folder
        raise GeoposeDataError(
            s.cache, "exists and is not the demo's cache; move it away or choose another OUT"
        ) from exc
    log(
        f"cache: {len(made.index)} training images -> {s.cache} "
        f"({made.size_bytes / 1e6:.0f} MB, {clock() - t0:.0f} s)"
    )


def train_overrides(s: DemoSettings, minutes: float, recipe: str = DEMO_RECIPE) -> list[str]:
    """The overrides that put a recipe (the demo's: ``cpu_small``) on the demo data,
    time-boxed to ``minutes``.

    Steps are what a minutes-long CPU run lacks (BENCHMARKS.md, Demo), so little else runs:
    one image in 10 held out for validation, validated every 4 epochs (a validation of 80
    images took about 4.3 s of the 4.5-5.5 s by which a 14.5 s epoch outlasted its 20 steps),
    and on 2 cores or fewer the crops are cut in the training process (a loader process takes
    a core from the model's two threads). On a 2-core box training in bf16: 740 -> 943 ->
    1119 steps in the default demo (float32 there: about 790). The minutes end training, not
    the recipe's epoch count: its 100 epochs are 2200 steps of the demo's 360 training images,
    which a box 1.3× faster than round 18's 2-core Xeon reaches before its time is up (the learning
    rate's decay follows the time either way, :func:`geopose.training.task.lr_factor`).
    """
    from geopose.config import resolve_config

    crop = min(resolve_config(recipe, [])["data"]["crop"], s.size)
    return [
        f"data.root={s.cache.resolve()}",
        f"data.crop={crop}",
        f"train.max_minutes={minutes:.3f}",
        f"train.epochs={UNBOUNDED_EPOCHS}",
        f"train.seed={s.seed}",
        "data.folds=10",
        "train.val_every=4",
        f"data.workers={0 if (os.cpu_count() or 1) <= 2 else 1}",
        "train.ckpt_every_steps=20",
        *s.overrides,
    ]


def train_config(s: DemoSettings, minutes: float, recipe: str = DEMO_RECIPE) -> dict:
    """A recipe (the demo's: ``cpu_small``) on the demo data, time-boxed to ``minutes``."""
    from geopose.config import resolve_config

    return resolve_config(recipe, train_overrides(s, minutes, recipe))


def demo_tta(s: DemoSettings, recipe: str = DEMO_RECIPE) -> str:
    """``s.tta``, else the TTA that the recipe's training suits
    (:func:`geopose.inference.tta.learned_tta`; ``cpu_small`` trains without D4: ``none``),
    except on uniform angles (``d4``): there every turned view is an image like those it was
    trained on (round 11, seed 0: 0.256 with D4, 0.190 without)."""
    from geopose.inference.tta import learned_tta

    if s.tta is not None:
        return s.tta
    return "d4" if s.uniform_angles else learned_tta([train_config(s, 1.0, recipe)])


def train_model(
    s: DemoSettings, minutes: float, log: Log, callbacks: list[Any] | None = None
) -> Path:
    """Train (or resume, or reuse) the demo model for at most ``minutes`` of training time
    (``train.max_minutes``; ``callbacks``, Lightning's, may stop it sooner); returns the
    checkpoint to predict with. Resumes as ``geopose train --resume`` does
    (:func:`geopose.training.run.plan_run`)."""
    from geopose.training.run import SUMMARY, has_ended, plan_run

    if not has_ended(s.run):
        overrides = train_overrides(s, minutes)
        plan = plan_run(s.run, DEMO_RECIPE, overrides, resume="auto", overwrite=True)
        log(
            f"train: {'resuming' if plan.resume else 'training'} {DEMO_RECIPE} for up to "
            f"{minutes:.1f} min in {plan.precision}"
        )
        plan.train(callbacks)
    else:
        log(f"train: reusing {s.run}")
    summary = json.loads((s.run / SUMMARY).read_text())
    best = summary.get("best_checkpoint")
    if best and Path(best).is_file():
        ckpt, which = Path(best), "the best weights"
        if summary.get("best_score") is not None:
            which += f" (val score {summary['best_score']:.3f})"
    else:
        ckpt, which = Path(summary["last_checkpoint"]), "the last weights"
    log(f"train: {summary['global_step']:,} steps; predicting with {which}")
    return ckpt


def predict_test(
    s: DemoSettings,
    ckpt: Path,
    log: Log,
    deadline: float = math.inf,
    costs: PostCosts | None = None,
    load: float = 1.0,
) -> dict:
    """Predict the test images with TTA (skips images already predicted), in time.

    With ``costs`` (measured before training; times ``load``, the slowdown since), each image
    gets the most TTA views (at most ``s.tta``'s) with which the images left, then evaluate,
    rectify and report, end by ``deadline`` (``clock()`` s); the speed measured on the images
    done so far replaces the estimate as it comes.
    Returns ``{"asked", "used": {mode: images}, "reused", "no_direction"}``.
    """
    from geopose.inference.jobs import predict_jobs, resolve_jobs
    from geopose.inference.predictor import Predictor

    jobs = resolve_jobs(s.data / "test")
    log(f"predict: {len(jobs)} test images, TTA {s.tta}")
    planner = None
    if costs is not None and math.isfinite(deadline):
        planner = TtaPlanner(s.tta, len(jobs), deadline, costs.after_predict(s), costs, load)
    loaded: list[Predictor] = []  # the model, loaded once; the TTA in use: current[0]
    current: list[Predictor] = []
    used: dict[str, int] = {}
    state = {"since": clock()}

    def predictor() -> Predictor:
        if not loaded:
            # Scored predictions: the scale shrinks where the TTA views disagree on the direction.
            model = Predictor.from_checkpoints(
                [(ckpt, 1.0)], tta=s.tta, device="cpu", max_batch=8, shrink_scale=True
            )[0]
            loaded.append(model)
            current.append(model)
            state["since"] = clock()
            if planner is not None:
                mode = planner.choose(clock())
                if mode != s.tta:
                    log(f"predict: running late: TTA {s.tta} -> {mode}")
                    current[0] = model.with_tta(mode)
        return current[0]

    def on_done(job: Any, outcome: Any) -> None:
        now = clock()
        if planner is not None:
            planner.left -= 1
        if outcome.status == "written":
            mode = current[0].tta
            used[mode] = used.get(mode, 0) + 1
            if planner is not None and planner.left > 0:
                planner.done(mode, outcome.model_seconds, now - state["since"])
                nxt = planner.choose(now)
                if nxt != mode:
                    log(
                        f"predict: {'running late: ' * (nxt != s.tta)}TTA {mode} -> "
                        f"{nxt} for the {planner.left} image(s) left"
                    )
                    current[0] = loaded[0].with_tta(nxt)
        state["since"] = now

    summary = predict_jobs(predictor, jobs, s.pred, on_done=on_done, clock=clock)
    if len(used) > 1 or (used and s.tta not in used):
        done = ", ".join(f"{mode} for {n}" for mode, n in used.items())
        log(f"predict: TTA {done} image(s), to end in time")
    if summary.no_direction:
        log(f"predict: {len(summary.no_direction)} image(s) without direction evidence: zero flow")
    return {
        "asked": s.tta,
        "used": used,
        "reused": len(summary.skipped),
        "no_direction": len(summary.no_direction),
    }


def evaluate_test(s: DemoSettings, log: Log) -> dict:
    """Score the predictions against the test truth; writes ``scores.json``."""
    from geopose.io import write_text_atomic
    from geopose.metrics import evaluate_folders

    scores = evaluate_folders(s.pred, s.data / "test_truth")
    write_text_atomic(s.scores, json.dumps(scores, indent=1))
    log(f"evaluate: final score {scores['final']:.4f} -> {s.scores}")
    return scores


def rectify_some(s: DemoSettings, log: Log) -> None:
    """Rectify the first ``n_rectify`` test images with their predicted pose."""
    from geopose.io import agl_name, find_rgb, prediction_stems, vflow_name
    from geopose.rectify import rectify_files

    stems = prediction_stems(s.pred)[: s.n_rectify]
    for stem in stems:
        rectify_files(
            find_rgb(s.data / "test", stem),
            s.pred / agl_name(stem),
            s.pred / vflow_name(stem),
            s.rectified,
            stem=stem,
            overwrite=True,
        )
    log(f"rectify: {len(stems)} images -> {s.rectified}")


def make_report(s: DemoSettings, log: Log) -> None:
    """Write the HTML report of the test predictions."""
    from geopose.viz.report import write_report

    write_report(
        s.report,
        s.pred,
        s.data / "test_truth",
        s.data / "test",
        n_show=MAX_REPORT_FIGURES_SHOWN,
        overwrite=True,
    )
    log(f"report: {s.report}")


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
    modes = TTA_ORDER[TTA_ORDER.index(asked) :]
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


def pending_predictions(s: DemoSettings) -> int:
    """Test images without valid predictions yet (a re-run predicts only those)."""
    from geopose.inference.jobs import outputs_valid, resolve_jobs

    return sum(not outputs_valid(j, s.pred) for j in resolve_jobs(s.data / "test"))


MARKER = ".geopose-demo"
"""File that marks a folder as made by ``geopose demo`` (so its leftovers may be replaced)."""


def claim_folder(out: Path) -> None:
    """Make ``out`` a demo folder, refusing a non-empty folder the demo did not make (the demo
    replaces its own half-written outputs and must never touch anybody else's files)."""
    from geopose.io import check_output_dir

    check_output_dir(out)  # OutputPathError (exit 2) when the folder cannot be written
    if out.exists() and not out.is_dir():
        raise GeoposeDataError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise GeoposeDataError(
            out, "is not empty and was not made by geopose demo; choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def run_demo(
    s: DemoSettings,
    log: Log = print,
    on_progress: ProgressFn | None = None,
    training_view: TrainingView | None = None,
) -> dict:
    """Run every step; returns the scores (the same numbers ``geopose evaluate`` prints) and,
    under ``demo``, what the time box did (also saved in ``scores.json``). ``log(line)`` tells
    each step; ``on_progress(stage, done, total)`` follows the data's rendering;
    ``training_view`` draws the training's progress (time used of the training's budget,
    steps, validation score: :class:`geopose.training.run.TrainingProgress`; default: one
    plain line on stderr)."""
    if s.minutes <= 0:
        raise GeoposeError(f"--minutes must be positive, got {s.minutes}")
    started = clock()
    train_config(s, 1.0)  # a bad --set fails here, before anything is written
    s = replace(s, tta=demo_tta(s))
    from geopose.io import check_free_space

    check_free_space(s.out, disk_needed(s), "the demo")  # before anything is written
    claim_folder(s.out)
    deadline = started + 60.0 * s.minutes
    marks = [("start", started)]

    def mark(step: str) -> None:
        marks.append((step, clock()))

    make_data(s, log, on_progress)
    make_cache(s, log)
    mark("data")
    cfg = train_config(s, 1.0)
    probe = SpeedProbe(s, cfg["model"])
    costs = measure_post_costs(s, probe)
    n_predict = pending_predictions(s)
    reserve = costs.post(s, n_predict) + END_OF_TRAINING_SECONDS
    log(
        f"time box: {reserve:.0f} s kept to predict {n_predict} images "
        f"({costs.predict(s.tta, 1):.2f} s each) and report"
    )
    mark("measure")
    box = TrainTimeBox(
        deadline,
        lambda load: load * reserve,
        validation_seconds(s, cfg, costs),
        probe=probe,
        probe_seconds=costs.view * n_views(s.tta),
    )
    minutes = max(s.min_train_minutes, (deadline - clock() - reserve) / 60)
    callbacks = [time_box_callback(box)]
    if training_view is not None:
        from geopose.training.run import TrainingProgress

        callbacks.append(TrainingProgress(training_view))
    ckpt = train_model(s, minutes, log, callbacks=callbacks)
    mark("train")
    predicted = predict_test(s, ckpt, log, deadline, costs, box.load())
    mark("predict")
    scores = evaluate_test(s, log)
    mark("evaluate")
    rectify_some(s, log)
    mark("rectify")
    make_report(s, log)
    mark("report")
    total = (clock() - started) / 60
    scores["demo_minutes"] = round(total, 2)
    scores["demo"] = {
        "budget_minutes": s.minutes,
        "minutes": round(total, 3),
        "step_minutes": {
            step: round((t - marks[i][1]) / 60, 3) for i, (step, t) in enumerate(marks[1:])
        },
        "measured_seconds": {k: round(v, 4) for k, v in asdict(costs).items()},
        "train_load": round(box.load(), 2),
        "train_probes_seconds": [round(p, 3) for p in box.probes],
        "tta": predicted,
    }
    if total > 1.05 * s.minutes:
        log(
            f"demo: {total:.2f} min, over the {s.minutes:g} min budget: what cannot be cut "
            "(data, training setup, one step, prediction without TTA) took longer"
        )
    from geopose.io import write_text_atomic

    write_text_atomic(s.scores, json.dumps(scores, indent=1))
    return scores
