"""ONNX export: `geopose export` on a checkpoint writes a model whose outputs match PyTorch
within 1e-4 under onnxruntime (the direction of an untrained ramp fit within 1e-3), at the
export size and at another size and batch."""

from __future__ import annotations

import pytest
import torch

from geopose.cli.main import main
from geopose.models import create_model, load_recipe
from geopose.models.export import onnx_parity

pytestmark = pytest.mark.slow  # ONNX exports


def _cli(*args: str) -> int:
    """Run ``geopose ARGS`` in-process; the exit code."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The cpu_small recipe as a hand-made Lightning-format checkpoint, exported by the CLI."""
    tmp = tmp_path_factory.mktemp("export")
    config = load_recipe("cpu_small")
    torch.manual_seed(0)
    model = create_model(config).eval()
    # Non-trivial BatchNorm statistics, as after training.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ckpt = tmp / "cpu_small.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state}, ckpt)
    out = tmp / "cpu_small.onnx"
    assert _cli("export", str(ckpt), str(out), "--size", "64") == 0
    return model, ckpt, out


def test_onnx_matches_pytorch_on_cpu_small(exported):
    model, _, onnx_path = exported
    assert onnx_path.stat().st_size > 1_000_000
    diffs = onnx_parity(model, onnx_path, size=64, batch=2)
    assert set(diffs) == {"agl", "mag", "direction", "scale", "ramp", "facade"}
    _assert_parity(diffs)
    # Dynamic axes: another batch and size (a multiple of 32).
    _assert_parity(onnx_parity(model, onnx_path, size=96, batch=3))


def _assert_parity(diffs: dict[str, float]) -> None:
    """Maps and scale within 1e-4; the direction within 1e-3 (the export's own rule): this
    untrained model's ramp fit solves over near-zero ramps, which magnifies float rounding
    (up to about 1.3e-4)."""
    assert max(v for k, v in diffs.items() if k != "direction") < 1e-4, diffs
    assert diffs["direction"] < 1e-3, diffs


def test_export_refuses_to_overwrite(exported, capsys):
    _, ckpt, onnx_path = exported
    before = onnx_path.stat().st_mtime_ns
    assert _cli("export", str(ckpt), str(onnx_path), "--size", "64") == 1
    assert "exists already" in capsys.readouterr().err
    assert onnx_path.stat().st_mtime_ns == before


def test_export_of_a_corrupt_checkpoint_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 not a checkpoint")
    assert _cli("export", str(bad), str(tmp_path / "x.onnx")) == 1
    err = capsys.readouterr().err
    assert "bad.ckpt" in err and "not a readable PyTorch checkpoint" in err
    assert not (tmp_path / "x.onnx").exists()


def test_export_model_is_the_command_as_a_function(exported, tmp_path):
    """``export_model``: output checks before loading, the export, the parity check and its
    1e-3 rule, as one call whose report the CLI prints."""
    from geopose.errors import GeoposeDataError, OutputExistsError
    from geopose.models.export import PARITY_TOLERANCE, ExportReport, export_model

    _, ckpt, onnx_path = exported
    with pytest.raises(OutputExistsError):
        export_model(tmp_path / "never-loaded.ckpt", onnx_path)  # refused before loading
    report = export_model(ckpt, tmp_path / "m.onnx", size=64)
    assert report.path == tmp_path / "m.onnx"
    assert report.size_bytes == report.path.stat().st_size
    assert set(report.diffs) == {"agl", "mag", "direction", "scale", "ramp", "facade"}
    assert report.ok
    _assert_parity(report.diffs)
    report.raise_for_parity()
    assert PARITY_TOLERANCE == 1e-3
    unchecked = ExportReport(onnx_path, 1)
    assert unchecked.ok and unchecked.worst is None
    assert ExportReport(onnx_path, 1, {"agl": 1e-3}).ok
    off = ExportReport(onnx_path, 1, {"agl": 1e-5, "scale": 2e-3})
    assert not off.ok
    with pytest.raises(GeoposeDataError, match="ONNX outputs differ from PyTorch by 0.002"):
        off.raise_for_parity()
