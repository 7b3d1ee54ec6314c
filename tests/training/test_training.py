"""Training on tiny synthetic data on CPU: learning, validation and checkpoints, exact resume,
the NaN guard, initialisation from a checkpoint, 2-process gloo DDP, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from geopose.config import resolve_config
from geopose.errors import GeoposeDataError
from geopose.synth.dataset import write_dataset
from geopose.training import TrainingDiverged, train

BASE = [
    "data.crop=64",
    "data.batch_size=4",
    "data.workers=0",
    "data.folds=4",
    "train.progress=false",
    "train.log_every=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Test machines may have few, shared cores: one intra-op thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(out, 16, 2, 96, seed=5)
    return out


def config(data_dir: Path, *overrides: str) -> dict:
    return resolve_config("cpu_small", [f"data.root={data_dir}", *BASE, *overrides])


class Recorder(L.Callback):
    """Training loss of every optimizer step, and the parameters at the start and the end."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.initial: dict[str, torch.Tensor] = {}
        self.final: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        self.final = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs is not None:
            self.losses[trainer.global_step] = float(outputs["loss"])


class Kill(L.Callback):
    """Raise (as a crash or kill would) before the batch after optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def _fixed_batch_loss(cfg: dict, weights: dict[str, torch.Tensor]) -> float:
    """The recipe's loss on 8 fixed un-augmented training crops (batch statistics, as in
    training) for a model with ``weights``."""
    from geopose.data import FolderSource, GeoposeDataset
    from geopose.models import GeoposeLoss, create_model
    from geopose.training.datamodule import _collate

    source = FolderSource(cfg["data"]["root"])
    ds = GeoposeDataset(source, list(range(8)), train=True, crop=64)
    batch = _collate([ds[(i, 100 + i)] for i in range(8)])
    model = create_model(cfg)
    model.load_state_dict(weights)
    model.train()
    with torch.no_grad():
        total, _ = GeoposeLoss(cfg["loss"])(
            model(batch["image"], batch["gsd"], batch["city"]), batch
        )
    return float(total)


@pytest.mark.slow
def test_loss_decreases_and_the_run_folder_is_complete(data_dir, tmp_path):
    cfg = config(
        data_dir,
        "data.fold=null",
        "data.aug=none",
        "train.max_steps=24",
        "train.lr=2e-3",
        "train.scheduler=constant",
        # cpu_small weighs its facade ramps 1000×, and they are learned over hundreds of steps;
        # at this weight the 24 steps measure the heights (and still train the ramps).
        "loss.ramp.weight=10",
    )
    rec = Recorder()
    summary = train(cfg, tmp_path / "run", callbacks=[rec])
    steps = sorted(rec.losses)
    assert summary["global_step"] == 24 and steps[-1] == 24
    assert np.mean([rec.losses[s] for s in steps[-6:]]) < np.mean(
        [rec.losses[s] for s in steps[:6]]
    )
    # On one fixed batch of training crops, the trained weights beat the initial ones.
    before, after = _fixed_batch_loss(cfg, rec.initial), _fixed_batch_loss(cfg, rec.final)
    assert after < 0.6 * before, (before, after)
    run = tmp_path / "run"
    for name in (
        "config.yaml",
        "checkpoints/config.yaml",
        "checkpoints/last.ckpt",
        "summary.json",
        "folds.csv",
    ):
        assert (run / name).is_file(), name
    assert list((run / "logs" / "csv").glob("version_*/metrics.csv"))
    assert list((run / "logs" / "tensorboard").glob("version_*/events.*"))
    # The checkpoint contract: full config in hyper_parameters, weights under model.
    from geopose.models import load_checkpoint

    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"] == cfg
    model, saved = load_checkpoint(run / "checkpoints/last.ckpt")
    assert saved["train"]["max_steps"] == 24 and saved["model"] == cfg["model"]


class GradNorms(L.Callback):
    """The gradients' total norm as the optimizer stepped with them (read before they are
    zeroed for the next step, i.e. after clipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            self.norms.append(
                float(
                    torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in grads])
                    )
                )
            )


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adam_trains_with_clipped_gradients(data_dir, tmp_path, precision):
    """Every precision a CPU or GPU run picks trains with the fused AdamW and clips the
    gradients to ``train.grad_clip`` (Lightning refuses to clip a fused optimizer under
    bf16-mixed; geopose clips there itself)."""
    clip = 1e-3  # far below any gradient norm of a training step: every step is clipped
    cfg = config(
        data_dir,
        "data.fold=null",
        "train.max_steps=3",
        f"train.precision={precision}",
        f"train.grad_clip={clip}",
    )
    norms = GradNorms()
    summary = train(cfg, tmp_path / "run", callbacks=[norms])
    assert summary["global_step"] == 3
    assert len(norms.norms) >= 2  # the grads of steps 1 and 2, seen before the next zeroing
    # Clipped to the norm exactly (not merely small): clipping acted on every step.
    assert all(0.99 * clip <= n <= 1.001 * clip for n in norms.norms), norms.norms


