"""One resume path: ``plan_run`` decides how ``geopose train`` and ``geopose demo`` start or
continue a run (no training here: the decisions, and what each caller hands to ``train``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import geopose.training.run
from geopose import demo
from geopose.config import resolve_config, save_config
from geopose.errors import ConfigError, GeoposeDataError
from geopose.training.run import can_resume, has_ended, plan_run


def started_run(run: Path, config: dict, last: bool = True) -> Path:
    """A run folder as a killed training leaves it: its config and (``last``) a checkpoint."""
    save_config(config, run / "config.yaml")
    if last:
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run


def test_fresh_run_from_a_recipe(tmp_path):
    plan = plan_run(tmp_path / "run", "cpu_small", ["train.lr=0.01"], data=tmp_path / "d")
    assert not plan.resume and plan.out == tmp_path / "run"
    assert plan.config == resolve_config(
        "cpu_small", [f"data.root={(tmp_path / 'd').resolve()}", "train.lr=0.01"]
    )
    init = tmp_path / "w.ckpt"
    init.write_bytes(b"")
    plan = plan_run(tmp_path / "r", "cpu_small", data="d", init_from=str(init))
    assert plan.config["train"]["init_from"] == str(init.resolve())
    with pytest.raises(ConfigError, match="--config RECIPE and --out RUN"):
        plan_run(tmp_path / "run", None, data="d")
    with pytest.raises(ConfigError, match="no data"):
        plan_run(tmp_path / "run", "cpu_small")


def test_resume_takes_the_saved_config_and_refuses_another_model(tmp_path):
    saved = resolve_config("cpu_small", ["data.root=/data", "train.lr=0.01"])
    run = started_run(tmp_path / "run", saved)
    plan = plan_run(run, None, ["train.max_steps=9"], resume=True)
    assert plan.resume and plan.config == resolve_config(saved, ["train.max_steps=9"])
    assert plan.config["train"]["lr"] == 0.01  # the run's, not the recipe's
    assert plan_run(run, "cpu_small", resume=True, data="/moved").config["data"]["root"] == (
        "/moved"
    )
    with pytest.raises(ConfigError, match="model section differs"):
        plan_run(run, "cpu_small", ["model.encoder=resnet34"], resume=True)
    with pytest.raises(GeoposeDataError, match="config.yaml"):
        plan_run(tmp_path / "none", None, resume=True)


def test_auto_resumes_a_started_run_only(tmp_path):
    saved = resolve_config("cpu_small", ["data.root=/data"])
    assert not plan_run(tmp_path / "new", "cpu_small", ["data.root=/d"], resume="auto").resume
    half = started_run(tmp_path / "half", saved, last=False)  # killed before a checkpoint
    assert not can_resume(half)
    assert not plan_run(half, "cpu_small", ["data.root=/d"], resume="auto").resume
    run = started_run(tmp_path / "run", saved)
    assert can_resume(run) and not has_ended(run)
    plan = plan_run(run, "cpu_small", ["train.max_minutes=2"], resume="auto", overwrite=True)
    assert plan.resume and plan.config == resolve_config(saved, ["train.max_minutes=2"])


@pytest.fixture
def recorded_train(monkeypatch):
    """``geopose.training.run.train`` replaced by a recorder that writes a summary."""
    calls = []

    def fake_train(config, out, resume=False, overwrite=False, callbacks=None, source=None):
        calls.append({"config": config, "resume": resume, "overwrite": overwrite})
        last = str(Path(out) / "checkpoints" / "last.ckpt")
        summary = {"global_step": 3, "best_checkpoint": None, "last_checkpoint": last}
        (Path(out) / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(geopose.training.run, "train", fake_train)
    return calls


def test_demo_resumes_through_plan_run_then_reuses(tmp_path, recorded_train, monkeypatch):
    monkeypatch.setattr(geopose.training.devices, "cpu_has_native_bf16", lambda: False)
    s = demo.DemoSettings(out=tmp_path / "demo", size=64, overrides=["data.batch_size=4"])
    started_run(s.run, demo.train_config(s, 1.0))
    lines = []
    ckpt = demo.train_model(s, 2.0, lines.append)
    assert ckpt == s.run / "checkpoints" / "last.ckpt"
    (call,) = recorded_train
    assert call["resume"] and call["config"] == demo.train_config(s, 2.0)
    assert lines[0] == "train: resuming cpu_small for up to 2.0 min in 32-true"
    # ended: reused, not trained again
    demo.train_model(s, 2.0, lines.append)
    assert len(recorded_train) == 1 and lines[-2] == f"train: reusing {s.run}"


def test_demo_starts_afresh_over_a_run_killed_before_its_first_checkpoint(tmp_path, recorded_train):
    s = demo.DemoSettings(out=tmp_path / "demo", size=64)
    started_run(s.run, demo.train_config(s, 1.0), last=False)
    demo.train_model(s, 1.5, lambda line: None)
    (call,) = recorded_train
    assert not call["resume"] and call["overwrite"]
    assert call["config"] == demo.train_config(s, 1.5)
