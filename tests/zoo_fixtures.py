"""Reference forward passes of the published models (tests/fixtures/zoo, see its README):
rebuild each family's weights from the fill rule, pack them in the published container, compare.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

ZOO = Path(__file__).parent / "fixtures" / "zoo"
FAMILY_FIXTURES = (
    "baseline",
    "first",
    "second_b7_unet",
    "second_b7_rdtsc_unet",
    "second_b6_rdtsc_unet",
    "fourth_senet154",
    "fourth_effb6",
    "fourth_effb7",
)
RTOL = 3e-4
"""Tolerance relative to each array's max |value| (README: two independent fp32 runs)."""
ATOL_SCALAR = 1e-4
"""Absolute floor for a single scalar output near zero (a regressed scale)."""


def manifest(name: str) -> dict:
    return json.loads((ZOO / f"{name}.manifest.json").read_text())


def io(name: str) -> dict[str, np.ndarray]:
    with np.load(ZOO / f"{name}.io.npz") as z:
        return {k: z[k] for k in z.files}


def rule(key: str, shape, salt: str = "") -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32((salt + key).encode("utf-8")))
    fan_in = int(np.prod(shape[1:]))
    w = rng.standard_normal(tuple(shape), dtype=np.float64) * np.sqrt(2.0 / fan_in)
    return w.astype(np.float32)


def rebuild(name: str) -> dict[str, torch.Tensor]:
    """The fixture's state dict: published keys, published order, torch tensors."""
    m = manifest(name)
    salt = m["fill_rule"]["salt"]
    with np.load(ZOO / f"{name}.tensors.npz") as t:
        stored = {k: t[k] for k in t.files}
    out = {}
    for e in m["state_dict"]["entries"]:
        k = e["key"]
        arr = rule(k, e["shape"], salt) if e["source"] == "rule" else stored[k]
        out[k] = torch.from_numpy(np.array(arr, copy=True))  # keeps 0-D tensors 0-D
    return out


def container_object(name: str, state: dict[str, torch.Tensor]):
    """The pickled object of a published file (baseline/first/second)."""
    m = manifest(name)
    c = m["container"]
    if name == "baseline":
        return state
    if name == "first":
        return {"epoch": 74, "state_dict": state, "metrics": {"r2": np.float64(0.8766)}}
    if name.startswith("second"):
        obj = {k: v for k, v in c["values"].items()}
        obj["model_state_dict"] = state
        return {k: obj[k] for k in c["keys"]}
    raise ValueError(f"{name}: the 4th place files are TorchScript archives")


def write_published(name: str, path: Path) -> Path:
    """Write the fixture's weights in the family's published format at ``path``."""
    state = rebuild(name)
    if name.startswith("fourth"):
        write_torchscript(state, path)
    else:
        torch.save(container_object(name, state), path)
    return path


class _Holder(torch.nn.Module):
    """A stand-in module tree whose state dict has given keys (parameters and buffers)."""

    def forward(self, x):  # noqa: D401 - trivial
        return x


def write_torchscript(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A real TorchScript archive whose ``state_dict()`` is ``state`` (keys and values)."""
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, _Holder())
            mod = getattr(mod, p)
        if value.is_floating_point() and not leaf.startswith("running_"):
            mod.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
        else:
            mod.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))
    return path


def max_rel(got, ref) -> float:
    """max |got - ref| / max |ref| (0/0 = 0)."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(got.reshape(ref.shape) - ref))) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_close(got, ref, what: str, rtol: float = RTOL, atol: float = 0.0) -> None:
    got = np.asarray(got, dtype=np.float64).reshape(np.shape(ref))
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(got - ref)))
    assert diff <= rtol * scale + atol, f"{what}: max |Δ| {diff:.3g} vs max |ref| {scale:.3g}"
