"""The training / validation data set and its seeded, resumable, rank-aware sampler.

An item is the contract's dict :class:`geopose.types.Item` (``image`` float32 3×H×W in [0, 1],
``agl`` 1×H×W m, ``mag`` px, ``direction`` (sin a, cos a), ``scale``, ``gsd``, ``city`` index,
``stem``); :func:`collate` stacks items into a :class:`geopose.types.Batch`.

Training items are random ``crop``×``crop`` windows, augmented; validation items are whole
images, untouched. Each training item is drawn from its own seed (``(index, seed)`` pairs made
by :class:`EpochSampler`), so a sample depends only on (base seed, epoch, position), never on
which worker made it: runs are reproducible and resume exactly. A sampler may add the crop side
(``(index, seed, crop)``) to change it during training: the crop travels with the index, so
persistent worker processes need no message.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from geopose.data.base import ImageSource
from geopose.transforms.geometric import GeometricAugment, GeometricPlan
from geopose.transforms.photometric import PhotometricAugment
from geopose.types import Batch, Item, Sample, image_to_unit, item_seed

__all__ = [
    "EpochSampler",
    "GeoposeDataset",
    "ResumableLoader",
    "collate",
    "item_seed",  # owned by geopose.types; re-exported
    "to_item",
]


def to_item(sample: Sample, city: int, stem: str) -> Item:
    """A :class:`geopose.types.Sample` -> the contract's item dict of tensors."""
    hwc = image_to_unit(sample.rgb)
    image = torch.from_numpy(hwc).permute(2, 0, 1)  # a 3×H×W view; collating makes it contiguous
    agl = sample.agl
    if agl is None:
        agl = np.full(sample.shape, np.nan, np.float32)
    agl_t = torch.from_numpy(np.ascontiguousarray(agl, dtype=np.float32))[None]
    scale = np.float32(sample.scale)
    return {
        "image": image,
        "agl": agl_t,
        "mag": agl_t * scale,
        "direction": torch.tensor(
            [math.sin(sample.angle), math.cos(sample.angle)], dtype=torch.float32
        ),
        "scale": torch.tensor(scale, dtype=torch.float32),
        "gsd": torch.tensor(sample.gsd, dtype=torch.float32),
        "city": torch.tensor(city, dtype=torch.int64),
        "stem": stem,
    }


def collate(items: list[Item]) -> Batch:
    """Stack the items' tensors along a new batch axis; ``stem`` becomes a list of strings."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "stem"}
    out["stem"] = [it["stem"] for it in items]
    return out


class GeoposeDataset(Dataset):
    """Images ``rows`` (positions in ``source.index``) of a source.

    ``train=True``: random ``crop`` windows through ``geometric`` then ``photometric``
    augmentation; ``train=False``: whole images. ``dataset[i]``, ``dataset[(i, seed)]`` or
    ``dataset[(i, seed, crop)]`` (that item's crop side, px, instead of ``crop``).
    """

    def __init__(
        self,
        source: ImageSource,
        rows: list[int],
        train: bool = True,
        crop: int = 512,
        geometric: GeometricAugment | None = None,
        photometric: PhotometricAugment | None = None,
        seed: int = 0,
    ) -> None:
        self.source, self.rows, self.train, self.crop = source, list(rows), train, int(crop)
        self.geometric = geometric or GeometricAugment("none")
        self.photometric = photometric or PhotometricAugment("none")
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int] | tuple[int, int, int]) -> Item:
        if not isinstance(item, tuple):
            item = (item, item_seed(self.seed, 0, item))
        i, seed, crop = item if len(item) == 3 else (*item, self.crop)
        row = self.source.row(self.rows[i])
        handle = self.source.open(self.rows[i])
        pose = dict(angle=float(row["angle"]), scale=float(row["scale"]), gsd=float(row["gsd"]))
        if not self.train:
            rgb, agl = handle.read_all()
            return to_item(Sample(rgb, agl, **pose), int(row["city_idx"]), row["stem"])
        rng = np.random.default_rng(seed)
        plan: GeometricPlan = self.geometric.sample(rng).limited(handle.agl_max)
        side = plan.source_side(crop, pose["scale"], handle.agl_max)
        rows, cols = handle.shape
        r0 = _start(rng, rows, side)
        c0 = _start(rng, cols, side)
        rgb, agl = handle.read(r0, c0, side, side)
        sample = plan.apply(Sample(rgb, agl, **pose), crop, handle.agl_max)
        sample = sample.replace(rgb=self.photometric(sample.rgb, int(rng.integers(2**31))))
        return to_item(sample, int(row["city_idx"]), row["stem"])


def _start(rng: np.random.Generator, size: int, side: int) -> int:
    """Random window start along one axis; centred (padded) when the image is smaller."""
    if size <= side:
        return (size - side) // 2
    return int(rng.integers(0, size - side + 1))


class EpochSampler(Sampler):
    """Yields ``(index, seed)`` pairs: a seeded permutation (repeated to ``samples_per_epoch``
    when asked) split across DDP ranks; ``set_epoch`` reshuffles; ``skip`` resumes mid-epoch.

    Every rank gets ``len(self)`` items (the permutation is padded by wrapping round).
    """

    def __init__(
        self,
        n: int,
        shuffle: bool = True,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.shuffle, self.seed = int(n), shuffle, int(seed)
        self.total = int(samples_per_epoch or n)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return math.ceil(self.total / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (a resumed position in the same epoch is kept)."""
        if epoch != self.epoch:
            self.epoch, self.skip = int(epoch), 0

    def order(self) -> np.ndarray:
        """This epoch's item order for all ranks (indices into the data set)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        reps = math.ceil(self.total / self.n)
        parts = [
            rng.permutation(self.n) if self.shuffle else np.arange(self.n) for _ in range(reps)
        ]
        order = np.concatenate(parts)[: self.total]
        padded = len(self) * self.world_size
        return np.resize(order, padded)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        positions = np.arange(self.rank, len(order), self.world_size)
        skip, self.skip = self.skip, 0
        for pos in positions[skip:]:
            yield int(order[pos]), item_seed(self.seed, self.epoch, int(pos))


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that Lightning can checkpoint: its state is
    (epoch, batches consumed), set by :meth:`mark` as training takes batches."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = 0
        self.consumed_epoch = 0

    def mark(self, epoch: int, batches: int) -> None:
        """Record that ``batches`` batches of epoch ``epoch`` have been trained on."""
        self.consumed_epoch, self.consumed = int(epoch), int(batches)

    def state_dict(self) -> dict:
        return {"epoch": self.consumed_epoch, "batches": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        sampler: EpochSampler = self.sampler
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):
            epoch, batches = epoch + 1, 0
        sampler.epoch, sampler.skip = epoch, batches * int(self.batch_size or 1)
        self.mark(epoch, batches)
