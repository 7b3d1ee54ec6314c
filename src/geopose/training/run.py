"""Run a training: the run folder, Lightning Trainer, callbacks, loggers, resume and init.

Run folder ``RUN/``::

    config.yaml                 the full resolved config (also in checkpoints/)
    folds.csv                   the folds (unless data.folds_csv names a shared one)
    checkpoints/config.yaml
    checkpoints/last.ckpt       latest state (exact resume: --resume RUN); the only "last"
    checkpoints/epoch=E-step=S-score=X.ckpt   the best ``train.save_top_k`` by val/score
    logs/csv/version_N/metrics.csv, logs/tensorboard/version_N/   one version per (re)start
    summary.json                steps, best score and checkpoint, wall time, per-rank checksums

:func:`plan_run` decides what a training does (start afresh or resume, with which config) for
``geopose train`` and ``geopose demo`` alike; :meth:`RunPlan.train` runs it (:func:`train`).

With ``train.progress`` the training shows one line (:class:`TrainingProgress`): the time
against ``train.max_minutes`` when a time budget bounds the run, else the steps against their
total, and the loss and latest validation score; Lightning's model summary only with
``geopose -v``.

Everything is checked (config, data, folds, devices, ``init_from``) before anything is written,
and every file is written atomically (a temporary file, then a rename): a run killed at any
moment resumes from its newest complete checkpoint, and the temporary files a kill leaves are
removed when the run (re)starts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal, Protocol, TextIO

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geopose.config import load_config, resolve_config, save_config
from geopose.errors import ConfigError, GeoposeDataError, GeoposeError, OutputExistsError
from geopose.logs import ENV as VERBOSITY_ENV
from geopose.models.model import without_pretrained
from geopose.runtime import reuse_freed_memory
from geopose.training.datamodule import GeoposeDataModule
from geopose.training.task import GeoposeTask

CKPT_DIR = "checkpoints"
LAST = "last.ckpt"
CONFIG = "config.yaml"
SUMMARY = "summary.json"
RUN_FILES = (CONFIG, "folds.csv", SUMMARY)
RUN_DIRS = (CKPT_DIR, "logs")


class TrainingDiverged(GeoposeError):
    """The loss or the gradients stopped being finite; the message says where."""


class GuardedCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes nothing once the NaN guard has stopped training, so the
    last checkpoint on disk is the last good state.

    Lightning's version counter is off: every callback that saves the last state writes
    ``last.ckpt`` itself (with it, a second callback, or one whose state a resumed checkpoint
    did not hold, found ``last.ckpt`` taken and wrote ``last-v1.ckpt``, leaving a stale
    ``last.ckpt`` behind), and a best checkpoint redone after a kill replaces its namesake.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(enable_version_counter=False, **kwargs)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the final state as ``last.ckpt`` unless a callback just did (Lightning does it
        only for a callback that never saved; a run stopped by ``max_steps`` in the middle of
        an epoch with validation would otherwise end with an older ``last.ckpt``)."""
        if not self.save_last or trainer.global_step == 0:
            return
        for cb in trainer.checkpoint_callbacks:
            if (
                isinstance(cb, GuardedCheckpoint)
                and cb.save_last
                and cb._last_global_step_saved == trainer.global_step
                and Path(cb._last_checkpoint_saved or "").name == LAST
            ):
                return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Step checkpoints skip the batch that validation follows: Lightning resumes a
        checkpoint saved on an epoch's last batch *after* that epoch's validation (it takes it
        for the one saved at validation end), so a kill before the validation finished would
        lose its score and best checkpoint. The best checkpoints' callback saves ``last.ckpt``
        once validation is done; a kill before then resumes from the step checkpoint before."""
        if self._every_n_train_steps and _validates_after_this_batch(trainer):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if getattr(trainer.lightning_module, "stopped_reason", None) is not None:
            return
        super()._save_checkpoint(trainer, filepath)


def _validates_after_this_batch(trainer: L.Trainer) -> bool:
    """Whether Lightning runs validation right after the current training batch (epoch-end
    validation every ``check_val_every_n_epoch`` epochs, the only schedule geopose uses)."""
    if not trainer.enable_validation:
        return False
    loop = trainer.fit_loop.epoch_loop
    every = trainer.check_val_every_n_epoch or 1
    return bool(loop.batch_progress.is_last_batch) and (trainer.current_epoch + 1) % every == 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target, flushed to disk, then
    renamed onto it: a kill during the write leaves the previous checkpoint whole.

    (Lightning's own writer stages the file in the system temporary folder and moves it: a
    copy, not a rename, when that folder is on another file system, e.g. a tmpfs ``/tmp``.)
    """

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        """Read a checkpoint to resume from as data (``geopose.io.checkpoint.load_torch_file``:
        plain types only, whatever ``weights_only`` Lightning asks for)."""
        from geopose.io.checkpoint import load_torch_file

        ckpt = load_torch_file(path, map_location=map_location or "cpu")
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise GeoposeDataError(path, "not a Lightning checkpoint (no state_dict)")
        return ckpt

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        from geopose.io import atomic_path

        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remove_stale_temps(out: Path) -> None:
    """Delete the temporary files that a killed run left in ``out`` and its checkpoints."""
    from geopose.io import remove_stale_temps

    for folder in (out, out / CKPT_DIR):
        remove_stale_temps(folder)


