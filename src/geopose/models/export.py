"""ONNX export of a geopose model (a GeoposeModel or a published family's), and a parity check
under onnxruntime.

The ONNX graph has inputs ``image`` (B×3×H×W float32 in [0, 1]), ``gsd`` (B float32, m/px) and
``city`` (B int64, -1 = unknown; inputs a model does not use may be absent from the graph) and
outputs ``agl`` (m), ``mag`` (px), ``direction`` (unit), ``scale`` (px/m) and, for models with a
flow head, ``flow`` (px), with a ramp head ``ramp`` (m/px), with a facade head ``facade``
(logits). Batch is dynamic; with ``dynamic=True`` H and W are dynamic multiples of
``model.divisor`` (the encoder stride times ``input_stride``: 32 for every built-in recipe).

:func:`export_model` is ``geopose export``: any model geopose runs -> ONNX, checked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geopose.errors import GeoposeDataError, OutputExistsError
from geopose.io.atomic import atomic_path, check_output_file
from geopose.types import GeoposeOutput

OUTPUT_NAMES = GeoposeOutput._fields  # those a model has (not None), in this order

PARITY_TOLERANCE = 1e-3
"""Largest |PyTorch - onnxruntime| (any output, its units) an export may show."""


class _OnnxWrapper(nn.Module):
    """Positional (image, gsd, city) -> tuple of output tensors (no None)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image, gsd, city):
        out = self.model(image, gsd, city)
        return tuple(t for t in out if t is not None)


def _output_names(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Names of the outputs ``model`` produces (its non-None GeoposeOutput fields)."""
    out = model(*inputs)
    return [name for name, t in zip(OUTPUT_NAMES, out, strict=True) if t is not None]


def example_inputs(size: int = 256, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random (image [0,1], gsd m/px, city index) inputs of the exported signature."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g)
    gsd = 0.3 + 0.2 * torch.rand(batch, generator=g)
    city = torch.randint(0, 4, (batch,), generator=g)
    return image, gsd, city


def export_onnx(
    model: nn.Module,
    path: str | Path,
    size: int = 256,
    overwrite: bool = False,
    dynamic: bool = True,
    opset: int = 18,
) -> Path:
    """Export ``model`` (put in eval mode) to ``path`` atomically; ``size`` is the example side
    (px, a multiple of 32 for dynamic sizes). Refuses to overwrite unless asked; a path that
    cannot be written raises :class:`~geopose.errors.OutputPathError` first."""
    check_output_file(path)
    model = model.eval()
    wrapper = _OnnxWrapper(model).eval()
    inputs = example_inputs(size)
    with torch.no_grad():
        names = _output_names(model, inputs)
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1024)
        if size % model.divisor == 0:
            h = model.divisor * torch.export.Dim("h", min=1, max=512)
            w = model.divisor * torch.export.Dim("w", min=1, max=512)
            image_dims = {0: batch, 2: h, 3: w}
        else:
            image_dims = {0: batch}
        dynamic_shapes = {"image": image_dims, "gsd": {0: batch}, "city": {0: batch}}
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            inputs,
            dynamo=True,
            input_names=["image", "gsd", "city"],
            output_names=names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        program.save(str(tmp), external_data=False)
    return path


def onnx_parity(
    model: nn.Module, path: str | Path, size: int = 256, batch: int = 2, seed: int = 1
) -> dict[str, float]:
    """Largest |PyTorch - onnxruntime| per output on random inputs (units of each output)."""
    import onnxruntime as ort

    model = model.eval()
    image, gsd, city = example_inputs(size, batch, seed)
    with torch.no_grad():
        names = _output_names(model, (image, gsd, city))
        ref = [t for t in model(image, gsd, city) if t is not None]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"image": image.numpy(), "gsd": gsd.numpy(), "city": city.numpy()}
    inputs = {i.name for i in sess.get_inputs()}
    got = sess.run(None, {k: v for k, v in feeds.items() if k in inputs})
    return {
        name: float(np.max(np.abs(r.numpy() - g)))
        for name, r, g in zip(names, ref, got, strict=True)
    }


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how closely onnxruntime matches PyTorch."""

    path: Path
    size_bytes: int
    diffs: dict[str, float] | None = None
    """Largest |PyTorch - onnxruntime| per output (:func:`onnx_parity`); None: not checked."""
    tolerance: float = PARITY_TOLERANCE

    @property
    def worst(self) -> float | None:
        """The largest of :attr:`diffs` (None when not checked)."""
        return max(self.diffs.values()) if self.diffs else None

    @property
    def ok(self) -> bool:
        """True unless the check found a difference above :attr:`tolerance`."""
        return self.worst is None or self.worst <= self.tolerance

    def raise_for_parity(self) -> None:
        """Raise :class:`~geopose.errors.GeoposeDataError` (naming the file) unless :attr:`ok`."""
        if not self.ok:
            raise GeoposeDataError(
                self.path, f"ONNX outputs differ from PyTorch by {self.worst:.3g}"
            )


def export_model(
    spec: str | Path,
    out: str | Path,
    size: int = 256,
    check: bool = True,
    overwrite: bool = False,
) -> ExportReport:
    """``geopose export``: load ``spec`` (``geopose.models.load_model``: a checkpoint, a
    published file or name), export it to ``out`` (:func:`export_onnx`) and, with ``check``,
    compare it with PyTorch under onnxruntime (:func:`onnx_parity`).

    ``out`` is checked before the model is loaded: :class:`~geopose.errors.OutputPathError`
    when it cannot be written, :class:`~geopose.errors.OutputExistsError` when it exists and
    not ``overwrite``. A difference above :data:`PARITY_TOLERANCE` does not raise here (the
    report says it): call :meth:`ExportReport.raise_for_parity` once the report is shown.
    """
    from geopose.models.loading import load_model

    out = Path(out)
    check_output_file(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    net, _ = load_model(spec)
    export_onnx(net, out, size=size, overwrite=overwrite)
    report = ExportReport(out, out.stat().st_size)
    if check:
        report.diffs = onnx_parity(net, out, size=size)
    return report
