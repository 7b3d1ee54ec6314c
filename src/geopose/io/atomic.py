"""Atomic file writing (a temporary file beside the target, then a rename) and the checks that an
output path can be written at all.

Temporary files are named ``.{name}.{host}-{pid}.{random}.tmp{suffix}``: a process killed while
writing (SIGKILL, power loss) leaves one behind, and :func:`remove_stale_temps` (called by
:func:`ensure_output_dir`) deletes those of processes of this host that are gone, never those
of a live writer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from geopose.errors import OutputExistsError, OutputPathError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; finished files get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"
_TMP_RE = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[^.]+\.tmp[^/]*$")
# errno values of a write that fails because of where it goes, not of what is written.
_PATH_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _reason(exc: OSError) -> str:
    """A short reason for an OSError on an output path ("Permission denied", ...)."""
    return exc.strerror or type(exc).__name__


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed but not yet reaped, does
    not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    try:  # Linux: the state letter follows the parenthesised command name
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files that geopose processes of this host left in ``folder`` (not
    below it) when they were killed while writing; returns the files deleted. Temporary files
    of live processes and of other hosts are kept."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m is None or m["host"] != _HOST or _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _dir_problem(folder: Path, target: Path) -> str | None:
    """Why the folder ``folder`` cannot be made or written, for an error about ``target`` (the
    folder itself or a file in it); None when it can."""
    p = folder
    while not (p.exists() or p.is_symlink()):
        if p.parent == p:
            return "no existing folder above it"
        p = p.parent
    if not p.is_dir():
        if p == target:
            return "exists and is not a folder"
        return f"cannot be created: {p} is {'a file' if p.is_file() else 'there'}, not a folder"
    if not os.access(p, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "read-only file system" if read_only else "permission denied"
        return f"cannot be written: {why}" + ("" if p == target else f" in {p}")
    return None


def check_output_dir(path: str | Path) -> Path:
    """Raise :class:`OutputPathError` if a folder cannot be created or written at ``path`` (a
    file in the way, no permission, a read-only disk); creates nothing."""
    path = Path(path)
    problem = _dir_problem(path, path)
    if problem is not None:
        raise OutputPathError(path, problem)
    return path


def check_free_space(path: str | Path, need: float, what: str) -> None:
    """Raise :class:`OutputPathError` when the disk that ``path`` (or its nearest existing
    folder) is on has fewer than ``need`` bytes free for ``what`` (e.g. "the demo");
    creates nothing."""
    path = Path(path)
    p = path
    while not p.exists() and p.parent != p:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return  # not measurable here: the writes themselves will tell
    if free < need:
        raise OutputPathError(
            path,
            f"{what} needs about {need / 1e6:,.0f} MB of disk and {free / 1e6:,.0f} MB are free "
            "there; free some space or choose a folder on another disk",
        )


def ensure_output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (with its parents) and remove the temporary files that
    killed geopose runs left in it; :class:`OutputPathError` when it cannot be created or
    written (nothing is created then)."""
    path = check_output_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(path, f"cannot be created ({_reason(exc)})") from exc
    remove_stale_temps(path)
    return path


def check_output_file(path: str | Path) -> Path:
    """Raise :class:`OutputPathError` if a file cannot be written at ``path`` (its folder cannot
    be created or written, or ``path`` is a folder); creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(path, "is a folder, not a file")
    problem = _dir_problem(path.parent, path)
    if problem is not None:
        raise OutputPathError(path, problem)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    On error the temporary file is removed and ``path`` is left as it was. With
    ``overwrite=False`` an existing ``path`` raises :class:`OutputExistsError` before anything
    is written. A target that cannot be written (its folder cannot be created, no permission,
    a read-only or full disk, a folder in the way) raises :class:`OutputPathError`.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise OutputExistsError(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name}.{_HOST}-{os.getpid()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        problem = _dir_problem(path.parent, path) or f"cannot be written ({_reason(exc)})"
        raise OutputPathError(path, problem) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        if exc.errno in _PATH_ERRNOS:
            raise OutputPathError(path, f"cannot be written ({_reason(exc)})") from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    try:
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        problem = (
            "is a folder, not a file" if path.is_dir() else f"cannot be written ({_reason(exc)})"
        )
        raise OutputPathError(path, problem) from exc


def write_bytes_atomic(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"), overwrite)
