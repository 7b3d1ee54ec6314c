"""What a training shows while it runs: one line with the time against ``train.max_minutes``
when a time budget bounds the run, else the steps against their total, and the loss and the
latest validation score (:class:`TrainingProgress`, drawn by a :class:`TrainingView`)."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, replace
from typing import Protocol, TextIO

import lightning as L
from lightning.pytorch.callbacks import ProgressBar


def clock_text(seconds: float) -> str:
    """A duration as the progress display writes it: ``mm:ss``, or ``h:mm:ss`` from an hour."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


@dataclass(frozen=True)
class TrainingStatus:
    """One moment of a training, as its progress display shows it (:class:`TrainingProgress`).

    ``seconds``: training time so far, s (under ``train.max_minutes`` Lightning's ``Timer``,
    which a resumed run's checkpoint carries on; else this fit's own clock), taken at ``at``
    (``time.monotonic()`` s). ``budget_seconds``: ``train.max_minutes`` in s (None: no time
    budget). ``steps`` of ``total_steps`` optimizer steps (the step count the run ends at
    when its time does not end it first). ``validating``: (batches done, batches) while a
    validation runs.
    """

    seconds: float
    budget_seconds: float | None
    steps: int
    total_steps: int | None
    loss: float | None = None
    val_score: float | None = None
    validating: tuple[int, int] | None = None
    running: bool = True
    at: float = 0.0

    def later(self, now: float) -> TrainingStatus:
        """This status with its clock moved on to ``now`` (``time.monotonic()`` s) while the
        training runs: a display redraws the time between steps."""
        if not self.running or now <= self.at:
            return self
        return replace(self, seconds=self.seconds + now - self.at, at=now)

    def _step_share(self) -> float:
        return self.steps / self.total_steps if self.total_steps else 0.0

    def fraction(self) -> float:
        """Share (0-1) of the training done: of its steps, or of its time budget, whichever
        is further along (as the learning-rate schedule counts it)."""
        share = self._step_share()
        if self.budget_seconds:
            share = max(share, self.seconds / self.budget_seconds)
        return min(1.0, max(0.0, share))

    def shows_total(self) -> bool:
        """Whether the step total means something: without a time budget, or while the steps
        are further along than the time (a time-boxed run's total is only a bound, e.g. a
        million epochs' worth)."""
        if not self.total_steps:
            return False
        return not self.budget_seconds or self._step_share() > self.seconds / self.budget_seconds

    def text(self) -> str:
        """The status as one line, e.g. ``03:12 / 06:40  1,234 steps  loss 3.21  val score
        0.710`` (time-boxed) or ``03:12  1,234 / 2,200 steps  loss 3.21`` (by steps)."""
        time_text = clock_text(self.seconds)
        if self.budget_seconds:
            time_text += f" / {clock_text(self.budget_seconds)}"
        unit = "step" if self.steps == 1 and not self.shows_total() else "steps"
        steps = f"{self.steps:,}" + (f" / {self.total_steps:,}" if self.shows_total() else "")
        parts = [time_text, f"{steps} {unit}"]
        if self.loss is not None and self.validating is None:
            parts.append(f"loss {self.loss:.4g}")
        if self.val_score is not None:
            parts.append(f"val score {self.val_score:.3f}")
        if self.validating is not None:
            done, total = self.validating
            parts.append(f"validating {done}/{total}" if total else "validating")
        return "  ".join(parts)


class TrainingView(Protocol):
    """Draws a :class:`TrainingProgress`: ``start()`` once training starts, ``update(status)``
    as it goes (often: draw at your own pace), ``stop()`` once it ends (also on an error)."""

    def start(self) -> None: ...

    def update(self, status: TrainingStatus) -> None: ...

    def stop(self) -> None: ...


class LineView:
    """The default :class:`TrainingView`: one line on stderr, ``train`` then a bar and the
    status text. On a terminal it is redrawn in place (at most twice a second); elsewhere (a
    log file) it is written at each validation's end and at the end of training."""

    def __init__(self, stream: TextIO | None = None, redraw_seconds: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.redraw_seconds = redraw_seconds
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.drawn_at: float | None = None
        self.last: TrainingStatus | None = None

    def line(self, status: TrainingStatus, width: int) -> str:
        """``train ━━━━━━────  TEXT`` for a ``width``-column terminal: the bar takes the width
        less 70 columns (10-30; the text takes up to about 60)."""
        bar = min(30, max(10, width - 70))
        filled = round(status.fraction() * bar)
        return f"train {'━' * filled}{'─' * (bar - filled)}  {status.text()}"

    def _write(self, status: TrainingStatus, end: str) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        line = self.line(status, width)[: width - 1] if self.live else self.line(status, 80)
        self.stream.write(("\r" + line + "\x1b[K" if self.live else line) + end)
        self.stream.flush()

    def start(self) -> None:
        self.drawn_at = None

    def update(self, status: TrainingStatus) -> None:
        previous, self.last = self.last, status
        now = time.monotonic()
        if self.live:
            if self.drawn_at is None or now - self.drawn_at >= self.redraw_seconds:
                self._write(status, "")
                self.drawn_at = now
        elif previous is not None and previous.validating and not status.validating:
            self._write(status, "\n")

    def stop(self) -> None:
        if self.last is not None:
            self._write(replace(self.last, running=False), "\n")
        self.last = None


class TrainingProgress(ProgressBar):
    """Lightning's progress bar for geopose: one line for the whole training, never per
    epoch. Under ``train.max_minutes`` it reads the time against the budget, e.g. ``03:12 /
    06:40  1,234 steps  val score 0.710``; otherwise steps against their total. The
    status (:class:`TrainingStatus`) is computed here and drawn by ``view``
    (:class:`LineView` by default; the CLI draws with rich)."""

    def __init__(self, view: TrainingView | None = None) -> None:
        super().__init__()
        self.view = view if view is not None else LineView()
        self.enabled = True
        self.drawing = False
        self.started: float | None = None
        self.validating: tuple[int, int] | None = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def status(self, trainer: L.Trainer, pl_module: L.LightningModule) -> TrainingStatus:
        """The training's status now."""
        from lightning.pytorch.callbacks import Timer

        now = time.monotonic()
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None:
            seconds = float(timer.time_elapsed("train"))
        else:
            seconds = now - self.started if self.started is not None else 0.0
        config = getattr(pl_module, "config", None) or {}
        minutes = config.get("train", {}).get("max_minutes")
        total = getattr(pl_module, "total_steps", None)
        metrics = trainer.callback_metrics
        return TrainingStatus(
            seconds=seconds,
            budget_seconds=60.0 * minutes if minutes else None,
            steps=int(trainer.global_step),
            total_steps=int(total) if total else None,
            loss=_metric(metrics, "train/loss"),
            val_score=_metric(metrics, "val/score"),
            validating=self.validating,
            at=now,
        )

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.drawing:
            self.view.update(self.status(trainer, pl_module))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.monotonic()
        if self.enabled and not self.drawing:
            self.view.start()
            self.drawing = True
        self._update(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._update(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validating = (0, int(self.total_val_batches))
            self._update(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        if self.validating is not None:
            self.validating = (batch_idx + 1, self.validating[1])
            self._update(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validating is not None:
            self.validating = None
            self._update(trainer, pl_module)

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.drawing:
            self.validating = None
            self.view.update(replace(self.status(trainer, pl_module), running=False))
            self.drawing = False
            self.view.stop()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._stop(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop(trainer, pl_module)


def _metric(metrics: dict, key: str) -> float | None:
    """A logged metric as a float (None when not logged yet)."""
    value = metrics.get(key)
    return None if value is None else float(value)
