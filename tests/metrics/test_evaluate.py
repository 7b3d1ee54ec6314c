"""Scoring folders: ``evaluate_folders`` and ``geopose evaluate`` on tiny folders they write."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from geopose.cli.main import main
from geopose.errors import GeoposeDataError, OutputExistsError
from geopose.io import (
    agl_name,
    read_agl,
    read_agl_raw,
    read_vflow,
    vflow_name,
    write_agl,
    write_vflow,
)
from geopose.metrics import ScoreAccumulator, evaluate_folders
from geopose.metrics.evaluate import pair_folders, read_agl_fast

STEMS = ("JAX_0001", "JAX_0002", "OMA_0001", "OMA_0002", "ARG_0001")


def write_case(root: Path, stems=STEMS, size: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """``root/truth`` and ``root/pred`` with one imperfect prediction per truth image."""
    rng = np.random.default_rng(seed)
    for stem in stems:
        t = np.round(rng.gamma(1.5, 6.0, (size, size)), 2).astype(np.float32)
        t[rng.random(t.shape) < 0.05] = np.nan
        p = np.clip(np.nan_to_num(t) + rng.normal(0, 2, t.shape), 0, None).astype(np.float32)
        a, s = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.5, 3))
        write_agl(root / "truth" / agl_name(stem), t)
        write_vflow(root / "truth" / vflow_name(stem), a, s)
        write_agl(root / "pred" / agl_name(stem), p)
        write_vflow(root / "pred" / vflow_name(stem), (a + 0.2) % (2 * math.pi), s * 1.1)
    (root / "truth" / "JAX_0001_RGB.tif").write_bytes(b"not read")  # other files are ignored
    return root / "pred", root / "truth"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def expected_from_files(pred: Path, truth: Path, stems, reader=read_agl_raw) -> dict:
    """The score via an io reader and ScoreAccumulator, image by image."""
    acc = ScoreAccumulator()
    for stem in stems:
        acc.update(
            stem.split("_")[0],
            reader(pred / agl_name(stem)),
            reader(truth / agl_name(stem)),
            *read_vflow(pred / vflow_name(stem)),
            *read_vflow(truth / vflow_name(stem)),
        )
    return acc.compute()


def test_evaluate_folders_equals_accumulator_for_any_workers(tmp_path):
    pred, truth = write_case(tmp_path)
    expect = expected_from_files(pred, truth, STEMS)
    for workers in (1, 3):
        res = evaluate_folders(pred, truth, workers=workers)
        assert res["final"] == pytest.approx(expect["final"], abs=1e-12)
        assert set(res["cities"]) == {"ARG", "JAX", "OMA"}
        for city, m in expect["cities"].items():
            for key, value in m.items():
                assert res["cities"][city][key] == pytest.approx(value, rel=1e-12), (city, key)
    assert res["images"] == 5 and res["skipped"] == 0 and res["missing"] == []
    # float32 metres (read_agl) round the centimetres: equal to float32 precision
    as_metres = expected_from_files(pred, truth, STEMS, reader=read_agl)
    assert res["final"] == pytest.approx(as_metres["final"], abs=1e-7)
    assert 0.3 < res["final"] < 0.999


def test_fast_reader_equals_io_reader(tmp_path):
    rng = np.random.default_rng(1)
    agl = rng.uniform(0, 50, (37, 23)).astype(np.float32)
    agl[0, 0] = np.nan
    write_agl(tmp_path / "cm.tif", agl)
    write_agl(tmp_path / "m.tif", agl, float_metres=True)
    for name in ("cm.tif", "m.tif"):
        fast, raw = read_agl_fast(tmp_path / name), read_agl_raw(tmp_path / name)
        assert fast.dtype == raw.dtype and fast.shape == raw.shape
        np.testing.assert_array_equal(fast, raw)
        # a reused buffer of another shape or dtype is ignored, one that fits is filled
        for buf in (np.empty((3, 3), np.uint16), np.empty_like(raw, dtype=np.float64), raw * 0):
            np.testing.assert_array_equal(read_agl_fast(tmp_path / name, out=buf), raw)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(GeoposeDataError, match="bad.tif"):
        read_agl_fast(tmp_path / "bad.tif")


def test_cli_table_and_json(tmp_path, capsys):
    pred, truth = write_case(tmp_path)
    out_json = tmp_path / "out" / "score.json"
    code, out, err = run_cli(capsys, pred, truth, "--json", out_json, "--workers", 2)
    assert code == 0, err
    for word in ("JAX", "OMA", "ARG", "final"):
        assert word in out
    data = json.loads(out_json.read_text())
    expect = expected_from_files(pred, truth, STEMS)
    assert data["final"] == pytest.approx(expect["final"], abs=1e-12)
    assert f"{expect['final']:.4f}" in out
    assert data["cities"]["OMA"]["r2_vflow"] == pytest.approx(
        expect["cities"]["OMA"]["r2_vflow"], abs=1e-12
    )
    assert data["images"] == 5 and data["partial"] is False
    # refuses to overwrite, then does with --overwrite
    code, _, err = run_cli(capsys, pred, truth, "--json", out_json)
    assert code == 1 and "exists already" in err
    out_json.write_text("{}")
    code, _, _ = run_cli(capsys, pred, truth, "--json", out_json, "--overwrite")
    assert code == 0 and json.loads(out_json.read_text())["images"] == 5


@pytest.mark.parametrize("partial", [False, True])
def test_cli_json_is_the_api_dict(tmp_path, capsys, partial):
    """``geopose evaluate --json`` writes exactly what ``evaluate_folders`` returns."""
    pred, truth = write_case(tmp_path)
    if partial:
        (pred / agl_name("JAX_0002")).unlink()
        write_agl(pred / agl_name("OMA_0002"), np.ones((12, 24), np.float32))
    args = ["--partial"] if partial else []
    code, _, err = run_cli(capsys, pred, truth, "--json", tmp_path / "s.json", *args)
    assert code == 0, err
    api = evaluate_folders(pred, truth, partial=partial, workers=2)
    assert json.loads((tmp_path / "s.json").read_text()) == api
    assert api["partial"] is partial and api["skipped"] == 2 * partial
    # the API writes the same file itself, and refuses to replace it unless asked
    evaluate_folders(pred, truth, partial=partial, json_path=tmp_path / "api.json")
    assert (tmp_path / "api.json").read_text() == (tmp_path / "s.json").read_text()
    with pytest.raises(OutputExistsError):
        evaluate_folders(pred, truth, partial=partial, json_path=tmp_path / "api.json")


def test_api_notices_and_progress(tmp_path):
    """The lines ``geopose evaluate`` prints come from the API's ``on_notice``, its bar from
    ``on_progress``."""
    pred, truth = write_case(tmp_path)
    (pred / vflow_name("OMA_0001")).unlink()
    write_agl(pred / agl_name("ATL_9999"), np.ones((24, 24), np.float32))
    write_vflow(pred / vflow_name("ATL_9999"), 0.0, 1.0)
    notices, calls = [], []
    with pytest.raises(GeoposeDataError, match="1 of 5 predictions missing.*--partial"):
        evaluate_folders(pred, truth, on_notice=notices.append, on_progress=calls.append)
    assert notices == [
        "missing prediction: OMA_0001 (no OMA_0001_VFLOW.json)",
        "extra prediction ignored: ATL_9999 (no truth)",
    ]
    assert calls == []  # nothing scored

    def progress(stage, done, total):
        calls.append((stage, done, total))

    evaluate_folders(pred, truth, partial=True, on_progress=progress)
    assert calls == [("score", k, 4) for k in range(5)]


def test_cli_missing_predictions_listed_exit_1_unless_partial(tmp_path, capsys):
    pred, truth = write_case(tmp_path)
    (pred / agl_name("JAX_0002")).unlink()
    (pred / vflow_name("OMA_0001")).unlink()
    (pred / agl_name("ARG_0001")).unlink()
    (pred / vflow_name("ARG_0001")).unlink()
    code, out, err = run_cli(capsys, pred, truth)
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("missing prediction")]
    assert lines == [
        "missing prediction: ARG_0001 (no ARG_0001_AGL.tif / ARG_0001_VFLOW.json)",
        "missing prediction: JAX_0002 (no JAX_0002_AGL.tif)",
        "missing prediction: OMA_0001 (no OMA_0001_VFLOW.json)",
    ]
    assert "3 of 5 predictions missing" in err and "--partial" in err
    with pytest.raises(GeoposeDataError, match="3 of 5 predictions missing"):
        evaluate_folders(pred, truth)
    code, out, err = run_cli(capsys, pred, truth, "--partial", "--json", tmp_path / "p.json")
    assert code == 0, err
    assert "scored 2 of 5 images (3 skipped)" in out
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["skipped"] == 3 and data["partial"] is True
    assert data["missing"] == ["ARG_0001", "JAX_0002", "OMA_0001"]
    expect = expected_from_files(pred, truth, ["JAX_0001", "OMA_0002"])
    assert data["final"] == pytest.approx(expect["final"], abs=1e-12)


def test_cli_extra_prediction_is_one_line_and_ignored(tmp_path, capsys):
    pred, truth = write_case(tmp_path)
    write_agl(pred / agl_name("ATL_9999"), np.ones((24, 24), np.float32))
    write_vflow(pred / vflow_name("ATL_9999"), 0.0, 1.0)
    code, out, err = run_cli(capsys, pred, truth)
    assert code == 0
    assert "extra prediction ignored: ATL_9999 (no truth)" in err
    assert "ATL" not in out


def test_cli_size_mismatch_lines(tmp_path, capsys):
    pred, truth = write_case(tmp_path)
    write_agl(pred / agl_name("OMA_0002"), np.ones((12, 24), np.float32))
    code, _, err = run_cli(capsys, pred, truth)
    assert code == 1
    assert "size mismatch: OMA_0002: prediction 12×24, truth 24×24" in err
    code, out, _ = run_cli(capsys, pred, truth, "--partial")
    assert code == 0 and "scored 4 of 5 images (1 skipped)" in out
    with pytest.raises(GeoposeDataError, match="differ in size"):
        evaluate_folders(pred, truth)


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    pred, truth = write_case(tmp_path)
    (pred / agl_name("JAX_0001")).write_bytes(b"\x00" * 50)
    code, _, err = run_cli(capsys, pred, truth)
    assert code == 1
    assert "JAX_0001_AGL.tif" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, tmp_path / "nowhere", truth)
    assert code == 1 and "predictions folder not found" in err


def test_truth_folder_problems(tmp_path):
    pred, truth = write_case(tmp_path, stems=("JAX_0001",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeoposeDataError, match="no \\*_AGL.tif"):
        pair_folders(pred, tmp_path / "empty")
    with pytest.raises(GeoposeDataError, match="truth folder not found"):
        pair_folders(pred, tmp_path / "nowhere")
    (truth / vflow_name("JAX_0001")).unlink()
    with pytest.raises(GeoposeDataError, match="JAX_0001_VFLOW.json: truth file missing"):
        pair_folders(pred, truth)


def test_nan_prediction_pixels_reported(tmp_path, capsys):
    pred, truth = write_case(tmp_path, stems=("JAX_0001",))
    agl = read_agl(pred / agl_name("JAX_0001"))
    truth_agl = read_agl(truth / agl_name("JAX_0001"))
    agl[:2] = np.nan
    write_agl(pred / agl_name("JAX_0001"), agl)
    n_nan = int(np.count_nonzero(np.isfinite(truth_agl[:2])))
    code, out, _ = run_cli(capsys, pred, truth)
    assert code == 0
    assert f"{n_nan} valid pixels had no predicted height (scored as 0 m)" in out