@pytest.mark.slow
def test_validation_score_and_best_checkpoints(data_dir, tmp_path):
    cfg = config(
        data_dir,
        "data.aug=light",
        "train.epochs=3",
        "train.save_top_k=2",
        "data.samples_per_epoch=8",
    )
    summary = train(cfg, tmp_path / "run")
    metrics = pd.concat(pd.read_csv(p) for p in (tmp_path / "run/logs/csv").glob("*/metrics.csv"))
    scores = metrics["val/score"].dropna()
    assert len(scores) == 3 and np.isfinite(scores).all()
    for key in ("val/angle_error_deg", "val/r2_agl", "val/r2_vflow", "val/loss", "lr-AdamW"):
        assert metrics[key].notna().any(), key
    ckpts = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("epoch=*.ckpt"))
    assert len(ckpts) == 2 and (tmp_path / "run/checkpoints/last.ckpt").is_file()
    assert summary["best_score"] == pytest.approx(float(scores.max()), abs=1e-6)
    assert f"score={scores.max():.4f}" in summary["best_checkpoint"]


@pytest.mark.slow
@pytest.mark.parametrize("ema", [None, 0.8])
def test_kill_and_resume_continues_exactly(data_dir, tmp_path, ema):
    # 3 steps per epoch: the kill after step 4 is in the middle of epoch 1. With a moving
    # average of the weights, the average and the raw weights both resume.
    over = (
        f"train.ema_decay={'null' if ema is None else ema}",
        "data.fold=null",
        "data.aug=heavy",
        "data.samples_per_epoch=12",
        "train.max_steps=7",
        "train.ckpt_every_steps=2",
        "train.lr=1e-3",
        "train.warmup_steps=2",
        "train.restart_epochs=1",
    )
    full = Recorder()
    train(config(data_dir, *over), tmp_path / "full", callbacks=[full])
    with pytest.raises(RuntimeError, match="killed"):
        train(config(data_dir, *over), tmp_path / "cut", callbacks=[Kill(at=4)])
    ckpt = torch.load(tmp_path / "cut/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    resumed = Recorder()
    summary = train(config(data_dir, *over), tmp_path / "cut", resume=True, callbacks=[resumed])
    assert summary["global_step"] == 7 and sorted(resumed.losses) == [5, 6, 7]
    for step in (5, 6, 7):  # the same next batches, the same losses
        assert resumed.losses[step] == pytest.approx(full.losses[step], rel=1e-5, abs=1e-6)
    a, b = (
        _weights(tmp_path / "full/checkpoints/last.ckpt"),
        _weights(tmp_path / "cut/checkpoints/last.ckpt"),
    )
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


class CropSides(L.Callback):
    """The crop side of every training batch, by optimizer step."""

    def __init__(self) -> None:
        self.sides: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.sides[trainer.global_step] = int(batch["image"].shape[-1])


@pytest.mark.parametrize(
    ("early", "share", "side"), [("32", "0.5", 32), ("96", "0.5", 64), ("null", "0", 64)]
)
def test_early_crops_are_never_above_the_crop(data_dir, tmp_path, early, share, side):
    from geopose.training.datamodule import GeoposeDataModule

    cfg = config(data_dir, f"data.crop_early={early}", f"data.crop_early_share={share}")
    assert GeoposeDataModule(cfg, tmp_path).crop_for_epoch(0) == side  # data.crop=64


@pytest.mark.slow
def test_progressive_crops_switch_by_progress_in_workers_and_resume_exactly(data_dir, tmp_path):
    # 3 steps per epoch, 9 steps: epochs 0 and 1 start at 0 and 1/3 of training (< 0.5, 32 px
    # crops), epoch 2 at 2/3 (64 px). A loader process keeps its data set: the side comes with
    # the indices. The kill after step 4 is mid-epoch 1; the resume takes the same batches.
    over = (
        "data.fold=null",
        "data.samples_per_epoch=12",
        "data.workers=1",
        "data.crop_early=32",
        "data.crop_early_share=0.5",
        "train.max_steps=9",
        "train.ckpt_every_steps=2",
        "train.lr=1e-3",
    )
    full, sides = Recorder(), CropSides()
    train(config(data_dir, *over), tmp_path / "full", callbacks=[full, sides])
    assert sides.sides == {s: 32 if s < 6 else 64 for s in range(9)}
    with pytest.raises(RuntimeError, match="killed"):
        train(config(data_dir, *over), tmp_path / "cut", callbacks=[Kill(at=4)])
    resumed, later = Recorder(), CropSides()
    train(config(data_dir, *over), tmp_path / "cut", resume=True, callbacks=[resumed, later])
    assert later.sides == {s: sides.sides[s] for s in range(4, 9)}
    for step in range(5, 10):
        assert resumed.losses[step] == pytest.approx(full.losses[step], rel=1e-5, abs=1e-6)


class StepWeights(L.Callback):
    """The raw (trained) parameters after every optimizer step."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[trainer.global_step] = {
            k: v.detach().clone() for k, v in pl_module.model.named_parameters()
        }


@pytest.mark.slow
def test_ema_weights_are_checkpointed_predicted_with_and_resumable(data_dir, tmp_path):
    decay = 0.6
    over = ("data.fold=null", "train.max_steps=3", "train.lr=1e-2", f"train.ema_decay={decay}")
    rec = StepWeights()
    train(config(data_dir, *over), tmp_path / "run", callbacks=[rec])
    w1, w2, w3 = (rec.steps[i] for i in (1, 2, 3))
    # The average starts at step 1's weights, then ema <- d ema + (1 - d) w after every step.
    final = _weights(tmp_path / "run/checkpoints/last.ckpt")
    moved = 0
    for k in w3:
        expect = decay * (decay * w1[k] + (1 - decay) * w2[k]) + (1 - decay) * w3[k]
        torch.testing.assert_close(final[f"model.{k}"], expect)
        moved += not torch.allclose(expect, w3[k])
    assert moved > len(w3) // 2  # the average is not the last weights
    from geopose.models import load_checkpoint  # prediction loads the average

    model, _ = load_checkpoint(tmp_path / "run/checkpoints/last.ckpt")
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), final[f"model.{k}"])
    # A checkpoint during training also keeps the raw weights, which a resume continues from.
    with pytest.raises(RuntimeError, match="killed"):
        train(
            config(data_dir, *over, "train.ckpt_every_steps=2"),
            tmp_path / "cut",
            callbacks=[Kill(at=2)],
        )
    ckpt = torch.load(tmp_path / "cut/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    for k in w2:
        torch.testing.assert_close(ckpt["current_model_state"][f"model.{k}"], w2[k])
        torch.testing.assert_close(
            ckpt["state_dict"][f"model.{k}"], decay * w1[k] + (1 - decay) * w2[k]
        )


class Poison(L.Callback):
    """Turn the batch of optimizer step ``at`` into NaN images; keep the weights before it
    and at the end of training."""

    def __init__(self, at: int) -> None:
        self.at, self.before, self.after = at, None, None

    @staticmethod
    def _copy(module) -> dict[str, torch.Tensor]:
        # Parameters only: the poisoned forward pass did update BatchNorm's running statistics
        # (in memory), which is why nothing is saved after it.
        return {k: v.detach().clone() for k, v in module.model.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            batch["image"][0] = float("nan")
            self.before = self._copy(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.after = self._copy(pl_module)


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    cfg = config(
        data_dir,
        "data.fold=null",
        "data.aug=none",
        "train.max_steps=20",
        "train.ckpt_every_steps=2",
    )
    poison = Poison(at=3)
    with pytest.raises(TrainingDiverged, match=r"not finite\) at step 3.*last good checkpoint"):
        train(cfg, tmp_path / "run", callbacks=[poison])
    last = tmp_path / "run/checkpoints/last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # nothing written after the poisoned batch
    assert all(torch.isfinite(v).all() for v in _weights(last).values())
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert (
        summary["global_step"] == 4 and "not finite" in summary["stopped"]
    )  # skipped step counted
    # The poisoned step was skipped: the parameters in memory are those from before it.
    assert poison.before is not None and poison.after is not None
    for k, v in poison.before.items():
        torch.testing.assert_close(poison.after[k], v, rtol=0, atol=0)


def test_batches_do_not_depend_on_the_number_of_workers(data_dir, tmp_path):
    from geopose.training.datamodule import GeoposeDataModule

    batches = []
    for workers in (0, 2):
        cfg = config(data_dir, "data.aug=heavy", f"data.workers={workers}")
        dm = GeoposeDataModule(cfg, tmp_path / f"w{workers}")
        dm.prepare()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(1)
        batches.append(next(iter(loader)))
    assert batches[0]["stem"] == batches[1]["stem"]
    for key in ("image", "agl", "direction", "scale", "gsd"):
        torch.testing.assert_close(batches[0][key], batches[1][key], equal_nan=True)


@pytest.mark.slow
def test_init_from_loads_the_weights(data_dir, tmp_path):
    from geopose.models import load_model
    from geopose.training.run import _init_weights
    from geopose.training.task import GeoposeTask

    cfg = config(data_dir, "data.fold=null", "data.aug=none", "train.max_steps=2")
    train(cfg, tmp_path / "a")
    last = tmp_path / "a/checkpoints/last.ckpt"
    task = GeoposeTask(cfg)
    model, _ = load_model(last)
    _init_weights(task, model, str(last))
    for k, v in _weights(last).items():
        torch.testing.assert_close(task.state_dict()[k], v)
    other = GeoposeTask(resolve_config("cpu_small", ["model.decoder.channels=[32,16,8]"]))
    with pytest.raises(GeoposeDataError, match="do not fit"):
        _init_weights(other, model, str(last))


@pytest.mark.slow
def test_two_process_gloo_ddp_agrees_on_weights(data_dir, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "geopose.cli.main",
        "train",
        "--config",
        "cpu_small",
        "--data",
        str(data_dir),
        "--out",
        str(run),
        *BASE,
        "data.fold=null",
        "data.aug=light",
        "train.max_steps=3",
        "data.batch_size=2",
        "train.accelerator=cpu",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    sums = np.array(summary["rank_checksums"])
    assert sums.shape == (2, 2)
    np.testing.assert_allclose(sums[0], sums[1], rtol=0, atol=0)
    assert (run / "checkpoints/last.ckpt").is_file()


# --- the CLI -----------------------------------------------------------------------------------


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from geopose.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.mark.slow
def test_cli_trains_resumes_and_refuses(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        "cpu_small",
        "--data",
        str(data_dir),
        "--out",
        str(run),
        *BASE,
        "data.fold=null",
        "data.aug=none",
        "train.max_steps=2",
    ]
    code, out, err = _cli(capsys, *args)
    assert code == 0, err
    assert "2 steps" in out
    code, _, err = _cli(capsys, *args)
    assert code == 1 and "exists already" in err and "--overwrite" in err
    code, out, err = _cli(capsys, "train", "--resume", str(run), "train.max_steps=4")
    assert code == 0, err
    assert "4 steps" in out
    saved = resolve_config(str(run / "config.yaml"))
    assert saved["train"]["max_steps"] == 4
    last = run / "checkpoints/last.ckpt"
    fine = tmp_path / "fine"
    code, out, err = _cli(capsys, *args[:6], str(fine), *args[7:], "--init-from", str(last))
    assert code == 0, err
    assert resolve_config(str(fine / "config.yaml"))["train"]["init_from"] == str(last.resolve())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1e-3", "unknown config key 'train.lrr'; did you mean train.lr"),
        ("data.crop=big", "data.crop: expected a number"),
        ("train.scheduler=fast", "train.scheduler: 'fast' is not one of"),
        ("model.encoder_width=3", "unknown key"),
        ("data.fold=9", "data.fold: 9 is not below data.folds"),
    ],
)
def test_cli_config_errors_are_one_clear_line(data_dir, tmp_path, capsys, override, message):
    code, _, err = _cli(
        capsys,
        "train",
        "--config",
        "cpu_small",
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "r"),
        override,
    )
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_cli_resume_without_a_run_is_an_error(tmp_path, capsys):
    code, _, err = _cli(capsys, "train", "--resume", str(tmp_path / "none"))
    assert code == 1 and "config.yaml" in err


# --- the progress display ------------------------------------------------------------------------


class SeenCallbacks(L.Callback):
    """The trainer's callbacks as training starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.types = [type(cb) for cb in trainer.callbacks]


class StopAt(L.Callback):
    """Stop the training after optimizer step ``at`` (as the demo's time box does)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, *args) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.at


class RecordingView:
    """A TrainingView keeping every status it is given."""

    def __init__(self) -> None:
        self.statuses: list = []
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def update(self, status) -> None:
        self.statuses.append(status)

    def stop(self) -> None:
        self.calls.append("stop")


def test_progress_status_text():
    from geopose.training.progress import TrainingStatus, clock_text

    assert [clock_text(s) for s in (0, 59.9, 192, 3600, 4000)] == [
        "00:00", "00:59", "03:12", "1:00:00", "1:06:40"
    ]  # fmt: skip
    boxed = TrainingStatus(192, 400, 1234, 11_000_000, loss=269.564, val_score=0.7123)
    assert boxed.text() == "03:12 / 06:40  1,234 steps  loss 269.6  val score 0.712"
    assert boxed.fraction() == pytest.approx(0.48)
    # the steps further along than the time: the total is worth showing
    assert TrainingStatus(60, 600, 1500, 2200).text() == "01:00 / 10:00  1,500 / 2,200 steps"
    validating = TrainingStatus(5, None, 1, 20, loss=3.0, val_score=0.5, validating=(3, 9))
    assert validating.text() == "00:05  1 / 20 steps  val score 0.500  validating 3/9"
    assert TrainingStatus(5, 60, 1, 10**9).text() == "00:05 / 01:00  1 step"
    assert TrainingStatus(5, 60, 1, 9, at=10.0).later(12.5).seconds == 7.5
    assert TrainingStatus(5, 60, 1, 9, at=10.0, running=False).later(12.5).seconds == 5


@pytest.mark.slow
def test_progress_shows_the_time_budget_and_no_model_summary_unless_verbose(
    data_dir, tmp_path, monkeypatch
):
    """Under train.max_minutes: the time against the budget, the steps without the epochs'
    meaningless total, the validation score; Lightning's model summary only with geopose -v
    (GEOPOSE_VERBOSE=1). Without a time budget: steps against their total."""
    import io

    from lightning.pytorch.callbacks import ModelSummary

    from geopose.logs import ENV
    from geopose.training.progress import LineView, TrainingProgress

    monkeypatch.setenv(ENV, "0")  # the CLI without -v
    view, seen = RecordingView(), SeenCallbacks()
    over = ["data.fold=0", "train.progress=true", "train.epochs=1000000"]
    cfg = config(data_dir, *over, "train.max_minutes=5")
    summary = train(cfg, tmp_path / "boxed", callbacks=[TrainingProgress(view), seen, StopAt(6)])
    assert summary["global_step"] == 6
    assert not any(issubclass(t, ModelSummary) for t in seen.types)
    assert view.calls == ["start", "stop"]
    texts = [s.text() for s in view.statuses]
    assert all(s.budget_seconds == 300 and not s.shows_total() for s in view.statuses)
    assert all(" / 05:00  " in t and "000,000" not in t for t in texts)
    assert any(s.validating for s in view.statuses)
    last = view.statuses[-1]
    assert not last.running and last.steps == 6 and last.validating is None
    assert last.val_score <= summary["best_score"] + 1e-6  # the latest, the best's at most
    assert [s.steps for s in view.statuses] == sorted(s.steps for s in view.statuses)

    monkeypatch.setenv(ENV, "1")  # geopose -v
    log, seen = io.StringIO(), SeenCallbacks()
    cfg = config(data_dir, *over, "train.max_steps=6")
    train(cfg, tmp_path / "steps", callbacks=[TrainingProgress(LineView(log)), seen])
    assert any(issubclass(t, ModelSummary) for t in seen.types)
    lines = log.getvalue().splitlines()  # not a terminal: a line per validation, and the end
    assert len(lines) == 3 and all(ln.startswith("train ━") and len(ln) <= 80 for ln in lines)
    assert "  6 / 6 steps  " in lines[-1] and "val score" in lines[-1]
    # train.progress=false: no display, even one passed in
    view = RecordingView()
    cfg = config(data_dir, "train.max_steps=2", "data.fold=null")
    train(cfg, tmp_path / "quiet", callbacks=[TrainingProgress(view)])
    assert view.calls == [] and view.statuses == []
