"""The training config: defaults, recipe sections, overrides, errors; learning-rate schedules."""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch

from geopose.config import (
    DATA,
    TRAIN,
    defaults,
    load_config,
    parse_override,
    resolve_config,
    save_config,
)
from geopose.errors import ConfigError, GeoposeDataError
from geopose.training.task import lr_factor


def test_defaults_follow_the_seeds():
    d = defaults()
    assert d["train"]["optimizer"] == "adamw" and d["train"]["lr"] == 1e-4
    assert d["train"]["scheduler"] == "cosine_restarts" and d["train"]["restart_epochs"] == 25
    assert d["train"]["save_top_k"] == 3 and d["data"]["crop"] == 512
    assert set(d["data"]) == set(DATA) and set(d["train"]) == set(TRAIN)


def test_precedence_defaults_recipe_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "extends: cpu_small\ndata: {crop: 128, aug: light}\ntrain: {lr: 5.0e-4, epochs: 7}\n"
    )
    cfg = resolve_config(recipe, ["train.lr=3e-4", "batch_size=2", "data.zoom_range=[0.9, 1.1]"])
    assert cfg["data"]["crop"] == 128 and cfg["data"]["aug"] == "light"  # recipe
    assert cfg["train"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 7  # override > recipe
    assert cfg["data"]["batch_size"] == 2  # bare key resolved to data.batch_size
    assert cfg["data"]["zoom_range"] == [0.9, 1.1]
    assert cfg["train"]["weight_decay"] == TRAIN["weight_decay"].default  # default
    assert cfg["model"]["encoder"] == "resnet18" and "loss" in cfg


def test_override_values_are_yaml_with_number_coercion():
    assert parse_override("train.lr=1e-4") == ("train.lr", "1e-4")  # YAML 1.1 string
    cfg = resolve_config(
        "cpu_small",
        [
            "train.lr=1e-4",
            "data.fold=null",
            "train.progress=false",
            "train.devices=2",
            "train.epochs=3.0",
        ],
    )
    assert cfg["train"]["lr"] == 1e-4 and isinstance(cfg["train"]["lr"], float)
    assert cfg["data"]["fold"] is None and cfg["train"]["progress"] is False
    assert cfg["train"]["devices"] == 2 and cfg["train"]["epochs"] == 3
    cfg = resolve_config("cpu_small", ["model.decoder.channels=[64,32,16]", "loss.agl.kind=mse"])
    assert (
        cfg["model"]["decoder"]["channels"] == [64, 32, 16]
        and cfg["loss"]["agl"]["kind"] == "mse"  # cpu_small's own is huber
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'; did you mean train.lr"),
        ("data.crop=16", "data.crop: 16 is below the minimum 32"),
        ("data.crop=1.5", "data.crop: expected an integer"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("train.progress=3", "train.progress: expected true or false"),
        ("data.aug=extreme", "data.aug: 'extreme' is not one of"),
        ("data.zoom_range=[2, 1]", "data.zoom_range: lo 2.0 is above hi 1.0"),
        ("data.zoom_range=1.2", "data.zoom_range: expected [lo, hi]"),
        ("data.rotate_p=1.5", "data.rotate_p: 1.5 is above the maximum 1"),
        ("data.crop_early_share=2", "data.crop_early_share: 2.0 is above the maximum 1"),
        ("data.crop_early=8", "data.crop_early: 8 is below the minimum 32"),
        ("data.crop_early=96", "set both (a side in px and a share above 0) or neither"),
        ("data.crop_early_share=0.5", "set both (a side in px and a share above 0) or neither"),
        ("train.epochs=null", "train.epochs: may not be null"),
        ("data.fold=5", "data.fold: 5 is not below data.folds (5)"),
        ("optimizer.lr=1", "unknown config key 'optimizer.lr'"),
        ("nonsense", "is not key=value"),
        ("model.colour=red", "model: unknown key(s) ['colour']"),
        (
            "model.direction.hiden=8",
            "model.direction: unknown key(s) ['hiden']; did you mean hidden?",
        ),
        ("model.direction.kind=pooledd", "model.direction.kind: 'pooledd' is not one of"),
        ("model.direction.kind=pooledd", "; did you mean pooled, ramp_pooled?"),
        ("model.scale.kind=flow", "model.scale.kind 'flow' needs a flow head (model.flow: {...})"),
        ("model.scale.hidden=0", "model.scale.hidden: 0 is below the minimum 1"),
        ("model.agl.gsd_ref=0", "model.agl.gsd_ref: 0.0 must be > 0"),
        ("model.agl.city=3", "model.agl.city: expected true or false, got 3"),
        ("model.decoder.channels=[]", "model.decoder.channels: expected a non-empty list"),
        ("model.family=baselin", "model.family: 'baselin' is not one of"),
        ("model.family=baselin", "did you mean baseline"),
        ("loss.agl.kind=cubic", "loss.agl.kind: 'cubic' is not one of"),
        ("loss.agl.trim=1.0", "loss.agl.trim: 1.0 must be < 1"),
        ("loss.agl.weight=-1", "loss.agl.weight: -1.0 is below the minimum 0"),
        ("loss.scale.kind=r2", "loss.scale.kind: 'r2' is not one of ['mse', 'huber', 'l1']"),
        ("loss.vflw.weight=1", "loss: unknown key(s) ['vflw']; did you mean vflow"),
        ("train.devices=0", "train.devices: expected 'auto' or a count"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as exc:
        resolve_config("cpu_small", [override])
    assert message in str(exc.value)


def test_bad_recipe_sections(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: cpu_small\ntrain: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        resolve_config(recipe)
    with pytest.raises(ConfigError, match="unknown recipe"):
        resolve_config("no_such_recipe")


def test_save_and_load_round_trip(tmp_path):
    cfg = resolve_config("cpu_small", ["data.root=/some/data", "train.lr=3e-4"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert resolve_config(str(tmp_path / "config.yaml")) == cfg  # a saved config is a recipe
    (tmp_path / "bad.yaml").write_text("model: [")
    with pytest.raises(GeoposeDataError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")


# --- schedules ---------------------------------------------------------------------------------


def _train(**kw) -> dict:
    return {**defaults()["train"], **kw}


def test_cosine_restarts_every_n_epochs():
    t = _train(scheduler="cosine_restarts", restart_epochs=2, min_lr=0.0, lr=1.0)
    spe = 10  # steps per epoch: period 20 steps
    f = [lr_factor(s, t, spe, 100) for s in range(61)]
    assert f[0] == 1.0 and f[20] == 1.0 and f[40] == 1.0  # restarts
    assert math.isclose(f[10], 0.5, abs_tol=1e-12) and f[19] < 0.01
    assert all(f[i + 1] < f[i] for i in range(19))
    grown = _train(
        scheduler="cosine_restarts", restart_epochs=1, restart_mult=2.0, min_lr=0.0, lr=1.0
    )
    g = [lr_factor(s, grown, 10, 100) for s in range(40)]
    assert g[10] == 1.0 and g[30] == 1.0 and g[20] != 1.0  # periods 10, 20, ...


def test_warmup_cosine_step_and_floor():
    t = _train(scheduler="cosine", warmup_steps=4, min_lr=1e-5, lr=1e-3)
    assert [lr_factor(s, t, 10, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, t, 10, 104) == 1.0
    assert math.isclose(lr_factor(104, t, 10, 104), 0.01)  # min_lr / lr
    step = _train(scheduler="step", step_epochs=3, gamma=0.5)
    assert lr_factor(29, step, 10, 100) == 1.0 and lr_factor(30, step, 10, 100) == 0.5
    assert lr_factor(65, step, 10, 100) == 0.25
    assert lr_factor(999, _train(scheduler="constant"), 10, 100) == 1.0


def test_time_boxed_cosine_decays_with_the_time_budget():
    """With train.max_minutes the cosine follows whichever of steps and time is further on."""
    t = _train(scheduler="cosine", min_lr=0.0, lr=1.0, max_minutes=10.0)
    total = 10_000  # far more steps than the time allows
    assert lr_factor(10, t, 10, total, time_done=0.0) > 0.99
    assert math.isclose(lr_factor(10, t, 10, total, time_done=0.5), 0.5, abs_tol=1e-3)
    assert lr_factor(10, t, 10, total, time_done=1.0) < 1e-6
    # steps further along than time: the step count rules
    assert math.isclose(lr_factor(5_000, t, 10, total, time_done=0.1), 0.5, abs_tol=1e-3)


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch, native, expected):
    from geopose.training import run

    monkeypatch.setattr(run, "cpu_has_native_bf16", lambda: native)
    t = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "auto"}
    t["strategy"] = "auto"
    assert run._resolve_devices(t)[4] == expected
    assert run._resolve_devices({**t, "precision": "32-true"})[4] == "32-true"


def _proc_cpu_flags() -> set[str]:
    from pathlib import Path

    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="reads the x86 flags of /proc/cpuinfo",
)
def test_native_bf16_is_the_cpus_bf16_instructions_not_onednns_emulation():
    """bf16-mixed is chosen only where the CPU has AVX512-BF16 or AMX: on an AVX-512 Xeon
    without them oneDNN still "supports" bf16, emulated at a third of float32's speed."""
    from geopose.training.run import cpu_has_native_bf16

    flags = _proc_cpu_flags()
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize(
    "flags, expected",
    [({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, False), ({"avx512f", "avx512_bf16"}, True)],
)
def test_native_bf16_falls_back_to_the_cpu_flags(monkeypatch, flags, expected):
    """Where torch has no CPU-capability queries, /proc/cpuinfo's flags decide."""
    from geopose.training import run

    monkeypatch.setattr(run.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(run, "_linux_cpu_flags", lambda: flags)
    assert run.cpu_has_native_bf16() is expected


def test_time_budget_share_survives_a_resume():
    """The time-boxed cosine reads Lightning's Timer, whose elapsed time a checkpoint carries
    across --resume; a resumed run must not restart its decay from the top."""
    import time
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import Timer

    from geopose.training.task import GeoposeTask

    task = GeoposeTask(resolve_config("cpu_small", ["train.max_minutes=10"]))
    assert task.time_done() == 0.0  # not training yet
    timer = Timer(duration="00:00:10:00")
    timer.load_state_dict({"time_elapsed": {"train": 300.0}})  # as restored from a checkpoint
    task._trainer = SimpleNamespace(callbacks=[timer])
    assert math.isclose(task.time_done(), 0.5)
    task._trainer = SimpleNamespace(callbacks=[])
    task._fit_started = time.monotonic() - 60.0
    assert math.isclose(task.time_done(), 0.1, abs_tol=0.01)


@pytest.mark.parametrize(
    ("precision", "fused"), [("32-true", True), ("bf16-mixed", True), ("16-mixed", None)]
)
def test_adam_is_fused_except_under_fp16_scaling(precision, fused):
    """AdamW runs its fused kernel (the same update, one pass over the parameters), except under
    16-mixed, where Lightning's gradient scaler cannot clip a fused optimizer's gradients."""
    from types import SimpleNamespace

    from geopose.training.task import GeoposeTask

    cfg = resolve_config("cpu_small", ["train.lr=0.01"])
    task = GeoposeTask(cfg)
    task._trainer = SimpleNamespace(precision=precision, callbacks=[])
    opt = task.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is fused
    if not fused:
        return
    # The fused update is the reference one: three steps on the same gradients agree.
    start = [p.detach().clone() for p in task.parameters()]
    ref_params = [p.clone().requires_grad_() for p in start]
    ref = torch.optim.AdamW(
        ref_params, lr=0.01, weight_decay=cfg["train"]["weight_decay"], foreach=False
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(task.parameters(), ref_params, strict=True):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    diff = max(
        float((q - r).abs().max()) for q, r in zip(ref_params, task.parameters(), strict=True)
    )
    assert diff < 1e-5
    assert (
        max(float((p - s).abs().max()) for p, s in zip(task.parameters(), start, strict=True))
        > 0.01
    )
