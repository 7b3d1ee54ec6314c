"""LightningDataModule: a source, its folds, the augmented training crops and the validation
images, sharded over DDP ranks by :class:`~geopose.data.dataset.EpochSampler`.

Where training is in its stream of epochs is the number of batches it has taken, kept in the
data module's checkpoint state: Lightning's epoch counter is not used for that, because it
falls one behind after a resume from a checkpoint saved at the last batch of an epoch, and a
second resume then repeated an epoch's batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from geopose.data import (
    EpochSampler,
    GeoposeDataset,
    ImageSource,
    ResumableLoader,
    collate,
    load_or_make_folds,
    make_folds,
    open_source,
    split_stems,
)
from geopose.errors import ConfigError
from geopose.transforms import GeometricAugment, PhotometricAugment
from geopose.types import env_rank


def geometric_from_config(data: dict) -> GeometricAugment:
    """The geometric augmentation a ``data:`` section asks for."""
    keys = ("d4", "rotate_p", "zoom_p", "zoom_range", "height_p", "height_range")
    return GeometricAugment(data["geometric"] or data["aug"], **{k: data[k] for k in keys})


def photometric_from_config(data: dict) -> PhotometricAugment:
    """The photometric augmentation a ``data:`` section asks for."""
    return PhotometricAugment(data["photometric"] or data["aug"], data["crop"])


_collate = collate  # the name tests and older callers use; the rule is geopose.data.collate


class _StreamSampler(EpochSampler):
    """An :class:`EpochSampler` placed by the number of batches training has taken (``taken``;
    None: as Lightning and the loader's state place it) when iteration starts.

    ``crop_for(epoch)``, when given, is the crop side (px) of that epoch's items: they are
    yielded as ``(index, seed, crop)``.
    """

    def __init__(
        self,
        *args,
        batch_size: int,
        taken: Callable[[], int | None],
        crop_for: Callable[[int], int] | None = None,
        **kw,
    ) -> None:
        super().__init__(*args, **kw)
        self.batch_size, self.taken, self.crop_for = int(batch_size), taken, crop_for

    def set_epoch(self, epoch: int) -> None:
        if self.taken() is None:
            super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int] | tuple[int, int, int]]:
        taken, per_epoch = self.taken(), len(self) // self.batch_size
        if taken is not None and per_epoch > 0:
            self.epoch, self.skip = taken // per_epoch, taken % per_epoch * self.batch_size
        if self.crop_for is None:
            yield from super().__iter__()
            return
        crop = int(self.crop_for(self.epoch))
        for i, seed in super().__iter__():
            yield i, seed, crop


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
        self._unwritten_folds: tuple[Path, pd.DataFrame] | None = None
        self.batches_taken: int | None = 0  # None: resumed from a checkpoint without the count

    @property
    def data(self) -> dict:
        return self.config["data"]

    def prepare(self, write: bool = True, fresh: bool = False) -> None:
        """Open the source and split it (call once, before building loaders).

        ``write=False`` writes nothing: new folds wait for :meth:`write_folds`. ``fresh`` makes
        new folds instead of reading ``RUN/folds.csv`` (a new run, replacing an old one's).
        """
        d = self.data
        if self.source is None:
            if not d["root"]:
                raise ConfigError("data.root: no data folder given (--data DATA)")
            self.source = open_source(d["root"], "train", d["downsample"])
        index = self.source.index
        if len(index) == 0:
            raise ConfigError(f"data.root: {d['root']} has no training images")
        folds_csv = Path(d["folds_csv"]) if d["folds_csv"] else self.run_dir / "folds.csv"
        rank0 = env_rank() == 0
        spec = (d["folds"], d["fold_scheme"], d["fold_seed"])
        if fresh and not d["folds_csv"]:
            folds, new = make_folds(index, *spec), True
        else:
            new = not folds_csv.exists()
            folds = load_or_make_folds(folds_csv, index, *spec, write=False)
        self._unwritten_folds = (folds_csv, folds) if new and rank0 else None
        if write:
            self.write_folds()
        train, val = split_stems(folds[folds["stem"].isin(set(index["stem"]))], d["fold"])
        if d["val_max_images"] is not None:
            val = val[: d["val_max_images"]]
        self.train_rows = self.source.position(train)
        self.val_rows = self.source.position(val)
        if not self.train_rows:
            raise ConfigError("data.fold: the training split is empty")

    def write_folds(self) -> None:
        """Write the folds :meth:`prepare` made (rank 0 only; nothing when they were read)."""
        if self._unwritten_folds is not None:
            from geopose.io import write_text_atomic

            path, folds = self._unwritten_folds
            write_text_atomic(path, folds.to_csv(index=False))
            self._unwritten_folds = None

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

    def crop_for_epoch(self, epoch: int) -> int:
        """Training crop side (px) in epoch ``epoch``: ``data.crop_early`` while the share of
        training done at the epoch's start (:meth:`GeoposeTask.progress`: steps, or time when
        time-boxed) is below ``data.crop_early_share``, else ``data.crop``. The early side is
        never above ``data.crop`` (a run that sets a smaller ``data.crop`` gets it throughout).

        Progressive resizing: small crops cost less per step (one CPU thread, 16 crops: 96²
        0.62 s against 128² 1.23 s), so early training takes more steps (BENCHMARKS.md).
        Without a trainer (tests, tools) training counts as not started. In a time-boxed DDP
        run each rank reads its own clock, so ranks may switch an epoch apart (DDP allows
        batches of different sides). The heavy photometric list's holes stay sized for
        ``data.crop``.
        """
        d = self.data
        if d["crop_early"] is None:  # the config sets both or neither
            return d["crop"]
        task = self.trainer.lightning_module if self.trainer is not None else None
        done = task.progress(epoch) if hasattr(task, "progress") else 0.0
        return min(d["crop_early"], d["crop"]) if done < d["crop_early_share"] else d["crop"]

    def train_dataloader(self) -> ResumableLoader:
        d = self.data
        rank, world = self._rank()
        self.steps_per_epoch(world)  # checks the batch fits
        sampler = _StreamSampler(
            len(self.train_rows),
            batch_size=d["batch_size"],
            taken=lambda: self.batches_taken,
            crop_for=self.crop_for_epoch if d["crop_early"] is not None else None,
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
            collate_fn=collate,
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
            collate_fn=collate,
        )

    def mark_consumed(self, epoch: int, batches: int) -> None:
        """Training takes batch ``batches`` (1-based) of epoch ``epoch``: count it (saved in
        checkpoints) and tell the training loader."""
        if self.batches_taken is not None:
            self.batches_taken += 1
        if self._train_loader is not None:
            self._train_loader.mark(epoch, batches)

    def state_dict(self) -> dict:
        return {"batches_taken": self.batches_taken}

    def load_state_dict(self, state_dict: dict) -> None:
        self.batches_taken = state_dict.get("batches_taken")
