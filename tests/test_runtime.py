"""geopose.runtime: freed memory is kept for reuse (no fresh pages for every activation); worker
processes that die give one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys
import torch
from geopose.runtime import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "on" else None
torch.set_num_threads(1)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1)
)
x = torch.rand(1, 3, 512, 512)  # activations of 16 MiB each
faults = []
with torch.inference_mode():
    for _ in range(10):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def probe(mode: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_activations_reuse_freed_memory_without_page_faults() -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    activation = 16 * 512 * 512 * 4 // page  # pages of one activation
    # the control pins glibc's threshold at its start value: the default one rises as blocks
    # are freed, so whether the default reuses pages depends on the order of allocations (it
    # can give [.., .., 0, 8190]); pinned, every activation is a fresh mapping, every call
    off = probe("off", {"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert off["applied"] is None and min(off["faults"][2:]) > activation // 2  # fresh pages
    # kept for reuse, the heap still grows now and then (a long-lived small block lands above
    # the freed ones: in about 1 run of 2, one call of 8 faults 2 activations),
    # so the test counts the calls that fault: all 8 without reuse, at most 2 with it
    on = probe("on")
    faulting = [f for f in on["faults"][2:] if f > activation // 20]
    assert on["applied"] is True and len(faulting) <= 2, on["faults"]  # reused
    # a user's own glibc setting wins
    assert probe("on", {"MALLOC_TRIM_THRESHOLD_": "131072"})["applied"] is False


def test_process_map_returns_results_in_order():
    from geopose.runtime import process_map

    assert list(process_map(abs, [-3, 1, -2, 5], 2, "numbers")) == [3, 1, 2, 5]


def test_process_map_names_the_job_when_a_worker_dies():
    """A worker killed mid-job (here it exits at once): one GeoposeError naming the job and the
    two usual causes, not concurrent.futures' BrokenProcessPool."""
    from geopose.errors import GeoposeError
    from geopose.runtime import process_map

    with pytest.raises(GeoposeError, match=r"my job: a worker process ended abruptly") as err:
        list(process_map(os._exit, [3], 1, "my job"))
    assert "out of memory" in str(err.value) and '__name__ == "__main__"' in str(err.value)


SCRIPT = """
from geopose.synth import write_dataset
write_dataset({out!r}, n_train=2, n_test=1, size=32, seed=0, workers=2)
"""


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_that_starts_synth_workers_at_import_gets_one_clear_error(tmp_path, guarded):
    """``write_dataset(workers=2)`` spawns workers, which import the calling script again: without
    a ``__main__`` guard the script fails with an error that says what to do (the last line of
    stderr), and nothing is left half-written; with the guard the same call writes the data."""
    out = tmp_path / "DATA"
    body = SCRIPT.format(out=str(out))
    if guarded:
        body = 'if __name__ == "__main__":\n' + "\n".join("    " + s for s in body.splitlines())
    script = tmp_path / "make_data.py"
    script.write_text(body + "\n")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    if guarded:
        assert proc.returncode == 0, proc.stderr
        assert (out / "synth.json").is_file()
    else:
        assert proc.returncode != 0
        # Python's resource tracker may warn about the dead workers' semaphores after the error
        lines = [ln for ln in proc.stderr.strip().splitlines() if "resource_tracker" not in ln]
        last = lines[-1]
        assert last.startswith("geopose.errors.GeoposeError: synthetic data: a worker process")
        assert '__name__ == "__main__"' in last
        assert not (out / "synth.json").exists()


def test_geopose_errors_cross_process_boundaries_whole():
    """What a worker raises is pickled to the parent: every error class comes back equal (same
    type, message and fields), else the pool breaks and the file's name is lost."""
    import pickle

    from geopose.errors import (
        ConfigError,
        GeoposeDataError,
        GeoposeError,
        OutputExistsError,
        OutputPathError,
    )

    for err in (
        GeoposeError("plain"),
        ConfigError("train.lr: bad"),
        GeoposeDataError("a/b_RGB.j2k", "truncated"),
        GeoposeDataError(None, "no file"),
        OutputExistsError("out"),
        OutputPathError("out", "read-only disk"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert vars(back) == vars(err)
