"""The tables of every section of a config: ``model:`` and ``loss:`` (their keys are declared by
the parts of :mod:`geopose.models` that read them, gathered in ``geopose.models.model.MODEL``
and ``geopose.models.losses.LOSS``), ``data:`` and ``train:`` (declared here: the data set and
the training run read them).
"""

from __future__ import annotations

from typing import Any

from geopose.models.losses import LOSS
from geopose.models.model import MODEL
from geopose.schema import Kinds, Opt, Section, defaults_of

AUG_LEVELS = ("none", "light", "heavy")


DATA: dict[str, Opt] = {
    "root": Opt(None, "path", "data folder (competition layout) or prepared cache", nullable=True),
    "crop": Opt(512, "int", "training crop side, px (after augmentation)", min=32),
    "crop_early": Opt(
        None,
        "int",
        "crop side, px, for the first data.crop_early_share of training (null: data.crop)",
        min=32,
        nullable=True,
    ),
    "crop_early_share": Opt(
        0.0,
        "float",
        "share of training (of its steps or of train.max_minutes, whichever is further along) "
        "on data.crop_early crops, switched at epoch starts",
        min=0,
        max=1,
    ),
    "batch_size": Opt(8, "int", "training batch per process", min=1),
    "val_batch_size": Opt(1, "int", "validation batch (full images)", min=1),
    "workers": Opt(4, "int", "DataLoader worker processes per training process", min=0),
    "samples_per_epoch": Opt(
        None, "int", "crops per epoch (null: one per image)", min=1, nullable=True
    ),
    "folds": Opt(5, "int", "number of folds K", min=2),
    "fold": Opt(
        0, "int", "validation fold (null: train on all, no validation)", min=0, nullable=True
    ),
    "fold_scheme": Opt(
        "stratified",
        "str",
        "stratified (by city) | city (hold out cities)",
        choices=("stratified", "city"),
    ),
    "fold_seed": Opt(0, "int", "seed of the stratified split", min=0),
    "folds_csv": Opt(None, "path", "folds csv, written once (null: RUN/folds.csv)", nullable=True),
    "val_max_images": Opt(None, "int", "validate on at most N images", min=1, nullable=True),
    "downsample": Opt(
        None, "int", "train at 1/N resolution (null: as the data is)", min=1, nullable=True
    ),
    "aug": Opt("heavy", "str", "augmentation level for both kinds", choices=AUG_LEVELS),
    "geometric": Opt(
        None, "str", "geometric level (null: = aug)", choices=AUG_LEVELS, nullable=True
    ),
    "photometric": Opt(
        None, "str", "photometric level (null: = aug)", choices=AUG_LEVELS, nullable=True
    ),
    "d4": Opt(None, "bool", "random flips/transposes/quarter turns (null: level's)", nullable=True),
    "rotate_p": Opt(
        None, "float", "probability of an arbitrary-angle rotation", min=0, max=1, nullable=True
    ),
    "zoom_range": Opt(
        None, "range", "[lo, hi] zoom factors (gsd / f, scale * f)", min=0.05, nullable=True
    ),
    "zoom_p": Opt(None, "float", "probability of a zoom", min=0, max=1, nullable=True),
    "height_p": Opt(None, "float", "probability of height scaling", min=0, max=1, nullable=True),
    "height_range": Opt(None, "range", "[lo, hi] height factors k", min=0.1, nullable=True),
}

TRAIN: dict[str, Opt] = {
    "epochs": Opt(100, "int", "maximum epochs", min=1),
    "max_steps": Opt(-1, "int", "maximum optimizer steps (-1: by epochs)", min=-1),
    "max_minutes": Opt(None, "float", "wall-clock budget, minutes", min=0, nullable=True),
    "optimizer": Opt("adamw", "str", "optimizer", choices=("adamw", "adam", "sgd")),
    "lr": Opt(1e-4, "float", "peak learning rate", min=0),
    "weight_decay": Opt(1e-2, "float", "weight decay", min=0),
    "momentum": Opt(0.9, "float", "SGD momentum", min=0, max=1),
    "scheduler": Opt(
        "cosine_restarts",
        "str",
        "learning-rate schedule",
        choices=("cosine_restarts", "cosine", "step", "plateau", "constant"),
    ),
    "restart_epochs": Opt(25, "float", "cosine_restarts period, epochs", min=0.01),
    "restart_mult": Opt(1.0, "float", "cosine_restarts period growth per restart", min=1),
    "step_epochs": Opt(30, "float", "step: epochs between decays", min=0.01),
    "gamma": Opt(0.1, "float", "step/plateau: decay factor", min=0, max=1),
    "patience": Opt(5, "int", "plateau: epochs without improvement", min=0),
    "warmup_steps": Opt(0, "int", "linear warm-up steps", min=0),
    "min_lr": Opt(1e-6, "float", "floor of the cosine schedules", min=0),
    "grad_clip": Opt(1.0, "float", "max gradient norm (null: no clipping)", min=0, nullable=True),
    "accumulate": Opt(1, "int", "batches per optimizer step", min=1),
    "ema_decay": Opt(
        None,
        "float",
        "exponential moving average of the weights, decay per step (validated, checkpointed "
        "and predicted with; null: off)",
        min=0,
        lt=1,
        nullable=True,
    ),
    "precision": Opt(
        "auto",
        "str",
        "auto: bf16-mixed on GPU and on CPUs with native bf16, else 32-true",
        choices=("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"),
    ),
    "accelerator": Opt("auto", "str", "auto | cpu | gpu", choices=("auto", "cpu", "gpu", "cuda")),
    "devices": Opt("auto", "devices", "auto (all GPUs / torchrun's) or a count"),
    "num_nodes": Opt(1, "int", "nodes (torchrun / SLURM)", min=1),
    "strategy": Opt(
        "auto",
        "str",
        "auto | ddp | ddp_find_unused_parameters_true | ddp_spawn",
        choices=("auto", "ddp", "ddp_find_unused_parameters_true", "ddp_spawn"),
    ),
    "seed": Opt(0, "int", "seed of data order, augmentation and initialisation", min=0),
    "save_top_k": Opt(3, "int", "best checkpoints kept by validation score", min=0),
    "ckpt_every_steps": Opt(
        None, "int", "also refresh last.ckpt every N steps", min=1, nullable=True
    ),
    "val_every": Opt(1, "int", "validate every N epochs", min=1),
    "log_every": Opt(20, "int", "log every N steps", min=1),
    "progress": Opt(True, "bool", "rich progress bar"),
    "deterministic": Opt(False, "bool", "deterministic torch algorithms"),
    "init_from": Opt(
        None, "path", "start from these weights: a checkpoint, a published model", nullable=True
    ),
}

RUN_SECTIONS: dict[str, dict[str, Opt]] = {"data": DATA, "train": TRAIN}
"""The sections of a training run: a resolved config holds them with every key filled in."""

SECTIONS: dict[str, dict[str, Opt | Section | Kinds]] = {
    "model": MODEL,
    "loss": LOSS,
    **RUN_SECTIONS,
}
"""Every section of a config and its table."""


def defaults() -> dict[str, dict[str, Any]]:
    """The ``data:`` and ``train:`` sections with every default filled in."""
    return {name: defaults_of(spec) for name, spec in RUN_SECTIONS.items()}