def gather_rank_checksums(trainer: L.Trainer, module: L.LightningModule) -> list[list[float]]:
    """A checksum of the model's weights from every rank (call it on every rank): DDP keeps
    them identical, a difference is a bug."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in module.model.parameters()])
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        local = torch.stack([flat.sum(), (flat * weights.remainder(97)).sum()])
    gathered = trainer.strategy.all_gather(local)
    return gathered.reshape(-1, 2).cpu().tolist()


class RankChecksum(Callback):
    """At the end of training, gather :func:`gather_rank_checksums` into
    ``pl_module.rank_checksums``."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.rank_checksums = gather_rank_checksums(trainer, pl_module)


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: AVX512-BF16 or AMX on x86, BF16 on Arm.

    There bf16-mixed trains about 1.6x faster than float32 (BENCHMARKS.md). oneDNN also runs bf16
    on AVX-512 CPUs without it (Skylake to Ice Lake Xeons), emulated and about 2.8x *slower* than
    float32, so oneDNN's own "bf16 supported" is not the question asked here.
    """
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        checks = [getattr(torch.cpu, n, None) for n in names]
        if all(callable(c) for c in checks):
            return any(bool(c()) for c in checks)
        flags = _linux_cpu_flags()
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _linux_cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _resolve_devices(t: dict) -> tuple[str, int | str, int, object, str]:
    """(accelerator, devices, num_nodes, strategy, precision) for the Trainer."""
    from lightning.pytorch.strategies import DDPStrategy

    accel = t["accelerator"]
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    accel = "gpu" if accel == "cuda" else accel
    if accel == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.accelerator: {t['accelerator']} asked for, but torch sees no CUDA GPU here"
        )
    devices, nodes = t["devices"], t["num_nodes"]
    if devices == "auto":
        # Under torchrun every process is one device of its node.
        local = os.environ.get("LOCAL_WORLD_SIZE")
        devices = int(local) if local else (torch.cuda.device_count() if accel == "gpu" else 1)
        world = os.environ.get("WORLD_SIZE")
        if local and world and nodes == 1:
            nodes = max(1, int(world) // int(local))
    precision = t["precision"]
    if precision == "auto":
        precision = "bf16-mixed" if accel == "gpu" or cpu_has_native_bf16() else "32-true"
    strategy: object = t["strategy"]
    if strategy == "auto" and devices * nodes > 1:
        strategy = "ddp"
    if strategy in ("ddp", "ddp_find_unused_parameters_true"):
        strategy = DDPStrategy(
            process_group_backend="nccl" if accel == "gpu" else "gloo",
            find_unused_parameters=strategy.endswith("true"),
        )
    return accel, devices, nodes, strategy, precision


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    from geopose.io import check_output_dir

    check_output_dir(out)  # OutputPathError (exit 2) when the run folder cannot be written
    if resume:
        if not (out / CKPT_DIR / LAST).is_file():
            raise GeoposeDataError(out / CKPT_DIR / LAST, "nothing to resume (no last checkpoint)")
        return
    ours = [out / n for n in RUN_FILES + RUN_DIRS if (out / n).exists()]
    if ours and not overwrite:
        raise OutputExistsError(out)
    for path in ours:  # remove only what a run writes
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _init_model(config: dict) -> torch.nn.Module | None:
    """The model ``train.init_from`` names (a geopose checkpoint, a published file or name),
    loaded; a published model's architecture replaces the recipe's ``model:`` section (its
    weights decide it). None without ``init_from``."""
    spec = config["train"]["init_from"]
    if not spec:
        return None
    from geopose.models import load_model

    model, init_cfg = load_model(spec)
    if "family" in init_cfg["model"]:
        config["model"] = dict(init_cfg["model"])
    return model


def _init_weights(task: GeoposeTask, model: torch.nn.Module, spec: str) -> None:
    """Copy ``model``'s weights (same architecture) into ``task``."""
    try:
        task.model.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as exc:
        have = {k.split(".", 1)[0] for k in model.state_dict()}
        want = {k.split(".", 1)[0] for k in task.model.state_dict()}
        names = sorted(m.removesuffix("_head") for m in want - have if m.endswith("_head"))
        hint = ""
        if names:
            sets = " ".join(f"model.{n}=null loss.{n}=null" for n in names)
            hint = f"; it has no {', '.join(names)} head: train without it (overrides: {sets})"
        raise GeoposeDataError(
            spec, f"weights do not fit this model{hint}: {str(exc)[:300]}"
        ) from exc


