"""benchmarks/bench_gpu.py stays runnable without a GPU: its ``--device cpu --tiny`` run goes
through every section's code path (data, train, infer, numerics, ddp) and writes figures, or
an explained skip, for each; a section killed at its budget or failing is reported and the
script goes on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"
SECTIONS = ("data", "train", "infer", "numerics", "ddp")


def _run(tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--json", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "measurement" in proc.stdout  # the table
    return json.loads(out.read_text())


def _rows(result: dict, section: str) -> dict[str, dict]:
    return {r["name"]: r for r in result["sections"][section]["rows"]}


def _number(row: dict) -> bool:
    return isinstance(row.get("value"), (int, float)) and math.isfinite(row["value"])


def _find(rows: dict[str, dict], *words: str) -> dict:
    hits = [r for name, r in rows.items() if all(w in name for w in words)]
    assert hits, f"no row with {words} in {list(rows)}"
    return hits[0]


@pytest.mark.slow
def test_tiny_cpu_run_measures_every_section(tmp_path):
    result = _run(tmp_path, "--tiny")
    assert result["device"] == "cpu" and result["tiny"] is True
    assert result["meta"]["torch"] and result["meta"]["device"] == "cpu"
    assert list(result["sections"]) == list(SECTIONS)
    for name in SECTIONS:
        sec = result["sections"][name]
        assert sec["status"] == "ok", (name, sec["error"], sec["log_tail"])
        assert sec["rows"], name
        for row in sec["rows"]:
            # a figure, or a skip that says why; never an error in the tiny run
            assert row.get("error") is None, (name, row)
            assert _number(row) or (isinstance(row.get("skip"), str) and row["skip"]), row
            assert row.get("met") is None  # targets are judged on CUDA only

    data = _rows(result, "data")
    assert _number(_find(data, "synthetic set")) and _number(_find(data, "prepare"))

    train = _rows(result, "train")
    for recipe in ("bloodaxe_b7", "selim"):
        for variant in ("fp32", "bf16-mixed", "bf16-mixed + channels_last"):
            row = train[f"{recipe}[resnet18] 64² b2 {variant}"]
            assert _number(row) and row["value"] > 0 and row["unit"] == "img/s", row
    assert _find(train, "bf16-mixed / fp32")["target"] == "≥ 3"
    assert _find(train, "bloodaxe_b7", "bf16-mixed", "b2")["target"] == "≥ 60"
    assert _number(_find(train, "loader-fed", "1 worker"))
    assert _number(_find(train, "loader wait per step"))
    assert "no CUDA" in _find(train, "GPU utilisation")["skip"]
    assert _number(_find(train, "crops/s per loader worker"))
    largest = _find(train, "largest batch")
    assert largest["value"] == 4 and "cap" in largest["note"]
    assert "no CUDA: compile skipped" in _find(train, "compile")["skip"]

    infer = _rows(result, "infer")
    for tta in ("none", "d4"):
        for precision in ("bf16", "fp32"):
            row = _find(infer, "bloodaxe_b7", f"128² {tta} {precision}")
            assert _number(row) and row["unit"] == "s/image", row
    assert _find(infer, "128² none bf16")["target"] == "≤ 0.1"
    assert _find(infer, "128² d4 bf16")["target"] == "≤ 0.5"
    tiled = _find(infer, "tiled (64) vs whole 128²")
    assert _number(tiled) and tiled["value"] <= 0.02 and tiled["agl_max_abs_m"] >= 0
    assert _number(_find(infer, "published baseline", "none bf16"))

    num = _rows(result, "numerics")
    agl = num["bf16 vs fp32: AGL mean |diff|"]
    assert _number(agl) and agl["target"] == "≤ 0.05" and agl["calibration"] > 0
    for name in ("score fp32", "score bf16"):
        assert _number(_find(num, name))
    assert _number(num["bf16 vs fp32: |score difference|"])

    ddp = _find(_rows(result, "ddp"), "DDP 1 process", "gloo")
    assert ddp["value"] == 0 and ddp["world_size"] == 1 and ddp["global_step"] == 2
    assert len(ddp["rank_checksums"]) == 1


@pytest.mark.slow
def test_a_killed_or_failing_section_is_reported_and_the_run_goes_on(tmp_path):
    """The full-size data section (12 synthetic 2048² images) cannot finish in 1 s + the
    grace: it is killed with its worker processes; numerics then finds no test images."""
    result = _run(
        tmp_path,
        "--sections",
        "data",
        "numerics",
        "--budget-s",
        "data=1",
        "numerics=60",
        "--work",
        str(tmp_path / "work"),
    )
    data = result["sections"]["data"]
    assert data["status"] == "timeout" and "killed at its budget" in data["error"]
    assert any("while running" in (r.get("skip") or "") for r in data["rows"]), data["rows"]
    num = result["sections"]["numerics"]
    assert num["status"] == "error" and "test" in num["error"], num


@pytest.mark.parametrize("item", ["train=7", "30"])
def test_budget_arguments(item):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(SCRIPT.parent))
    budgets = bench_gpu.parse_budgets([item], tiny=False)
    if item == "30":
        assert set(budgets.values()) == {30.0}
    else:
        assert budgets["train"] == 7.0 and budgets["data"] == bench_gpu.FULL["budgets"]["data"]
    full = bench_gpu.parse_budgets(None, tiny=False)
    # the full run ends within 450 s even when every section uses its budget and grace
    assert sum(full.values()) + len(full) * bench_gpu.GRACE_S <= 450
