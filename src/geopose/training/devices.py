"""Where a training runs: the accelerator, devices, nodes, strategy and precision a ``train:``
section asks for, and whether this CPU computes bf16 natively."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from geopose.errors import ConfigError


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware: AVX512-BF16 or AMX on x86, BF16 on Arm.

    There bf16-mixed trains about 1.6x faster than float32 (BENCHMARKS.md). oneDNN also runs bf16
    on AVX-512 CPUs without it (Skylake to Ice Lake Xeons), emulated and about 2.8x *slower* than
    float32, so oneDNN's own "bf16 supported" is not the question asked here.
    """
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        names = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        checks = [getattr(torch.cpu, n, None) for n in names]
        if all(callable(c) for c in checks):
            return any(bool(c()) for c in checks)
        flags = _linux_cpu_flags()
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _linux_cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_devices(t: dict) -> tuple[str, int | str, int, object, str]:
    """(accelerator, devices, num_nodes, strategy, precision) for the Trainer."""
    from lightning.pytorch.strategies import DDPStrategy

    accel = t["accelerator"]
    if accel == "auto":
        accel = "gpu" if torch.cuda.is_available() else "cpu"
    accel = "gpu" if accel == "cuda" else accel
    if accel == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.accelerator: {t['accelerator']} asked for, but torch sees no CUDA GPU here"
        )
    devices, nodes = t["devices"], t["num_nodes"]
    if devices == "auto":
        # Under torchrun every process is one device of its node.
        local = os.environ.get("LOCAL_WORLD_SIZE")
        devices = int(local) if local else (torch.cuda.device_count() if accel == "gpu" else 1)
        world = os.environ.get("WORLD_SIZE")
        if local and world and nodes == 1:
            nodes = max(1, int(world) // int(local))
    precision = t["precision"]
    if precision == "auto":
        precision = "bf16-mixed" if accel == "gpu" or cpu_has_native_bf16() else "32-true"
    strategy: object = t["strategy"]
    if strategy == "auto" and devices * nodes > 1:
        strategy = "ddp"
    if strategy in ("ddp", "ddp_find_unused_parameters_true"):
        strategy = DDPStrategy(
            process_group_backend="nccl" if accel == "gpu" else "gloo",
            find_unused_parameters=strategy.endswith("true"),
        )
    return accel, devices, nodes, strategy, precision
