"""benchmarks/bench_train.py: a bad --recipe or --set is one line before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model.agl.upsample=nearest"], "model.agl.upsample: 'nearest' is not one of"),
        (["--recipe", "nope"], "unknown recipe 'nope'"),
    ],
)
def test_bad_override_is_one_line(args, message):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--skip-data", "--steps", "1", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert "training," not in out.stdout  # nothing timed
