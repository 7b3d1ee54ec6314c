"""The demo's steps, each skipped (or resumed) when its output is there: synthetic data, its
training cache, the time-boxed training, prediction, scores, rectification, the report; and
:func:`run_demo`, which runs them within the budget."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopose.errors import GeoposeDataError, GeoposeError, OutputExistsError

if TYPE_CHECKING:
    from geopose.training.progress import TrainingView
    from geopose.types import ProgressFn

from geopose.demo.budget import (
    END_OF_TRAINING_SECONDS,
    MAX_REPORT_FIGURES_SHOWN,
    PostCosts,
    SpeedProbe,
    TrainTimeBox,
    TtaPlanner,
    clock,
    measure_post_costs,
    n_views,
    time_box_callback,
    validation_seconds,
)
from geopose.demo.settings import (
    CACHE_BYTES_PER_PIXEL,
    DATA_BYTES_PER_PIXEL,
    DEMO_RECIPE,
    RUN_BYTES,
    UNBOUNDED_EPOCHS,
    DemoSettings,
    Log,
)


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
    training crop is then a window read instead of a JPEG 2000 decode (a sizeable part of a
    2-core training step; BENCHMARKS.md, Training). Reuses a finished cache and resumes an
    unfinished one."""
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
    one image in 10 held out for validation, validated every 4 epochs (a validation costs
    nearly as much as an epoch's steps), and on 2 cores or fewer the crops are cut in the
    training process (a loader process takes a core from the model's two threads). The minutes
    end training, not the recipe's epoch count (``train.epochs`` is
    :data:`~geopose.demo.settings.UNBOUNDED_EPOCHS`; the learning rate's decay follows the time,
    :func:`geopose.training.task.lr_factor`).
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
    trained on (BENCHMARKS.md, Experiments behind `cpu_small` and the demo)."""
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
    steps, validation score: :class:`geopose.training.progress.TrainingProgress`; default: one
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
        from geopose.training.progress import TrainingProgress

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
