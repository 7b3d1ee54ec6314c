"""The run's checkpoint files: where they are, written atomically, read as data, and never
written after the NaN guard stopped a run.

``checkpoints/last.ckpt`` is the latest state (exact resume) and the only "last";
``checkpoints/epoch=E-step=S-score=X.ckpt`` the best ``train.save_top_k`` by ``val/score``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geopose.errors import GeoposeDataError

CKPT_DIR = "checkpoints"
"""The run folder's checkpoint folder."""
LAST = "last.ckpt"
"""The latest state's file name (exact resume)."""


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


def remove_stale_temps(out: Path) -> None:
    """Delete the temporary files that a killed run left in ``out`` and its checkpoints."""
    from geopose.io import remove_stale_temps as remove_in

    for folder in (out, out / CKPT_DIR):
        remove_in(folder)
