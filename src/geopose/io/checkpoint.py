"""Model files read as data: PyTorch pickles through an allow-list, TorchScript archives checked
before they are opened.

A ``torch.save`` file is a pickle, and a pickle may name any Python callable to run while it is
read. :func:`load_torch_file` reads it with ``torch.load(weights_only=True)``: tensors, plain
containers and numbers, plus exactly the globals of :func:`safe_globals` (the numpy scalars that
the published 1st place files hold in their metadata). A file that asks for anything else is
refused with one line naming the file and the global; it is never read a second time with full
unpickling. geopose's own checkpoints hold plain types only.

Full unpickling is possible only inside :func:`trusted_files`, which the commands enter for
their explicit ``--trust-file`` flag (with a warning): for a file of the user's own that holds
other Python objects. No published model and no geopose checkpoint needs it.

A TorchScript archive (the 4th place files) is a zip of pickled data plus TorchScript source.
:func:`read_torchscript_state` checks the archive first (:func:`check_torchscript`): member
paths inside one folder, pickles that name only TorchScript classes and tensor rebuilders, and
no ``__setstate__`` (the only TorchScript code that runs while an archive loads); only then
``torch.jit.load`` reads it, and geopose keeps its ``state_dict()`` and never calls the module.
"""

from __future__ import annotations

import contextlib
import io
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from geopose.errors import GeoposeDataError
from geopose.io.download import check_zip

TRUST_FLAG = "--trust-file"
"""The commands' flag that enters :func:`trusted_files`."""

_TRUSTED: ContextVar[bool] = ContextVar("geopose_trusted_files", default=False)

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand (\d+)")


def safe_globals() -> list:
    """The globals (beyond torch's own tensor types) that a model file may ask for: numpy
    scalars (``numpy.float64`` etc. in a checkpoint's metrics) and their dtypes."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    kinds = ("f2", "f4", "f8", "i4", "i8", "b1")
    return [scalar, np.dtype, *(type(np.dtype(k)) for k in kinds)]


@contextlib.contextmanager
def trusted_files() -> Iterator[None]:
    """Inside this block, :func:`load_torch_file` reads pickles with full unpickling (the file
    can run code): only for ``--trust-file``, which the user passes for files they trust."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def files_trusted() -> bool:
    """True inside :func:`trusted_files`."""
    return _TRUSTED.get()


def refused_global(exc: BaseException) -> str | None:
    """The global (``module.name``) or pickle instruction that ``torch.load(weights_only=True)``
    refused, from its error; None when the error is not such a refusal."""
    text = str(exc)
    if "Weights only load failed" not in text and "weights_only" not in text:
        return None
    m = _GLOBAL.search(text)
    if m is not None:
        return m.group(1)
    m = _OPERAND.search(text)
    if m is not None:
        return f"pickle instruction {m.group(1)}"
    return "an object outside the allow-list"


def load_torch_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` a model or checkpoint file as data (module doc).

    Raises :class:`GeoposeDataError` naming the file: for a pickle that asks for a global
    outside :func:`safe_globals` (named, with ``--trust-file`` as the way out for a trusted
    file), and for anything unreadable.
    """
    import torch

    path = Path(path)
    if files_trusted():
        warnings.warn(
            f"{path}: loading with full unpickling ({TRUST_FLAG}): the file can run code",
            UserWarning,
            stacklevel=2,
        )
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for corrupt files
            raise GeoposeDataError(
                path, f"not a readable PyTorch checkpoint ({exc})"[:300]
            ) from exc
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(safe_globals()):
            warnings.simplefilter("ignore", UserWarning)  # "protocol 4 in the checkpoint"
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for corrupt files
        name = refused_global(exc)
        if name is not None:
            name = _first_global(path) or name
        if name is None:
            raise GeoposeDataError(
                path, f"not a readable PyTorch checkpoint ({type(exc).__name__})"
            ) from exc
        raise GeoposeDataError(
            path,
            f"refused: the file asks for {name}, which geopose does not load from a model file "
            f"(loading it could run code); if you trust the file, pass {TRUST_FLAG}",
        ) from None


def _first_global(path: Path) -> str | None:
    """The first global a pickle file names outside torch (read with ``pickletools``, never
    run), for the error message: the data pickle of a ``torch.save`` zip, else the file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(name) if name else b""
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = ".".join(strings[-2:])
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if not name.startswith(("torch.", "collections.", "numpy.", "_codecs.")):
                return name
    except Exception:  # noqa: BLE001 - only a better message; the refusal stands without it
        return None
    return None


# --- TorchScript archives -------------------------------------------------------------------------

_TS_MODULES = ("__torch__", "torch", "collections")
"""Top-level modules a TorchScript archive's pickles may name (its classes, tensor and storage
rebuilders, ``collections.OrderedDict``): all that ``torch.jit.save`` writes."""

_SETSTATE = re.compile(r"^\s*def\s+__setstate__\s*\(", re.MULTILINE)


def _pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every global a pickle names (read, never run). ``torch.jit.save``
    writes protocol-2 ``GLOBAL`` only; a ``STACK_GLOBAL`` (whose name is not in the opcode)
    is reported as such."""
    out: set[str] = set()
    for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
        if op.name in ("GLOBAL", "INST"):
            out.add(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            out.add("STACK_GLOBAL")
    return out


def check_torchscript(path: str | Path) -> None:
    """Check a TorchScript archive's contents before it is opened (module doc); raise
    :class:`GeoposeDataError` naming the file and the first problem."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            check_zip(zf, path)  # no absolute, climbing or linked member
            infos = zf.infolist()
            names = [i.filename for i in infos]
            tops = {n.split("/", 1)[0] for n in names}
            if len(tops) != 1:
                raise GeoposeDataError(
                    path, f"not a TorchScript archive (top folders {sorted(tops)[:3]})"
                )
            for info in infos:
                name = info.filename
                if name.endswith((".pkl", ".debug_pkl")):
                    try:
                        asked = _pickle_globals(zf.read(info))
                    except (ValueError, EOFError) as exc:
                        raise GeoposeDataError(path, f"{name}: unreadable pickle ({exc})") from exc
                    other = sorted(g for g in asked if g.split(".", 1)[0] not in _TS_MODULES)
                    if other:
                        raise GeoposeDataError(
                            path, f"refused: {name} asks for {other[0]}, not a TorchScript type"
                        )
                elif "/code/" in name and name.endswith(".py"):
                    text = zf.read(info).decode("utf-8", errors="replace")
                    if _SETSTATE.search(text):
                        raise GeoposeDataError(
                            path,
                            f"refused: {name} defines __setstate__, code that would run while "
                            "the archive loads",
                        )
    except zipfile.BadZipFile as exc:
        raise GeoposeDataError(path, f"not a readable TorchScript archive ({exc})") from exc


def read_torchscript_state(path: str | Path) -> dict:
    """The ``state_dict()`` of a TorchScript archive, after :func:`check_torchscript`."""
    import torch

    path = Path(path)
    check_torchscript(path)
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated, yet it is the format
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return dict(module.state_dict())
    except Exception as exc:  # noqa: BLE001 - jit raises many kinds for bad archives
        raise GeoposeDataError(
            path, f"unreadable TorchScript archive ({type(exc).__name__})"
        ) from exc


def is_torchscript(path: str | Path) -> bool:
    """True when ``path`` is a TorchScript archive (a zip holding ``…/code/`` and
    ``…/constants.pkl``), whatever its name."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)
