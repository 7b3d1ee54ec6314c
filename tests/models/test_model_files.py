"""Model files are data: a pickle that would run code is refused, with one line naming the file,
at every entry point (the Python API, predict, ensemble members, export, train --init-from,
train --resume, the demo's resume); TorchScript archives are checked before they are opened;
published files and geopose checkpoints load without any flag; ``--trust-file`` is the only
way to full unpickling."""

from __future__ import annotations

import fractions
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo_fixtures import FAMILY_FIXTURES, container_object, rebuild, write_published

from geopose.cli.main import main
from geopose.errors import GeoposeDataError
from geopose.io import write_rgb
from geopose.io.checkpoint import check_torchscript, load_torch_file, trusted_files
from geopose.models import load_model
from geopose.synth.dataset import write_dataset

TINY = [
    "data.crop=64",
    "data.batch_size=4",
    "data.workers=0",
    "data.folds=4",
    "train.progress=false",
    "train.max_steps=2",
    "train.val_every=100",
]


class Creates:
    """Unpickling this object creates ``path`` (``open(path, "w")``): the harm a hostile file
    does, made visible."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def hostile(path: Path, marker: Path, form: str = "torch") -> Path:
    """A model file whose loading would create ``marker``: a ``torch.save`` zip holding a
    state dict beside the object (``torch``), torch's legacy format (``legacy``), or a bare
    pickle (``pickle``)."""
    obj = {"state_dict": {"w": torch.zeros(2)}, "meta": Creates(marker)}
    if form == "torch":
        torch.save(obj, path)
    elif form == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def cli(capsys, *args) -> tuple[int, str]:
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


def assert_refused(code: int, out: str, path: Path, marker: Path) -> None:
    """Exit 1, one error line naming the file and the global, and nothing created."""
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, out
    assert str(path) in errors[0] and "refused" in errors[0] and "open" in errors[0], errors[0]
    assert not marker.exists()


@pytest.mark.parametrize("form", ["torch", "legacy", "pickle"])
def test_the_python_api_refuses_a_pickle_that_would_run_code(tmp_path, form):
    marker = tmp_path / "created"
    path = hostile(tmp_path / "model.pth", marker, form)
    with pytest.raises(GeoposeDataError) as err:
        load_model(path)
    assert (
        str(path) in str(err.value)
        and "open" in str(err.value)
        and "--trust-file" in str(err.value)
    )
    assert "\n" not in str(err.value) and not marker.exists()


def test_trusted_files_is_the_only_way_to_full_unpickling(tmp_path):
    """Inside ``trusted_files`` (``--trust-file``) the same file is unpickled, with a warning;
    outside it again refused."""
    marker = tmp_path / "created"
    path = hostile(tmp_path / "model.pth", marker)
    with trusted_files(), pytest.warns(UserWarning, match="can run code"):
        load_torch_file(path)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(GeoposeDataError):
        load_torch_file(path)
    assert not marker.exists()


def test_predict_and_an_ensemble_member_refuse_it(tmp_path, capsys):
    marker = tmp_path / "created"
    path = hostile(tmp_path / "model.pth", marker)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_rgb(tmp_path / "imgs" / "JAX_a_RGB.png", rgb)
    code, out = cli(capsys, "predict", "--model", path, "--images", tmp_path / "imgs",
                    "--out", tmp_path / "out", "--gsd", "0.5")  # fmt: skip
    assert_refused(code, out, path, marker)
    assert not (tmp_path / "out").exists()
    spec = tmp_path / "ens.yaml"
    spec.write_text(f"members:\n  - checkpoint: {path}\n    weight: 1\n")
    code, out = cli(capsys, "predict", "--ensemble", spec, "--images", tmp_path / "imgs",
                    "--out", tmp_path / "out2", "--gsd", "0.5")  # fmt: skip
    assert_refused(code, out, path, marker)


def test_export_refuses_it(tmp_path, capsys):
    marker = tmp_path / "created"
    path = hostile(tmp_path / "model.pth", marker)
    code, out = cli(capsys, "export", "--model", path, tmp_path / "m.onnx")
    assert_refused(code, out, path, marker)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_trust_file_loads_a_published_file_that_holds_another_object(tmp_path, capsys):
    """A 1st place file whose metadata holds a ``fractions.Fraction`` (harmless, but not on the
    allow-list) is refused, and predicted with under ``--trust-file`` (a warning first)."""
    path = tmp_path / "first.pth"
    obj = container_object("first", rebuild("first"))
    obj["metrics"]["r2"] = fractions.Fraction(1, 3)
    torch.save(obj, path)
    with pytest.raises(GeoposeDataError, match="fractions.Fraction"):
        load_model(path)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_rgb(tmp_path / "imgs" / "JAX_a_RGB.png", rgb)
    args = ["predict", "--model", path, "--images", tmp_path / "imgs", "--gsd", "0.5"]
    code, out = cli(capsys, *args, "--out", tmp_path / "refused")
    assert code == 1 and "fractions.Fraction" in out and not (tmp_path / "refused").exists()
    code, out = cli(capsys, *args, "--out", tmp_path / "out", "--tta", "none", "--trust-file")
    assert code == 0, out
    assert "warning" in out and "--trust-file" in out
    assert (tmp_path / "out" / "JAX_a_AGL.tif").is_file()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder of a 2-step cpu_small training)."""
    from geopose.config import resolve_config
    from geopose.training import train

    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root / "data", 16, 2, 96, seed=5)
    torch.set_num_threads(1)
    cfg = resolve_config("cpu_small", [f"data.root={root / 'data'}", *TINY])
    train(cfg, root / "run", overwrite=True)
    return root / "data", root / "run"


