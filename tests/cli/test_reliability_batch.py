"""Reliability of the commands that write: an output path that cannot be written is one line and
exit code 2 with nothing written (every command); one unreadable image does not stop a batch
(predict, rectify, report); and ``predict``, ``prepare`` and ``synth`` killed with SIGKILL at
random moments and run again give byte for byte the outputs of an uninterrupted run, with no
temporary file left behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from geopose.cli.main import main
from geopose.errors import GeoposeDataError, OutputPathError
from geopose.inference.jobs import predict_jobs, resolve_jobs
from geopose.inference.predictor import Predictor
from geopose.io import (
    atomic_path,
    check_output_file,
    ensure_output_dir,
    remove_stale_temps,
    write_rgb,
)
from geopose.models import create_model, load_recipe

# --- helpers ----------------------------------------------------------------------------------


def save_checkpoint(path: Path, seed: int = 0) -> Path:
    """A Lightning-format checkpoint of a random cpu_small model (pooled direction head)."""
    cfg = load_recipe("cpu_small")
    cfg["model"]["agl"]["out_activation"] = "softplus"
    cfg["model"]["direction"] = {"kind": "pooled"}
    torch.manual_seed(seed)
    model = create_model(cfg)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": cfg}, "state_dict": state}, path)
    return path


def cli(capsys, *args: object) -> tuple[int, str, str]:
    """Run ``geopose ...`` in-process -> (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``root``: relative path -> (size, mtime_ns)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def contents(root: Path) -> dict[str, bytes]:
    """Every file below ``root``: relative path -> bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def leftovers(root: Path) -> list[str]:
    """Temporary or hidden files and folders below ``root`` (atomic-write temporaries, download
    ``.part`` files, synth's progress folder)."""
    return [
        str(p)
        for p in root.rglob("*")
        if p.name.startswith(".") or ".tmp" in p.name or p.name.endswith(".part")
    ]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.ckpt")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A small data set (2 train with truth, 2 test) in the competition layout."""
    from helpers.fake_data import make_fake_dataset

    root = tmp_path_factory.mktemp("d") / "data"
    make_fake_dataset(root, n_train=2, n_test=2, size=32)
    return root


# --- 2. an output path that cannot be written -------------------------------------------------


def _commands(data: Path, ckpt: Path, blocked: Path) -> dict[str, tuple[list[object], Path]]:
    """Command line and the output path it cannot write, per command."""
    train, test = data / "train", data / "test"
    stem = "JAX_tr0000"  # the first training image of the ``data`` fixture
    rgb = train / f"{stem}_RGB.j2k"
    predict = ["predict", ckpt, "--images", test, "--tta", "none", "--device", "cpu"]
    return {
        "predict": ([*predict, "--out", blocked / "preds"], blocked / "preds"),
        "predict-out-is-a-file": ([*predict, "--out", blocked], blocked),
        "predict-tar": (
            [*predict, "--out", blocked.parent / "fresh", "--tar", blocked / "s.tar.gz"],
            blocked / "s.tar.gz",
        ),
        "rectify-folder": (["rectify", "--pred", train, "--out", blocked / "r"], blocked / "r"),
        "rectify-one": (
            [
                "rectify",
                rgb,
                "--agl",
                train / f"{stem}_AGL.tif",
                "--vflow",
                train / f"{stem}_VFLOW.json",
                "--out",
                blocked / "r",
            ],
            blocked / "r",
        ),  # fmt: skip
        "report": (["report", train, "--out", blocked / "r.html"], blocked / "r.html"),
        "show": (["show", "--pred", train, "--out", blocked / "figs"], blocked / "figs"),
        "evaluate-json": (
            ["evaluate", train, train, "--json", blocked / "s.json"],
            blocked / "s.json",
        ),
        "export": (["export", ckpt, blocked / "m.onnx", "--no-check"], blocked / "m.onnx"),
        "prepare": (["prepare", data, "--out", blocked / "cache"], blocked / "cache"),
        "synth": (
            ["synth", blocked / "synth", "--train", "1", "--test", "0", "--size", "32"],
            blocked / "synth",
        ),
        "demo": (["demo", blocked / "demo", "--minutes", "1"], blocked / "demo"),
        "train": (
            [
                "train",
                "--config",
                "cpu_small",
                "--data",
                data,
                "--out",
                blocked / "run",
                "data.folds=2",
                "data.fold=null",
                "data.batch_size=2",
            ],
            blocked / "run",
        ),
        "models-download": (["models", "download", "first-v2l-fold5"], blocked / "cache"),
    }


COMMANDS = list(_commands(Path("d"), Path("c"), Path("b")))


@pytest.mark.parametrize("name", COMMANDS)
def test_unwritable_output_is_one_line_exit_2_nothing_written(
    name, tmp_path, capsys, monkeypatch, data, ckpt
):
    blocked = tmp_path / "a_file"
    blocked.write_text("in the way\n")
    monkeypatch.setenv("GEOPOSE_CACHE", str(blocked / "cache"))
    args, path = _commands(data, ckpt, blocked)[name]
    before, data_before = snapshot(tmp_path), snapshot(data)
    code, out, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, out + err
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    assert f"{blocked} is a file, not a folder" in lines[0] or lines[0].endswith(
        "exists and is not a folder"
    )
    assert "Traceback" not in out + err
    assert snapshot(tmp_path) == before and snapshot(data) == data_before  # nothing written
    assert blocked.read_text() == "in the way\n"


def test_unwritable_output_console_script(tmp_path, data, ckpt):
    blocked = tmp_path / "a_file"
    blocked.write_text("x")
    cmd = [sys.executable, "-m", "geopose.cli.main", "predict", str(ckpt), "--images",
           str(data / "test"), "--out", str(blocked / "preds"), "--tta", "none"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {blocked / 'preds'}: "), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_output_checks_and_atomic_writes_name_the_path(tmp_path):
    blocked = tmp_path / "f"
    blocked.write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        ensure_output_dir(blocked / "a" / "b")
    with pytest.raises(OutputPathError, match="is a folder, not a file"):
        check_output_file(tmp_path)
    # atomic_path: its folder cannot be made, or a folder stands where the file goes
    with pytest.raises(OutputPathError) as exc, atomic_path(blocked / "x.txt") as tmp:
        tmp.write_text("never")
    assert exc.value.path == blocked / "x.txt" and exc.value.exit_code == 2
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputPathError, match="is a folder"), atomic_path(tmp_path / "d") as tmp:
        tmp.write_text("never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]  # no temporary file left


def test_a_folder_without_write_permission_is_named(tmp_path, monkeypatch, capsys):
    import geopose.io.atomic as atomic

    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)  # as a non-root user
    with pytest.raises(OutputPathError, match=f"cannot be written: .* in {tmp_path}$"):
        ensure_output_dir(tmp_path / "new")
    code, _, err = cli(capsys, "synth", tmp_path / "s", "--train", "1", "--test", "0")
    assert code == 2 and err.strip().startswith(f"error: {tmp_path / 's'}: cannot be written")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(proc.stdout)
    with atomic_path(tmp_path / "live.txt") as tmp:
        tmp.write_text("x")
        stale = tmp.with_name(tmp.name.replace(f"-{os.getpid()}.", f"-{dead}."))
        stale.write_text("left by a killed run")
        foreign = tmp_path / ".user.tmp"  # not ours: kept
        foreign.write_text("x")
        assert remove_stale_temps(tmp_path) == [stale]
        assert tmp.is_file()  # the live writer's temporary stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [".user.tmp", "live.txt"]


# --- 3. one unreadable image does not stop the batch ------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


def test_predict_goes_on_past_an_unreadable_image_and_resumes(
    tmp_path, capsys, ckpt, make_fake_dataset
):
    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=8, size=32)
    bad = ds.path(ds.test[3])
    _truncate(bad)
    out, tar = tmp_path / "p", tmp_path / "s.tar.gz"
    args = ["predict", ckpt, "--images", ds.root / "test", "--out", out, "--tta", "none",
            "--device", "cpu"]  # fmt: skip
    code, text, err = cli(capsys, *args, "--tar", tar)
    assert code == 1, text + err
    assert "7 predicted, 0 already done, 1 failed" in text
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and str(bad) in failed[0] and "truncated" in failed[0]
    assert f"{tar} not packed" in err and not tar.exists()
    good = [s for s in ds.test if s != ds.test[3]]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_{k}" for s in good for k in ("AGL.tif", "VFLOW.json")
    )
    stamps = snapshot(out)
    write_rgb(bad, ds.rgb[ds.test[3]], quality=0)  # the image is fixed: the re-run does only it
    code, text, err = cli(capsys, *args, "--tar", tar)
    assert code == 0, text + err
    assert "1 predicted, 7 already done" in text and "validated" in text
    assert all(snapshot(out)[k] == v for k, v in stamps.items())


