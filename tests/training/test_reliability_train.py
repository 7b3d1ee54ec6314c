"""Training under faults: one ``last.ckpt`` however often a run is killed and resumed, checkpoint
writes that a kill cannot truncate, configuration mistakes found before anything is written,
third-party noise kept off the terminal, and a real process SIGKILLed three times that ends
exactly where an uninterrupted run ends."""

from __future__ import annotations

import errno
import importlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from geopose.config import resolve_config
from geopose.training import train

# A tiny model (timm's test_resnet, 0.4 M parameters, 13 MB checkpoints) on 64² crops.
TINY = [
    "data.crop=64",
    "data.batch_size=4",
    "data.workers=0",
    "data.folds=4",
    "data.aug=light",
    "train.progress=false",
    "train.log_every=1",
    "train.precision=32-true",
    "model.encoder=test_resnet",
    "model.decoder.channels=[32,16,16,8]",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Test machines may have few, shared cores; one thread also makes runs bit-reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from helpers.fake_data import make_fake_dataset

    root = tmp_path_factory.mktemp("faults") / "data"
    make_fake_dataset(root, n_train=16, n_test=1, size=96, seed=3)
    return root


def config(data_dir: Path, *overrides: str) -> dict:
    return resolve_config("cpu_small", [f"data.root={data_dir}", *TINY, *overrides])


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def _lasts(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("last*"))


def _temps(run: Path) -> list[Path]:
    """Hidden or temporary files anywhere in the run folder."""
    return [p for p in run.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


class Kill(L.Callback):
    """Raise (as a crash would) before the batch after optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


class CheckpointIOSpy(L.Callback):
    """Keep the trainer's checkpoint writer."""

    io = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.io = trainer.strategy.checkpoint_io


# --- 1. one last checkpoint, written atomically -------------------------------------------


def test_resume_keeps_exactly_one_last_checkpoint_and_the_summary_names_it(data_dir, tmp_path):
    # 3 steps per epoch, validation (the best-k callback saves last.ckpt too) and a periodic
    # checkpoint every 2 steps: two callbacks that both keep "the last" state.
    over = (
        "data.fold=0",
        "data.val_max_images=1",
        "data.samples_per_epoch=12",
        "train.ckpt_every_steps=2",
        "train.max_steps=7",
        "train.save_top_k=1",
    )
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        train(config(data_dir, *over), run, callbacks=[Kill(at=4)])
    assert _lasts(run) == ["last.ckpt"] and _step(run / "checkpoints/last.ckpt") == 4
    summary = train(config(data_dir, *over), run, resume=True)
    assert _lasts(run) == ["last.ckpt"]
    last = run / "checkpoints/last.ckpt"
    assert summary["last_checkpoint"] == str(last) and _step(last) == 7 == summary["global_step"]
    assert json.loads((run / "summary.json").read_text())["last_checkpoint"] == str(last)
    assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == 1


def test_resuming_twice_from_ends_of_epochs_repeats_no_batches(data_dir, tmp_path):
    # 4 steps per epoch, a checkpoint every 2: the kills at 9 and 17 resume from steps 8 and
    # 16, the last batches of epochs 1 and 3 (Lightning's epoch counter falls one behind after
    # the first such resume; without the data module's own batch count the second resume
    # would repeat epoch 3's batches).
    over = ("data.fold=null", "data.samples_per_epoch=16", "train.ckpt_every_steps=2")
    cfg = config(data_dir, *over, "train.max_steps=20")
    full = train(cfg, tmp_path / "full")
    run = tmp_path / "cut"
    for i, at in enumerate((9, 17)):
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg, run, resume=i > 0, callbacks=[Kill(at=at)])
        assert _step(run / "checkpoints/last.ckpt") == at - 1
    summary = train(cfg, run, resume=True)
    assert summary["global_step"] == full["global_step"] == 20
    assert summary["rank_checksums"] == full["rank_checksums"]


def test_a_checkpoint_without_the_batch_count_still_resumes_exactly(data_dir, tmp_path):
    """A checkpoint without the data module's batch count still resumes exactly."""
    over = ("data.fold=null", "data.samples_per_epoch=12", "train.ckpt_every_steps=2")
    cfg = config(data_dir, *over, "train.max_steps=7")
    full = train(cfg, tmp_path / "full")
    run = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, run, callbacks=[Kill(at=5)])
    last = run / "checkpoints/last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt.pop("GeoposeDataModule") == {"batches_taken": 4}
    torch.save(ckpt, last)
    summary = train(cfg, run, resume=True)
    assert summary["rank_checksums"] == full["rank_checksums"]