@pytest.mark.slow
def test_a_geopose_checkpoint_holds_plain_types_only(tiny_run):
    """PyTorch's own safe loader reads it with no allow-list at all; geopose loads it."""
    _, run = tiny_run
    last = run / "checkpoints" / "last.ckpt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(last)) == []
    torch.load(last, map_location="cpu", weights_only=True)
    model, config = load_model(last)
    assert config["name"] == "cpu_small" and not model.training


@pytest.mark.slow
def test_train_init_from_refuses_it(tmp_path, capsys, tiny_run):
    data, _ = tiny_run
    marker = tmp_path / "created"
    path = hostile(tmp_path / "model.pth", marker)
    code, out = cli(capsys, "train", "--config", "cpu_small", "--data", data, "--out",
                    tmp_path / "run", "--init-from", path, *TINY)  # fmt: skip
    assert_refused(code, out, path, marker)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_train_resume_refuses_a_replaced_last_checkpoint(tmp_path, capsys, tiny_run):
    _, run = tiny_run
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / "summary.json").unlink(missing_ok=True)
    marker = tmp_path / "created"
    last = hostile(copy / "checkpoints" / "last.ckpt", marker)
    code, out = cli(capsys, "train", "--resume", copy, "train.max_steps=4")
    assert_refused(code, out, last, marker)


@pytest.mark.slow
def test_the_demo_resume_refuses_a_replaced_last_checkpoint(tmp_path, tiny_run):
    from geopose.demo import DemoSettings, train_model

    data, run = tiny_run
    s = DemoSettings(out=tmp_path / "demo", overrides=TINY)
    shutil.copytree(data, s.cache)
    shutil.copytree(run, s.run)
    (s.run / "summary.json").unlink(missing_ok=True)
    marker = tmp_path / "created"
    last = hostile(s.run / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(GeoposeDataError) as err:
        train_model(s, 0.05, log=lambda _m: None)
    assert str(last) in str(err.value) and "open" in str(err.value) and not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_FIXTURES)
def test_published_files_load_without_any_flag(tmp_path, name):
    path = write_published(name, tmp_path / f"{name}.bin")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "trusted" warning: the safe path
        model, config = load_model(path)
    assert config["model"]["family"] == name.split("_", 1)[0]


# --- TorchScript archives -------------------------------------------------------------------------


class _WithSetState(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return self.w, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.w = state[0]
        self.training = state[1]


def _scripted(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_a_torchscript_archive_with_load_time_code_is_refused(tmp_path):
    path = _scripted(_WithSetState(), tmp_path / "model.pt")
    with pytest.raises(GeoposeDataError, match="__setstate__") as err:
        load_model(path)
    assert str(path) in str(err.value)


def _rewrite(src: Path, dst: Path, rename=lambda n: n, replace=None) -> Path:
    """Copy a zip member by member, renaming members or replacing one's bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if replace is not None and info.filename.endswith(replace[0]):
                data = replace[1]
            zout.writestr(rename(info.filename), data)
    return dst


def test_a_torchscript_archive_is_checked_before_it_is_opened(tmp_path):
    good = write_published("fourth_effb6", tmp_path / "good.pt")
    check_torchscript(good)  # the published layout passes
    climbing = _rewrite(good, tmp_path / "climb.pt", rename=lambda n: n.replace("good/", "../"))
    with pytest.raises(GeoposeDataError, match="would leave"):
        check_torchscript(climbing)
    marker = tmp_path / "created"
    evil = pickle.dumps(Creates(marker), protocol=2)
    bad = _rewrite(good, tmp_path / "bad.pt", replace=("constants.pkl", evil))
    with pytest.raises(GeoposeDataError, match="not a TorchScript type") as err:
        load_model(bad)
    assert "open" in str(err.value) and str(bad) in str(err.value) and not marker.exists()


def test_models_download_file_refuses_it(tmp_path, capsys, monkeypatch):
    """A hand-downloaded file is read before it is cached: refused, the cache left empty."""
    monkeypatch.setenv("GEOPOSE_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "created"
    path = hostile(tmp_path / "model_best.pth", marker)
    code, out = cli(capsys, "models", "download", "baseline", "--file", path)
    assert_refused(code, out, path, marker)
    assert not any((tmp_path / "cache").rglob("*.pth"))