def test_predict_image_without_gsd_is_per_image(tmp_path, capsys, ckpt):
    rgb = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()
    folder = tmp_path / "imgs"
    write_rgb(folder / "a.png", rgb)
    write_rgb(folder / "b.png", rgb)
    (folder / "metadata.csv").write_text("id,city,gsd\na,JAX,0.4\n")
    code, text, err = cli(
        capsys, "predict", ckpt, "--images", folder, "--out", tmp_path / "o", "--tta", "none"
    )
    assert code == 1 and "1 predicted" in text and "1 failed" in text
    assert "b.png: no GSD" in err and (tmp_path / "o" / "a_VFLOW.json").is_file()
    failed: list[tuple[str, str]] = []
    assert [j.stem for j in resolve_jobs(folder, failed=failed)] == ["a"]
    assert [s for s, _ in failed] == ["b"]
    with pytest.raises(GeoposeDataError, match="no GSD"):  # without ``failed`` it raises
        resolve_jobs(folder)


class _OomPredictor(Predictor):
    """A predictor whose forward pass runs out of memory."""

    def __init__(self) -> None:  # no models
        pass

    def predict(self, rgb, gsd, city=-1):
        raise torch.OutOfMemoryError("CUDA out of memory")


def test_predict_errors_that_are_not_about_an_input_still_stop_the_run(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=2, size=32)
    jobs = resolve_jobs(ds.root / "test")
    with pytest.raises(torch.OutOfMemoryError):
        predict_jobs(_OomPredictor(), jobs, tmp_path / "o")


