"""Training settings that geopose.training applies: learning-rate schedules (by step and by time
budget), the precision chosen on CPU, the time budget across a resume, the fused optimizer."""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch

from geopose.config import defaults, resolve_config
from geopose.training.task import lr_factor


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
    from geopose.training import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    t = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "auto"}
    t["strategy"] = "auto"
    assert devices.resolve_devices(t)[4] == expected
    assert devices.resolve_devices({**t, "precision": "32-true"})[4] == "32-true"


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
    from geopose.training.devices import cpu_has_native_bf16

    flags = _proc_cpu_flags()
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize(
    "flags, expected",
    [({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, False), ({"avx512f", "avx512_bf16"}, True)],
)
def test_native_bf16_falls_back_to_the_cpu_flags(monkeypatch, flags, expected):
    """Where torch has no CPU-capability queries, /proc/cpuinfo's flags decide."""
    from geopose.training import devices

    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(devices, "_linux_cpu_flags", lambda: flags)
    assert devices.cpu_has_native_bf16() is expected


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
