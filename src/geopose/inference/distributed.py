"""Sharded inference over many processes / GPUs (``torchrun --nproc_per_node N``).

Rank ``r`` of ``N`` predicts ``jobs[r::N]`` of the stem-sorted image list, so shards are
disjoint and every output is written by exactly one rank (with ``overwrite=False`` a second
writer would fail rather than overwrite). After its shard each rank meets the others at a
barrier; the per-rank summaries are gathered to rank 0, which reports and packs.
Backend: NCCL when every rank has a GPU, else gloo (CPU).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from geopose.types import env_rank

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that reports and packs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank (:func:`geopose.types.env_rank`), world size and local rank from the torchrun
    environment (a single process if unset)."""
    return DistInfo(
        rank=env_rank(),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Join the process group started by torchrun (if any) -> (info, this rank's device).

    ``device`` ``cuda`` becomes ``cuda:LOCAL_RANK`` and uses NCCL; ``cpu`` uses gloo.
    """
    info = env_info()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank if info.distributed else 0)
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info, dev


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s disjoint share of ``items`` (every ``world_size``-th from ``rank``)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    return list(items[rank::world_size])


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Each rank's picklable ``obj`` -> the list of all of them on rank 0 (None elsewhere)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's picklable ``obj`` on every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finalize() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
