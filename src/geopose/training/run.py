"""Run a training: the run folder, the Lightning Trainer, loggers, resume and init.

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

Its parts: the checkpoint files (:mod:`geopose.training.checkpoints`), the devices and
precision (:mod:`geopose.training.devices`) and the progress line
(:mod:`geopose.training.progress`); Lightning's model summary only with ``geopose -v``.

Everything is checked (config, data, folds, devices, ``init_from``) before anything is written,
and every file is written atomically (a temporary file, then a rename): a run killed at any
moment resumes from its newest complete checkpoint, and the temporary files a kill leaves are
removed when the run (re)starts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar

from geopose.config import load_config, resolve_config, save_config
from geopose.errors import ConfigError, GeoposeDataError, GeoposeError, OutputExistsError
from geopose.logs import ENV as VERBOSITY_ENV
from geopose.models.model import without_pretrained
from geopose.runtime import reuse_freed_memory
from geopose.training.checkpoints import (
    CKPT_DIR,
    LAST,
    AtomicCheckpointIO,
    GuardedCheckpoint,
    remove_stale_temps,
)
from geopose.training.datamodule import GeoposeDataModule
from geopose.training.devices import resolve_devices
from geopose.training.progress import TrainingProgress
from geopose.training.task import GeoposeTask

CONFIG = "config.yaml"
SUMMARY = "summary.json"
RUN_FILES = (CONFIG, "folds.csv", SUMMARY)
RUN_DIRS = (CKPT_DIR, "logs")


class TrainingDiverged(GeoposeError):
    """The loss or the gradients stopped being finite; the message says where."""


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
    accel, devices, nodes, strategy, precision = resolve_devices(t)
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
        remove_stale_temps(out)
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
        return resolve_devices(self.config["train"])[4]

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