def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one_whole(
    data_dir, tmp_path, monkeypatch
):
    spy = CheckpointIOSpy()
    cfg = config(data_dir, "data.fold=null", "train.max_steps=1")
    train(cfg, tmp_path / "run", callbacks=[spy])
    last = tmp_path / "run/checkpoints/last.ckpt"
    before = last.read_bytes()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["global_step"] = 99

    # The process dies halfway through writing the new checkpoint's bytes to disk; the system
    # temporary folder is on another file system (a tmpfs /tmp: moving a file there is a copy).
    class Died(BaseException):
        pass

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        if hasattr(f, "getvalue"):  # into memory: no file is touched yet
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else f as out:
            out.write(before[: len(before) // 2])
            out.flush()
        raise Died

    def dying_copyfile(src, dst, *args, **kwargs):
        with open(src, "rb") as s, open(dst, "wb") as d:
            d.write(s.read()[:1000])
        raise Died

    def cross_device_rename(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(torch, "save", dying_save)
    monkeypatch.setattr(shutil, "copyfile", dying_copyfile)
    monkeypatch.setattr(os, "rename", cross_device_rename)
    with pytest.raises(Died):
        spy.io.save_checkpoint(ckpt, last)
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert _step(last) == 1


# --- 6. mistakes are found before anything is written --------------------------------------


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from geopose.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


CASES = [
    (["data.batch_size=64"], "data.batch_size: 64 is larger than"),
    (["data.folds=20"], "data.folds: 20 folds need at least 20 images"),
    (["data.fold_scheme=city", "data.folds=3"], "data.folds: 3 city folds need 3 cities"),
    (["train.scheduler=plateau", "data.fold=null"], "plateau needs validation"),
    (["train.init_from=/no/such/model.ckpt"], "/no/such/model.ckpt"),
]
if not torch.cuda.is_available():
    CASES.append((["train.accelerator=gpu"], "train.accelerator: gpu asked for"))


@pytest.mark.parametrize(("overrides", "message"), CASES)
def test_config_errors_leave_no_run_folder(data_dir, tmp_path, capsys, overrides, message):
    run = tmp_path / "r"
    args = ["train", "-c", "cpu_small", "-d", str(data_dir), "-o", str(run), *TINY, *overrides]
    code, _, err = _cli(capsys, *args)
    assert code == 1 and message in err and "Traceback" not in err, err
    assert not run.exists()


@pytest.mark.parametrize("data", ["missing", "empty"])
def test_a_bad_data_folder_leaves_no_run_folder(tmp_path, capsys, data):
    if data == "empty":
        (tmp_path / data).mkdir()
    run = tmp_path / "r"
    args = ["train", "-c", "cpu_small", "-d", str(tmp_path / data), "-o", str(run), *TINY]
    code, _, err = _cli(capsys, *args)
    assert code == 1 and str(tmp_path / data) in err and "Traceback" not in err, err
    assert not run.exists()


def test_failed_overwrite_and_resume_leave_the_run_as_it_was(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "-c", "cpu_small", "-d", str(data_dir), "-o", str(run), *TINY]
    code, _, err = _cli(capsys, *base, "data.fold=null", "train.max_steps=1")
    assert code == 0, err
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # --overwrite with a mistake: the old run is still there, untouched.
    code, _, err = _cli(capsys, *base, "--overwrite", "data.batch_size=64")
    assert code == 1 and "data.batch_size" in err
    # --resume with a mistake: its config.yaml is not replaced by the broken one.
    code, _, err = _cli(capsys, "train", "--resume", str(run), "train.scheduler=plateau")
    assert code == 1 and "plateau needs validation" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    # --overwrite with other folds replaces the old run's folds instead of refusing them.
    code, _, err = _cli(capsys, *base, "--overwrite", "data.folds=5", "train.max_steps=1")
    assert code == 0, err
    assert "5" in (run / "folds.csv").read_text().splitlines()[1].split(",")


# --- 7. third-party warnings and info lines only with -v ------------------------------------


def _warn_from(module: str, text: str) -> None:
    warnings.warn_explicit(text, DeprecationWarning, f"{module}.py", 1, module=module, registry={})


def test_quiet_shows_geopose_warnings_only_and_the_cli_scope_undoes_it(monkeypatch):
    from geopose import logs

    monkeypatch.delenv(logs.ENV, raising=False)
    lightning_logger = logging.getLogger("lightning.pytorch")
    level, filters = lightning_logger.level, list(warnings.filters)
    with logs.cli_scope():
        logs.configure(verbose=False)
        assert os.environ[logs.ENV] == "0"
        with warnings.catch_warnings(record=True) as seen:
            _warn_from("lightning.pytorch.utilities._pytree", "library")
            _warn_from("geopose.training.run", "own")
        assert [str(w.message) for w in seen] == ["own"]
        assert lightning_logger.getEffectiveLevel() == logging.WARNING
    # Back to what it was: library users (and the next command) keep Python's defaults.
    assert logs.ENV not in os.environ and lightning_logger.level == level
    assert warnings.filters == filters
    with logs.cli_scope():
        logs.configure(verbose=True)  # -v: everything shows, nothing is filtered
        assert os.environ[logs.ENV] == "1" and warnings.filters == filters
        assert lightning_logger.level == level


def test_child_processes_inherit_quiet_at_import_of_the_training_code(monkeypatch):
    """A DataLoader worker or DDP rank started by spawn imports geopose.training (the collate
    function lives there) with the CLI's environment."""
    import geopose.training
    from geopose import logs

    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.setLevel(logging.INFO)  # as Lightning's import leaves it
    monkeypatch.setenv(logs.ENV, "0")
    with logs.cli_scope(), warnings.catch_warnings(record=True) as seen:
        importlib.reload(geopose.training)
        _warn_from("lightning.pytorch.utilities._pytree", "library")
        _warn_from("geopose.data.dataset", "own")
        assert lightning_logger.getEffectiveLevel() == logging.WARNING
    assert [str(w.message) for w in seen] == ["own"]
    assert lightning_logger.level == logging.INFO


# --- fault injection: SIGKILL a real training process three times -----------------------------

STEPS = 28
FAULT = [
    "data.fold=0",  # validation: the best checkpoints' callback saves last.ckpt too
    "data.val_max_images=2",
    "data.samples_per_epoch=16",  # 4 steps per epoch: checkpoints mid-epoch and at its end
    f"train.max_steps={STEPS}",
    "train.ckpt_every_steps=2",
    "train.lr=1e-3",
    "train.warmup_steps=2",
    "train.scheduler=cosine",
]


class KillBeforeValidation(L.Callback):
    """Raise (as a kill would) when validation starts after optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def test_a_kill_between_an_epochs_last_batch_and_its_validation_loses_no_best_checkpoint(
    data_dir, tmp_path
):
    """The step checkpoints skip the batch after which validation runs: a last.ckpt written
    there would resume after it (Lightning skips the validation of a checkpoint saved on an
    epoch's last batch) and its best checkpoint would never be written."""
    cfg = config(
        data_dir,
        "data.fold=0",
        "data.val_max_images=2",
        "data.samples_per_epoch=16",  # 4 steps per epoch, validation after each
        "train.max_steps=12",
        "train.ckpt_every_steps=2",
    )
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, tmp_path / "run", callbacks=[KillBeforeValidation(8)])
    assert _step(tmp_path / "run/checkpoints/last.ckpt") == 6
    train(cfg, tmp_path / "run", resume=True)
    train(cfg, tmp_path / "ref")
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("epoch=*.ckpt"))
    assert names == sorted(p.name for p in (tmp_path / "ref/checkpoints").glob("epoch=*.ckpt"))
    assert any("step=000008" in n for n in names), names


def _watch_and_kill(
    proc: subprocess.Popen, last: Path, min_step: int, delay: float, timeout: float = 90.0
) -> int:
    """Wait for a new ``last`` of at least ``min_step``, sleep ``delay`` s, SIGKILL ``proc``;
    the step of that checkpoint."""

    def stamp() -> tuple | None:
        try:
            st = last.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    seen, deadline = stamp(), time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        now = stamp()
        if now is not None and now != seen:
            seen = now
            try:
                step = _step(last)
            except Exception:  # replaced while reading: look again
                continue
            if step >= min_step:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                return step
        time.sleep(0.005)
    _, err = proc.communicate(timeout=30)
    raise AssertionError(f"no checkpoint of step {min_step} (rc {proc.returncode}): {err[-2000:]}")


@pytest.mark.slow
def test_sigkill_three_times_then_resume_equals_an_uninterrupted_run(data_dir, tmp_path, capsys):
    rng = random.Random(20240611)
    run = tmp_path / "run"
    last = run / "checkpoints/last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    env.pop("GEOPOSE_VERBOSE", None)
    cli = [sys.executable, "-m", "geopose.cli.main"]
    fresh = ["train", "-c", "cpu_small", "-d", str(data_dir), "-o", str(run), *TINY, *FAULT]
    resume = ["train", "--resume", str(run)]
    # After the first checkpoint, one in the middle, one late; each after a random delay.
    plan = [(fresh, 1, []), (resume, STEPS // 2, ["-v"]), (resume, STEPS - 6, [])]
    killed_at = []
    for args, min_step, flags in plan:
        proc = subprocess.Popen(
            [*cli, *flags, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        killed_at.append(_watch_and_kill(proc, last, min_step, rng.uniform(0.0, 0.3)))
        assert proc.returncode == -signal.SIGKILL
        err = proc.stderr.read()
        if flags:  # -v: the libraries' lines come through
            assert "GPU available" in err, err
        else:  # geopose's own messages only
            for noise in ("GPU available", "LeafSpec", "Tip:", "deprecated", "Warning:"):
                assert noise not in err, err
    assert killed_at[0] >= 1 and killed_at[1] >= STEPS // 2 and killed_at[2] >= STEPS - 6, killed_at

    code, out, err = _cli(capsys, *resume)  # the last resume runs to the end
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    ref = train(resolve_config(str(run / "config.yaml")), tmp_path / "ref")  # never interrupted
    assert summary["global_step"] == ref["global_step"] == STEPS
    assert summary["rank_checksums"] == ref["rank_checksums"], (summary, ref)
    a = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ref/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    for k, v in b["state_dict"].items():
        assert torch.equal(a[k], v), k
    assert _lasts(run) == ["last.ckpt"] and _step(last) == STEPS

    # Same best checkpoints by step and score. The epoch in the name may read one lower after a
    # resume from an epoch's last batch (Lightning's counter; data, steps and weights are exact).
    def steps_and_scores(folder: Path) -> list[str]:
        return sorted(p.name.split("-", 1)[1] for p in folder.glob("epoch=*.ckpt"))

    best = steps_and_scores(run / "checkpoints")
    assert best == steps_and_scores(tmp_path / "ref/checkpoints")
    assert summary["best_score"] == ref["best_score"] and len(best) == 3
    assert summary["last_checkpoint"] == str(last)
    assert _temps(run) == []


def test_resuming_a_finished_run_keeps_its_summary(data_dir, tmp_path, capsys):
    """A run killed after its last step (before its summary) resumes with nothing left to
    train: the summary still carries the weights' checksum, equal to the uninterrupted one."""
    run = tmp_path / "run"
    args = [*TINY, *FAULT, "train.max_steps=8"]
    code, _, err = _cli(
        capsys, "train", "-c", "cpu_small", "-d", str(data_dir), "-o", str(run), *args
    )
    assert code == 0, err
    first = json.loads((run / "summary.json").read_text())
    assert first["rank_checksums"] is not None and first["global_step"] == 8
    code, _, err = _cli(capsys, "train", "--resume", str(run))
    assert code == 0, err
    again = json.loads((run / "summary.json").read_text())
    assert again["global_step"] == 8
    assert again["rank_checksums"] == first["rank_checksums"]


def test_init_from_a_checkpoint_without_a_head_names_it(data_dir, tmp_path, capsys):
    """A cpu_small checkpoint without a facade head, used to start cpu_small (which has one):
    one error naming the file and the way out, no run folder left half-made."""
    old = tmp_path / "old"
    no_facade = ["model.facade=null", "loss.facade=null", "train.max_steps=2"]
    code, _, err = _cli(
        capsys, "train", "-c", "cpu_small", "-d", str(data_dir), "-o", str(old), *TINY, *no_facade
    )
    assert code == 0, err
    new = tmp_path / "new"
    ckpt = old / "checkpoints" / "last.ckpt"
    args = ["train", "-c", "cpu_small", "-d", str(data_dir), "-o", str(new), *TINY]
    code, _, err = _cli(capsys, *args, f"train.init_from={ckpt}", "train.max_steps=2")
    assert code == 1
    assert "last.ckpt" in err and "no facade head" in err, err
    assert "overrides: model.facade=null loss.facade=null" in err, err
    assert not (new / "checkpoints" / "last.ckpt").exists()