def _callbacks(
    cfg: dict, ckpt_dir: Path, validate: bool, own_progress: bool = True
) -> list[Callback]:
    """The run's callbacks: checkpoints, learning-rate log, checksums, EMA, and (with
    ``train.progress``, unless ``own_progress`` is False: the caller brings its own
    :class:`TrainingProgress`) the progress display."""
    t = cfg["train"]
    cbs: list[Callback] = [
        GuardedCheckpoint(
            dirpath=ckpt_dir,
            filename="epoch={epoch:03d}-step={step:06d}-score={val/score:.4f}"
            if validate
            else "epoch={epoch:03d}-step={step:06d}",
            auto_insert_metric_name=False,
            monitor="val/score" if validate else None,
            mode="max",
            save_top_k=t["save_top_k"] if validate else 0,
            save_last=True,
        ),
        LearningRateMonitor(logging_interval="step"),
        RankChecksum(),
    ]
    if t["ema_decay"] is not None:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        # Validation, checkpoints (state_dict; the raw weights under current_model_state, for
        # resuming) and the end of training use the averaged weights.
        cbs.append(EMAWeightAveraging(decay=t["ema_decay"]))
    if t["ckpt_every_steps"]:
        cbs.append(
            GuardedCheckpoint(
                dirpath=ckpt_dir,
                every_n_train_steps=t["ckpt_every_steps"],
                save_top_k=0,
                save_last=True,
            )
        )
    if t["progress"] and own_progress:
        cbs.append(TrainingProgress())
    return cbs


