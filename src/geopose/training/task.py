"""The LightningModule: ``self.model`` (from :func:`geopose.models.create_model`), the recipe's
loss, the competition score on validation, optimizers and schedules, and a guard that stops
training when the loss or the gradients stop being finite.

Checkpoint contract: ``hyper_parameters.config`` is the full resolved config and the model's
weights are ``state_dict`` keys ``model.<name>``.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from geopose.errors import ConfigError
from geopose.types import Batch, GeoposeOutput, item_seed


def lr_factor(
    step: int, train: dict, steps_per_epoch: int, total_steps: int, time_done: float = 0.0
) -> float:
    """Learning-rate multiplier at optimizer step ``step`` for the ``train:`` section's
    scheduler (``cosine_restarts``, ``cosine``, ``step`` or ``constant``; warm-up first).

    ``time_done`` is the share of a ``train.max_minutes`` budget used so far: a ``cosine``
    schedule follows whichever of steps and time is further along, so a time-boxed run ends
    its decay when its time runs out instead of stopping at a high learning rate.
    """
    warm = train["warmup_steps"]
    if step < warm:
        return (step + 1) / warm
    kind = train["scheduler"]
    floor = min(1.0, train["min_lr"] / train["lr"]) if train["lr"] > 0 else 0.0
    s = step - warm

    def cosine(t: float) -> float:
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))

    if kind == "cosine":
        return cosine(max(s / max(1, total_steps - warm), time_done))
    if kind == "cosine_restarts":
        period = max(1.0, train["restart_epochs"] * steps_per_epoch)
        mult = train["restart_mult"]
        while s >= period:
            s -= period
            period *= mult
        return cosine(s / period)
    if kind == "step":
        return train["gamma"] ** math.floor(step / max(1.0, train["step_epochs"] * steps_per_epoch))
    return 1.0


class GeoposeTask(L.LightningModule):
    """Model + loss + validation score for one resolved config (see :mod:`geopose.config`).

    ``steps_per_epoch`` and ``total_steps`` (optimizer steps) size the schedules.
    """

    def __init__(self, config: dict, steps_per_epoch: int = 1, total_steps: int = 1) -> None:
        super().__init__()
        from geopose.metrics import GeoposeScore
        from geopose.models import GeoposeLoss, create_model

        self.save_hyperparameters({"config": config})
        self.config = config
        self.model = create_model(config)
        self.loss = GeoposeLoss(config["loss"])
        self.val_score = GeoposeScore()
        self.steps_per_epoch, self.total_steps = int(steps_per_epoch), int(total_steps)
        self.stopped_reason: str | None = None
        self.last_good_step = 0

    @property
    def train_cfg(self) -> dict:
        return self.config["train"]

    def forward(self, batch: Batch) -> GeoposeOutput:
        image = batch["image"].contiguous(memory_format=torch.channels_last)
        return self.model(image, batch["gsd"], batch["city"])

    def on_fit_start(self) -> None:
        # channels_last: faster convolutions under oneDNN (CPU) and tensor cores (GPU).
        self.model.to(memory_format=torch.channels_last)

    # --- training ---------------------------------------------------------------------------

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> int | None:
        if self.stopped_reason is not None:
            return -1  # ends the epoch (and, with should_stop, the run)
        # Model randomness (dropout, drop-path) from (seed, rank, step): exact on resume.
        torch.manual_seed(
            item_seed(self.train_cfg["seed"], 10**6 + self.global_rank, self.global_step)
        )
        dm = self.trainer.datamodule
        if dm is not None and hasattr(dm, "mark_consumed"):
            dm.mark_consumed(self.current_epoch, batch_idx + 1)
        return None

    def _any_rank(self, flag: bool) -> bool:
        return bool(self.trainer.strategy.reduce_boolean_decision(flag, all=False))

    def _stop(self, reason: str) -> None:
        self.stopped_reason = reason
        self.trainer.should_stop = True

    def training_step(self, batch: Batch, batch_idx: int):
        out = self(batch)
        total, parts = self.loss(out, batch)
        if self._any_rank(not bool(torch.isfinite(total.detach()))):
            stems = ", ".join(batch["stem"][:4])
            self._stop(
                f"loss is {total.detach().item():.4g} (not finite) at step {self.global_step}, "
                f"epoch {self.current_epoch}, batch {batch_idx} (images {stems}, ...); "
                + ", ".join(f"{k}={v.detach().item():.4g}" for k, v in parts.items())
            )
            if self.trainer.world_size == 1:
                return None  # skip this optimizer step
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return total

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if self._any_rank(not bool(torch.isfinite(norm))):
            for p in self.parameters():
                p.grad = None  # the optimizer skips parameters without gradients
            if self.stopped_reason is None:
                self._stop(f"gradient norm is not finite at step {self.global_step}")
            return
        self.log("train/grad_norm", norm, batch_size=1)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.stopped_reason is None:
            self.last_good_step = self.global_step

    # --- validation -------------------------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if self.stopped_reason is not None:
            return
        out = self(batch)
        total, _ = self.loss(out, batch)
        bs = batch["image"].shape[0]
        self.log("val/loss", total, batch_size=bs, sync_dist=True)
        self.val_score.update_batch(out, batch)

    def on_validation_epoch_end(self) -> None:
        if self.stopped_reason is not None:
            self.val_score.reset()
            return
        values = self.val_score.compute()
        self.val_score.reset()
        for key, value in values.items():
            name = "val/score" if key == "score" else f"val/{key}"
            self.log(name, value.float(), prog_bar=key in ("score", "angle_error_deg"))

    # --- optimizers -------------------------------------------------------------------------

    def on_train_start(self) -> None:
        self._fit_started = time.monotonic()

    def _train_seconds(self) -> float | None:
        """Training seconds so far: Lightning's ``max_time`` Timer, which a checkpoint carries
        across ``--resume``, else this fit's own clock; None before training starts."""
        from lightning.pytorch.callbacks import Timer

        trainer = self._trainer
        for cb in getattr(trainer, "callbacks", None) or []:
            if isinstance(cb, Timer):
                return float(cb.time_elapsed("train"))
        started = getattr(self, "_fit_started", None)
        return None if started is None else time.monotonic() - started

    def time_done(self) -> float:
        """Share (0-1) of ``train.max_minutes`` used so far, resumed runs included (0 without a
        budget)."""
        budget = self.train_cfg.get("max_minutes")
        seconds = self._train_seconds()
        if not budget or seconds is None:
            return 0.0
        return min(1.0, seconds / (60.0 * budget))

    def progress(self, epoch: int | None = None) -> float:
        """Share (0-1) of training done: optimizer steps over ``total_steps`` (at the start of
        epoch ``epoch``, or now) or the share of ``train.max_minutes``, whichever is further."""
        step = self.global_step if epoch is None else epoch * self.steps_per_epoch
        return min(1.0, max(step / max(1, self.total_steps), self.time_done()))

    def _precision(self) -> str:
        """The trainer's precision (``32-true``, ``bf16-mixed``, ``16-mixed``...)."""
        trainer = self._trainer
        return str(getattr(trainer, "precision", "32-true")) if trainer is not None else ""

    def _fused(self) -> bool | None:
        """Adam's fused kernel (one pass over all parameters; on one CPU thread 6 ms against
        35 ms per step for cpu_small's 3.2 M parameters, BENCHMARKS.md), except under fp16
        mixed precision, whose gradient scaler cannot clip the gradients of a fused optimizer."""
        return None if self._precision().startswith("16") else True

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip as Lightning does, except under bf16-mixed with the fused optimizer: Lightning
        refuses to clip any optimizer that unscales its own gradients under mixed precision,
        a rule made for fp16's gradient scaler; bf16 autocast has no scaler, so the gradients
        are the true ones and are clipped here, by norm or value as the trainer says."""
        if not gradient_clip_val or self._precision() != "bf16-mixed":
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":  # a str enum in Lightning
            torch.nn.utils.clip_grad_value_(params, float(gradient_clip_val))
        else:
            torch.nn.utils.clip_grad_norm_(params, float(gradient_clip_val))

    def configure_optimizers(self):
        t = self.train_cfg
        params = [p for p in self.parameters() if p.requires_grad]
        if t["optimizer"] in ("adamw", "adam"):
            adam = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
            opt = adam(params, lr=t["lr"], weight_decay=t["weight_decay"], fused=self._fused())
        else:
            opt = torch.optim.SGD(
                params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"]
            )
        if t["scheduler"] == "plateau":
            if self.config["data"]["fold"] is None:
                raise ConfigError("train.scheduler=plateau needs validation (data.fold)")
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="max", factor=t["gamma"], patience=t["patience"]
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": sched, "monitor": "val/score", "interval": "epoch"},
            }
        spe, total = self.steps_per_epoch, self.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, t, spe, total, self.time_done())
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