def test_rectify_folder_goes_on_past_an_unreadable_prediction_and_resumes(
    tmp_path, capsys, make_fake_dataset
):
    ds = make_fake_dataset(tmp_path / "data", n_train=4, n_test=0, size=32)
    pred, out = ds.root / "train", tmp_path / "r"
    bad = ds.path(ds.train[1], "AGL")
    good_bytes = bad.read_bytes()
    _truncate(bad)
    args = ["rectify", "--images", ds.root, "--pred", pred, "--out", out]
    code, text, err = cli(capsys, *args)
    assert code == 1, text + err
    assert "rectified 3 image(s)" in text and "1 failed" in text
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and str(bad) in failed[0]
    assert len(list(out.glob("*_NADIR_AGL.tif"))) == 3
    stamps = snapshot(out)
    bad.write_bytes(good_bytes)
    code, text, err = cli(capsys, *args)
    assert code == 0, text + err
    assert "rectified 1 image(s)" in text and "3 already done" in text
    assert all(snapshot(out)[k] == v for k, v in stamps.items())
    assert len(list(out.glob("*_NADIR_AGL.tif"))) == 4


def test_report_goes_on_past_an_unreadable_prediction(tmp_path, capsys, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=4, n_test=0, size=32)
    pred = tmp_path / "pred"
    pred.mkdir()
    for stem in ds.train:
        for kind in ("AGL", "VFLOW"):
            src = ds.path(stem, kind)
            (pred / src.name).write_bytes(src.read_bytes())
    bad = pred / f"{ds.train[2]}_AGL.tif"
    _truncate(bad)
    out = tmp_path / "r.html"
    code, text, err = cli(capsys, "report", pred, "--truth", ds.root / "train", "--out", out)
    assert code == 1, text + err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and str(bad) in failed[0]
    page = out.read_text()
    assert "Unreadable files (1)" in page and "3 image(s)" in page


# --- fault injection: SIGKILL at random moments, then run again -------------------------------