def train(
    config: dict,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list[Callback] | None = None,
    source=None,
) -> dict:
    """Train ``config`` (from :func:`geopose.config.resolve_config`) into the run folder ``out``.

    ``resume``: continue ``out/checkpoints/last.ckpt`` exactly (step, optimizer, scheduler,
    data position). Returns the summary (also written to ``out/summary.json``). Raises
    :class:`TrainingDiverged` when the NaN guard stops the run (the last good checkpoint stays).
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    out = Path(out)
    t = config["train"]
    rank0 = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0
    # Check everything before anything is written: a mistake leaves no run folder behind.
    init = None if resume else _init_model(config)
    L.seed_everything(t["seed"], workers=True, verbose=False)
    dm = GeoposeDataModule(config, out, source=source)
    dm.prepare(write=False, fresh=not resume)  # data, folds; folds.csv is written below
    if resume:  # the checkpoint has the count (an older one does not: the loaders' state then)
        dm.batches_taken = None
    validate = config["data"]["fold"] is not None and bool(dm.val_rows)
    if t["scheduler"] == "plateau" and not validate:
        raise ConfigError("train.scheduler: plateau needs validation (data.fold, with images)")
    accel, devices, nodes, strategy, precision = _resolve_devices(t)
    spe = dm.steps_per_epoch(devices * nodes)
    total = spe * t["epochs"] if t["max_steps"] <= 0 else min(t["max_steps"], spe * t["epochs"])
    # ImageNet weights only for a fresh start: resumed and initialised runs overwrite them.
    fresh = not resume and init is None
    model_cfg = config["model"] if fresh else without_pretrained(config["model"])
    task = GeoposeTask({**config, "model": model_cfg}, steps_per_epoch=spe, total_steps=total)
    if init is not None:
        _init_weights(task, init, t["init_from"])
    ckpt_dir = out / CKPT_DIR
    extra = list(callbacks or [])
    if not t["progress"]:  # no display: a progress bar passed in is left out too
        extra = [cb for cb in extra if not isinstance(cb, ProgressBar)]
    own_progress = not any(isinstance(cb, ProgressBar) for cb in extra)
    # Lightning's model summary (a table of modules) only with geopose -v, or outside the CLI.
    summary_table = t["progress"] and os.environ.get(VERBOSITY_ENV) != "0"
    loggers = [  # they create their folders when they first log
        CSVLogger(out / "logs", name="csv"),
        TensorBoardLogger(out / "logs", name="tensorboard", default_hp_metric=False),
    ]
    try:
        trainer = L.Trainer(
            accelerator=accel,
            devices=devices,
            num_nodes=nodes,
            strategy=strategy,
            precision=precision,
            plugins=[AtomicCheckpointIO()],
            max_epochs=t["epochs"],
            max_steps=t["max_steps"],
            max_time=timedelta(minutes=t["max_minutes"]) if t["max_minutes"] else None,
            gradient_clip_val=t["grad_clip"],
            gradient_clip_algorithm="norm",
            accumulate_grad_batches=t["accumulate"],
            check_val_every_n_epoch=t["val_every"],
            limit_val_batches=1.0 if validate else 0,
            num_sanity_val_steps=0,
            log_every_n_steps=t["log_every"],
            deterministic=t["deterministic"],
            benchmark=accel == "gpu" and not t["deterministic"],
            enable_progress_bar=t["progress"],
            enable_model_summary=summary_table,
            use_distributed_sampler=False,
            callbacks=_callbacks(config, ckpt_dir, validate, own_progress) + extra,
            logger=loggers,
            default_root_dir=out,
        )
    except (MisconfigurationException, ValueError) as exc:
        raise ConfigError(f"train: {exc}") from exc
    if accel == "gpu":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts
    else:
        reuse_freed_memory()  # no fresh pages for every activation (geopose.runtime)
    if rank0:
        _prepare_run_dir(out, resume, overwrite)
        _remove_stale_temps(out)
        dm.write_folds()
        save_config(config, out / CONFIG)
        save_config(config, ckpt_dir / CONFIG)
    started = time.time()
    # checkpoints/ holds config.yaml (and, on resume, the checkpoints): expected, not a problem.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    trainer.fit(task, datamodule=dm, ckpt_path=str(ckpt_dir / LAST) if resume else None)
    if getattr(task, "rank_checksums", None) is None and task.stopped_reason is None:
        # A resumed run that had already taken its last step trains no more: no train end.
        task.rank_checksums = gather_rank_checksums(trainer, task)
    summary = _summary(trainer, task, out, time.time() - started)
    if trainer.is_global_zero:
        from geopose.io import write_text_atomic

        write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1))
    if task.stopped_reason is not None:
        last = ckpt_dir / LAST
        kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint was saved yet"
        raise TrainingDiverged(f"training stopped: {task.stopped_reason}; {kept}")
    return summary


def _summary(trainer: L.Trainer, task: GeoposeTask, out: Path, seconds: float) -> dict:
    best = trainer.checkpoint_callback
    score = None
    if best is not None and best.best_model_score is not None:
        score = float(best.best_model_score)
        score = score if math.isfinite(score) else None
    return {
        "run": str(out),
        "global_step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
        "best_score": score,
        "best_checkpoint": best.best_model_path if best is not None and score is not None else None,
        "last_checkpoint": str(out / CKPT_DIR / LAST),
        "seconds": round(seconds, 2),
        "world_size": int(trainer.world_size),
        "rank_checksums": getattr(task, "rank_checksums", None),
        "stopped": task.stopped_reason,
    }


def check_resume_config(saved: dict, wanted: dict) -> None:
    """Refuse resuming with a different model or loss (the weights would not fit)."""
    for section in ("model", "loss"):
        if saved.get(section) != wanted.get(section):
            raise ConfigError(f"--resume: the {section} section differs from the run's config.yaml")


@dataclass(frozen=True)
class RunPlan:
    """What a training of the run folder ``out`` will do: start afresh (replacing a previous
    run's files when ``overwrite``) or ``resume`` its last checkpoint, with ``config``."""

    config: dict
    out: Path
    resume: bool
    overwrite: bool = False

    @property
    def precision(self) -> str:
        """The precision it will train in, as Lightning takes it ("auto" resolved)."""
        return _resolve_devices(self.config["train"])[4]

    def train(self, callbacks: list[Callback] | None = None) -> dict:
        """Run it (:func:`train`); returns the summary."""
        return train(
            self.config, self.out, resume=self.resume, overwrite=self.overwrite, callbacks=callbacks
        )


def has_ended(out: str | Path) -> bool:
    """Whether a training of the run folder ``out`` has ended (its summary is written)."""
    return (Path(out) / SUMMARY).is_file()


def can_resume(out: str | Path) -> bool:
    """Whether the run folder ``out`` holds a run to continue: its config and last checkpoint."""
    out = Path(out)
    return (out / CONFIG).is_file() and (out / CKPT_DIR / LAST).is_file()


def plan_run(
    out: str | Path | None,
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    data: str | Path | None = None,
    resume: bool | Literal["auto"] = False,
    init_from: str | None = None,
    overwrite: bool = False,
) -> RunPlan:
    """The one place that decides how a run starts: ``geopose train`` and ``geopose demo``.

    Fresh (``resume`` False): ``recipe`` + ``overrides`` (``data``: ``data.root``;
    ``init_from``: ``train.init_from``, a file made absolute) into ``out``. Resumed (``resume``
    True): ``out``'s saved ``config.yaml`` + ``overrides`` (``data`` moves the data); with a
    ``recipe``, its model and loss must be the saved ones. ``resume="auto"``: resumed when
    ``out`` has a run to continue (:func:`can_resume`), else fresh. Raises
    :class:`ConfigError` (or the config file's :class:`GeoposeDataError`) before anything is
    written.
    """
    overrides = list(overrides)
    if resume == "auto":
        resume = out is not None and can_resume(out)
    if resume:
        if out is None:
            raise ConfigError("nothing to resume: no run folder given")
        saved = load_config(Path(out) / CONFIG)
        extra = [f"data.root={data}"] if data is not None else []
        config = resolve_config(saved, extra + overrides)
        if recipe is not None:
            check_resume_config(saved, resolve_config(recipe, overrides))
    else:
        if recipe is None or out is None:
            raise ConfigError("geopose train needs --config RECIPE and --out RUN (or --resume RUN)")
        extra = [f"data.root={Path(data).resolve()}"] if data is not None else []
        if init_from is not None:
            spec = Path(init_from).resolve() if Path(init_from).exists() else init_from
            extra.append(f"train.init_from={spec}")
        config = resolve_config(recipe, extra + overrides)
    if config["data"]["root"] is None:
        raise ConfigError("no data: pass --data DATA (a data folder or a geopose prepare cache)")
    return RunPlan(config, Path(out), bool(resume), overwrite)
