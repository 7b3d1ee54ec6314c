"""The ``geopose`` command line: validate output and exit codes, errors as one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from geopose.cli.main import app, main
from geopose.io import write_prediction

runner = CliRunner()


def test_help_lists_validate():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "validate" in result.output


def test_validate_clean_dataset_exits_0(fake_dataset):
    result = runner.invoke(app, ["validate", str(fake_dataset.root)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "dataset" in result.output and "no problems" in result.output


def test_validate_lists_each_problem_on_one_line_and_exits_1(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=2, n_test=1)
    bad_rgb, bad_json = ds.path(ds.train[0]), ds.path(ds.train[1], "VFLOW")
    bad_rgb.write_bytes(bad_rgb.read_bytes()[:50])
    bad_json.write_text("{")
    result = runner.invoke(app, ["validate", str(ds.root), "-j", "1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 3, result.output  # two problems and the summary
    assert str(bad_rgb) in lines[0] and "truncated" in lines[0]
    assert str(bad_json) in lines[1] and "not valid JSON" in lines[1]
    assert lines[2].startswith("2 problem(s) in 2 file(s)")


def test_validate_predictions_with_images(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=2)
    pred = tmp_path / "pred"
    write_prediction(pred, ds.test[0], np.ones((32, 32)), 1.0, 1.0)
    result = runner.invoke(app, ["validate", str(pred), "--images", str(ds.root)])
    assert result.exit_code == 1
    assert f"{ds.test[1]}_AGL.tif: missing: no prediction for image" in result.output
    write_prediction(pred, ds.test[1], np.ones((32, 32)), 1.0, 1.0)
    result = runner.invoke(app, ["validate", str(pred), "--images", str(ds.root)])
    assert result.exit_code == 0, result.output


def test_data_error_is_one_error_line_and_exit_1(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(tmp_path / "missing")])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {tmp_path / 'missing'}: not found"
    assert "Traceback" not in captured.err + captured.out


def test_console_script_error_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "geopose.cli.main", "validate", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'empty'}: neither")


def test_progress_bar_draws_the_library_callback_and_steps_aside():
    """The one adapter: ``on_progress(stage, done, total)`` -> a bar per stage, shown only while
    a stage is under way (Lightning's own live bar may follow the data's rendering)."""
    import io

    from rich.console import Console
    from rich.live import Live

    from geopose.cli.app import progress_bar

    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    with progress_bar({"synth": "rendering"}, console=console) as on_progress:
        on_progress("synth", 0, 2)
        on_progress("synth", 1, 2)
        assert on_progress.bar.live.is_started
        assert console.file.getvalue().count("rendering") >= 1
        on_progress("synth", 2, 2)
        assert not on_progress.bar.live.is_started
        with Live(console=console):  # refused while another live display runs
            pass
        on_progress("bytes", 5, 0)  # unknown total: shown until the end
        assert on_progress.bar.live.is_started
    assert not on_progress.bar.live.is_started


def test_no_library_module_draws():
    """Only geopose.cli imports rich: the library reports progress and the CLI draws it (the
    training's status goes to a view, geopose.training.progress.TrainingView; without one from the
    CLI it is a plain-text line, geopose.training.progress.LineView)."""
    import ast
    from pathlib import Path

    import geopose

    root = Path(geopose.__file__).parent
    drawing = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            drawing += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("rich", "tqdm")]
    assert drawing == []