def _scan(root: Path) -> tuple[int, bool]:
    """(output files below ``root``, whether a temporary file of an atomic write is there)."""
    n, tmp = 0, False
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
            elif e.name.startswith("."):
                tmp = tmp or ".tmp" in e.name
            else:
                n += 1
    return n, tmp


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def _wait_group_dead(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of group ``pgid`` runs any more (zombies do not count): worker
    processes die a moment after the SIGKILL that their parent's ``wait`` saw."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                running = True
                break
        if not running:
            return
        time.sleep(0.01)


def _kill_at(cmd: list[str], env: dict, out: Path, k: int, delay: float | None) -> int:
    """Start ``cmd``; once ``out`` holds ``k`` more output files than at the start, SIGKILL its
    whole process group after ``delay`` s, or (``delay`` None) as soon as a temporary file shows
    that an output is being written. Returns the exit code (-9 when killed)."""
    start = _scan(out)[0]
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 90
    reached = False
    while proc.poll() is None and time.monotonic() < deadline:
        n, tmp = _scan(out)
        reached = reached or n >= start + k
        if reached and delay is not None:
            time.sleep(delay)
            break
        if reached and tmp:  # in the middle of a write
            break
        if delay is not None:
            time.sleep(0.001)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_group_dead(proc.pid)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode in (0, -signal.SIGKILL), err
    return proc.returncode


def _interrupt_and_finish(cmd: list[str], out: Path, n_files: int, seed: int) -> int:
    """Kill ``cmd`` three times at seeded moments (each after a few more output files: in the
    middle of writing one, then after a short random delay, then mid-write again), then run
    it to completion. Returns how many runs were killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    rng = random.Random(seed)
    killed = 0
    for mid_write in (True, False, True):
        k = rng.randint(1, max(1, n_files // 5))
        delay = None if mid_write else rng.uniform(0.0, 0.03)
        killed += _kill_at(cmd, env, out, k, delay) == -signal.SIGKILL
    res = _run(cmd, env)
    assert res.returncode == 0, res.stdout + res.stderr
    return killed


GEOPOSE = [sys.executable, "-m", "geopose.cli.main"]


@pytest.mark.slow
def test_predict_killed_three_times_matches_an_uninterrupted_run(tmp_path, ckpt, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=0, n_test=16, size=256)
    args = ["predict", str(ckpt), "--images", str(ds.root / "test"), "--tta", "none",
            "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = _run([*GEOPOSE, *args, "--out", str(tmp_path / "ref")], env)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "out"
    killed = _interrupt_and_finish([*GEOPOSE, *args, "--out", str(out)], out, 32, seed=1)
    assert killed >= 1
    assert contents(out) == contents(tmp_path / "ref")
    assert leftovers(out) == []


@pytest.mark.slow
def test_prepare_killed_three_times_matches_an_uninterrupted_run(tmp_path, make_fake_dataset):
    ds = make_fake_dataset(tmp_path / "data", n_train=16, n_test=4, size=256)
    args = ["prepare", str(ds.root), "--downsample", "2", "-j", "1"]
    ref = _run([*GEOPOSE, *args, "--out", str(tmp_path / "ref")], dict(os.environ))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "cache"
    killed = _interrupt_and_finish([*GEOPOSE, *args, "--out", str(out)], out, 36, seed=2)
    assert killed >= 1
    assert contents(out) == contents(tmp_path / "ref")
    assert leftovers(out) == []


@pytest.mark.slow
def test_synth_killed_three_times_matches_an_uninterrupted_run(tmp_path):
    args = ["synth", "--train", "16", "--test", "6", "--size", "64", "--seed", "3", "-w", "2",
            "--nadir", "--hidden", "0.2"]  # fmt: skip
    ref = _run([*GEOPOSE, *args[:1], str(tmp_path / "ref"), *args[1:]], dict(os.environ))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "out"
    cmd = [*GEOPOSE, *args[:1], str(out), *args[1:]]
    killed = _interrupt_and_finish(cmd, out, 16 * 5 + 6 * 5, seed=3)
    assert killed >= 1
    assert contents(out) == contents(tmp_path / "ref")
    assert leftovers(out) == []
