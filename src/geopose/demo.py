"""``geopose demo``: the whole pipeline on synthetic data, on CPU, within a time budget.

synth -> train (``cpu_small``) -> predict with D4 TTA -> evaluate -> rectify a few -> report.
Each step leaves its output in the demo folder and is skipped (or resumed) when run again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from geopose.errors import GeoposeDataError, GeoposeError

DEMO_RECIPE = "cpu_small"


@dataclass
class DemoSettings:
    """What the demo makes and how long it may take.

    ``minutes`` is the wall-clock budget of the whole demo; training gets what the other steps
    are expected to leave (at least ``min_train_minutes``).
    """

    out: Path
    minutes: float = 10.0
    n_train: int = 400
    n_test: int = 24
    size: int = 256
    seed: int = 0
    tta: str = "d4"
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


def make_data(s: DemoSettings, log: Log) -> None:
    """Render the synthetic city set, unless a complete one is there."""
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
        progress=True,
    )


def train_config(s: DemoSettings, minutes: float, recipe: str = DEMO_RECIPE) -> dict:
    """A recipe (the demo's: ``cpu_small``) on the demo data, time-boxed to ``minutes``."""
    from geopose.config import resolve_config

    crop = min(resolve_config(recipe, [])["data"]["crop"], s.size)
    overrides = [
        f"data.root={s.data.resolve()}",
        f"data.crop={crop}",
        f"train.max_minutes={minutes:.3f}",
        f"train.seed={s.seed}",
        "data.workers=1",
        "train.ckpt_every_steps=20",
        *s.overrides,
    ]
    return resolve_config(recipe, overrides)


def train_model(s: DemoSettings, minutes: float, log: Log) -> Path:
    """Train (or resume, or reuse) the demo model; returns the checkpoint to predict with."""
    from geopose.training.run import train

    summary_path = s.run / "summary.json"
    if not summary_path.is_file():
        resume = (s.run / "checkpoints" / "last.ckpt").is_file()
        log(
            f"train: {'resuming' if resume else 'training'} {DEMO_RECIPE} for up to "
            f"{minutes:.1f} min"
        )
        train(train_config(s, minutes), s.run, resume=resume, overwrite=not resume)
    else:
        log(f"train: reusing {s.run}")
    summary = json.loads(summary_path.read_text())
    best = summary.get("best_checkpoint")
    ckpt = Path(best) if best and Path(best).is_file() else Path(summary["last_checkpoint"])
    log(f"train: {summary['global_step']} steps; predicting with {ckpt.name}")
    return ckpt


def predict_test(s: DemoSettings, ckpt: Path, log: Log) -> None:
    """Predict the test images with TTA (skips images already predicted)."""
    from geopose.inference.run import run_predict

    log(f"predict: {s.n_test} test images, TTA {s.tta}")
    # Scored predictions: the scale shrinks where the D4 views disagree on the direction.
    run_predict(
        [(ckpt, 1.0)], s.data / "test", s.pred, tta=s.tta, device="cpu", batch=8, shrink_scale=True
    )


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

    write_report(s.report, s.pred, s.data / "test_truth", s.data / "test", overwrite=True)
    log(f"report: {s.report}")


def estimated_post_minutes(s: DemoSettings) -> float:
    """Expected minutes of predict + evaluate + rectify + report on 2 CPU cores.

    Deliberately generous: 0.2 s per TTA view of a 256² image and 20 s for the report. In the
    measured default demo (24 test images, D4) these steps took about 20 s in all.
    """
    views = {"none": 1, "flip": 2, "d2": 4, "d4": 8}[s.tta]
    per_image = 0.2 * views * (s.size / 256) ** 2
    return (s.n_test * per_image + 20 + 2 * s.n_rectify) / 60


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


def run_demo(s: DemoSettings, log: Log = print) -> dict:
    """Run every step; returns the scores (the same numbers ``geopose evaluate`` prints)."""
    if s.minutes <= 0:
        raise GeoposeError(f"--minutes must be positive, got {s.minutes}")
    started = time.monotonic()
    claim_folder(s.out)
    make_data(s, log)
    elapsed = (time.monotonic() - started) / 60
    minutes = max(s.min_train_minutes, s.minutes - elapsed - estimated_post_minutes(s))
    ckpt = train_model(s, minutes, log)
    predict_test(s, ckpt, log)
    scores = evaluate_test(s, log)
    rectify_some(s, log)
    make_report(s, log)
    scores["demo_minutes"] = round((time.monotonic() - started) / 60, 2)
    return scores
