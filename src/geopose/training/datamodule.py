"""LightningDataModule: a source, its folds, the augmented training crops and the validation
images, sharded over DDP ranks by :class:`~geopose.data.dataset.EpochSampler`."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from geopose.data.dataset import EpochSampler, GeoposeDataset, ResumableLoader
from geopose.data.folds import load_or_make_folds, split_stems
from geopose.data.sources import ImageSource, open_source
from geopose.errors import ConfigError
from geopose.transforms.geometric import GeometricAugment
from geopose.transforms.photometric import PhotometricAugment


def geometric_from_config(data: dict) -> GeometricAugment:
    """The geometric augmentation a ``data:`` section asks for."""
    keys = ("d4", "rotate_p", "zoom_p", "zoom_range", "height_p", "height_range")
    return GeometricAugment(data["geometric"] or data["aug"], **{k: data[k] for k in keys})


def photometric_from_config(data: dict) -> PhotometricAugment:
    """The photometric augmentation a ``data:`` section asks for."""
    return PhotometricAugment(data["photometric"] or data["aug"], data["crop"])


def _collate(items: list[dict]) -> dict:
    """Stack tensors; keep ``stem`` a list of strings."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "stem"}
    out["stem"] = [it["stem"] for it in items]
    return out


class GeoposeDataModule(L.LightningDataModule):
    """Training and validation loaders for a resolved config; ``run_dir`` holds the folds csv
    unless ``data.folds_csv`` names one."""

    def __init__(
        self, config: dict, run_dir: str | Path, source: ImageSource | None = None
    ) -> None:
        super().__init__()
        self.config, self.run_dir = config, Path(run_dir)
        self.source = source
        self.train_rows: list[int] = []
        self.val_rows: list[int] = []
        self._train_loader: ResumableLoader | None = None

    @property
    def data(self) -> dict:
        return self.config["data"]

    def prepare(self) -> None:
        """Open the source and split it (call once, before building loaders)."""
        d = self.data
        if self.source is None:
            if not d["root"]:
                raise ConfigError("data.root: no data folder given (--data DATA)")
            self.source = open_source(d["root"], "train", d["downsample"])
        index = self.source.index
        if len(index) == 0:
            raise ConfigError(f"data.root: {d['root']} has no training images")
        folds_csv = Path(d["folds_csv"]) if d["folds_csv"] else self.run_dir / "folds.csv"
        rank0 = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0  # as run.train
        folds = load_or_make_folds(
            folds_csv, index, d["folds"], d["fold_scheme"], d["fold_seed"], write=rank0
        )
        train, val = split_stems(folds[folds["stem"].isin(set(index["stem"]))], d["fold"])
        if d["val_max_images"] is not None:
            val = val[: d["val_max_images"]]
        self.train_rows = self.source.position(train)
        self.val_rows = self.source.position(val)
        if not self.train_rows:
            raise ConfigError("data.fold: the training split is empty")

    def setup(self, stage: str | None = None) -> None:
        if self.source is None or not self.train_rows:
            self.prepare()

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataset(self) -> GeoposeDataset:
        d = self.data
        return GeoposeDataset(
            self.source,
            self.train_rows,
            train=True,
            crop=d["crop"],
            geometric=geometric_from_config(d),
            photometric=photometric_from_config(d),
            seed=self.config["train"]["seed"],
        )

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Optimizer steps in one epoch for ``world_size`` processes."""
        d = self.data
        per_rank = -(-(d["samples_per_epoch"] or len(self.train_rows)) // world_size)
        batches = per_rank // d["batch_size"]
        if batches == 0:
            raise ConfigError(
                f"data.batch_size: {d['batch_size']} is larger than the {per_rank} training "
                "crops per process and epoch; lower it or raise data.samples_per_epoch"
            )
        return max(1, batches // self.config["train"]["accumulate"])

    def train_dataloader(self) -> ResumableLoader:
        d = self.data
        rank, world = self._rank()
        self.steps_per_epoch(world)  # checks the batch fits
        sampler = EpochSampler(
            len(self.train_rows),
            shuffle=True,
            seed=self.config["train"]["seed"],
            samples_per_epoch=d["samples_per_epoch"],
            rank=rank,
            world_size=world,
        )
        self._train_loader = ResumableLoader(
            self.train_dataset(),
            batch_size=d["batch_size"],
            sampler=sampler,
            num_workers=d["workers"],
            collate_fn=_collate,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            # Seeds come with the indices from the main process, so workers can persist.
            persistent_workers=d["workers"] > 0,
        )
        return self._train_loader

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_rows:
            return []
        rank, world = self._rank()
        rows = self.val_rows[rank::world]  # every image once over all ranks; metric sums ranks
        ds = GeoposeDataset(self.source, rows, train=False)
        return DataLoader(
            ds,
            batch_size=self.data["val_batch_size"],
            shuffle=False,
            num_workers=min(self.data["workers"], 2),
            collate_fn=_collate,
        )

    def mark_consumed(self, epoch: int, batches: int) -> None:
        """Tell the training loader how far training got (saved in checkpoints)."""
        if self._train_loader is not None:
            self._train_loader.mark(epoch, batches)
