"""Resumable, atomic HTTP(S) downloads with the standard library, and zip-member extraction.

:func:`download` streams a URL into ``dest.name + ".part"`` beside ``dest`` and renames it onto
``dest`` only once it is complete (the length the server announced, and the SHA-256 when one is
given). An interrupted download keeps its part file; running the same call again asks the
server for the rest (``Range: bytes=N-``) and appends it:

- ``206 Partial Content``: the rest is appended;
- ``200 OK``: the server ignores ranges, so the part file is restarted from byte 0;
- ``416 Range Not Satisfiable``: the part file already holds the whole resource.

The server's validators (ETag, Last-Modified, total length) are saved beside the part file
(``NAME.part.json``) when it is started; a resume sends ``If-Range`` and restarts from byte 0
when the server's file changed in between (a 200 answer, or other validators on the 206), or
when the part file has no such sidecar (its origin is unknown), so a part file is never
spliced onto a different file. With ``record=True`` the finished file's SHA-256, size, URL and
validators are written to ``NAME.record.json`` beside it (:func:`write_record`).

Progress goes to an optional :data:`geopose.types.ProgressFn`, ``on_progress(stage, done_bytes,
total_bytes)`` (total 0 when the server does not say); this module draws nothing. Every failure
is a one-line :class:`geopose.errors.GeoposeDataError` naming the URL (or the file): HTTP
errors, no network, a connection cut short, a checksum mismatch, an unsafe zip archive.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import stat
import urllib.error
import urllib.request
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geopose import __version__
from geopose.errors import GeoposeDataError
from geopose.io.atomic import atomic_path, ensure_output_dir, write_text_atomic

if TYPE_CHECKING:  # geopose.types imports torch: not for a download
    from geopose.types import ProgressFn

CHUNK = 1 << 20
"""Bytes read from the network per step (1 MiB)."""

USER_AGENT = f"geopose/{__version__} (+urllib)"

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_CONTENT_RANGE_416 = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


def part_path(dest: str | Path) -> Path:
    """The partial file beside ``dest`` that :func:`download` writes into (``NAME.part``)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def validators_path(dest: str | Path) -> Path:
    """The sidecar of ``dest``'s part file (``NAME.part.json``): the server's ETag,
    Last-Modified and total length (bytes) when the part file was started."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part.json")


def record_path(path: str | Path) -> Path:
    """The download record beside a complete file (``NAME.record.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".record.json")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def write_record(
    path: str | Path,
    *,
    source: str | Path | None = None,
    sha256: str | None = None,
    **info: Any,
) -> dict[str, Any]:
    """Write the record of the complete file ``path`` to ``NAME.record.json`` beside it
    (atomically) and return it: ``file``, ``sha256`` (hashed here unless given), ``size``
    (bytes), the extra ``info`` (e.g. ``url``, ``etag``, ``last_modified``) and ``time`` (UTC,
    ISO 8601). ``source``: the file to measure when it is not at ``path`` yet (a part or
    temporary file about to be renamed onto it)."""
    path = Path(path)
    measured = Path(source) if source is not None else path
    record = {
        "file": path.name,
        "sha256": (sha256 or sha256_file(measured)).lower(),
        "size": measured.stat().st_size,
        **info,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomic(record_path(path), json.dumps(record, indent=1) + "\n")
    return record


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record :func:`write_record` wrote for ``path``; None when there is none, or when it
    is unreadable or lacks ``sha256`` and ``size``."""
    try:
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if not isinstance(record.get("sha256"), str) or not isinstance(record.get("size"), int):
        return None
    return record


def _request(url: str, start: int = 0, if_range: str | None = None) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
        if if_range:
            headers["If-Range"] = if_range
    return urllib.request.Request(url, headers=headers)


def _validators(headers: Any, total: int | None) -> dict[str, Any]:
    """The validators of an answer: ETag, Last-Modified, total length (bytes or None)."""
    return {
        "etag": headers.get("ETag") if headers is not None else None,
        "last_modified": headers.get("Last-Modified") if headers is not None else None,
        "total": total,
    }


def _load_validators(dest: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads(validators_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _if_range(saved: dict[str, Any]) -> str | None:
    """The ``If-Range`` value: a strong ETag, else Last-Modified, else None."""
    etag = saved.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    return saved.get("last_modified") or None


def _changed(saved: dict[str, Any], now: dict[str, Any], *, partial: bool = False) -> bool:
    """Whether the answer's validators differ from those saved with the part file
    (``partial``: compare only those the answer carries)."""
    keys = ("etag", "last_modified", "total")
    return any(now[k] != saved.get(k) for k in keys if not (partial and now[k] is None))


def _discard(dest: Path) -> None:
    """Delete ``dest``'s part file and its sidecar."""
    part_path(dest).unlink(missing_ok=True)
    validators_path(dest).unlink(missing_ok=True)


def _network_error(url: str, exc: BaseException, timeout: float) -> GeoposeDataError:
    """A one-line error for a failure to reach ``url`` (no HTTP status)."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return GeoposeDataError(url, f"no answer within {timeout:g} s (network down or slow?)")
    if isinstance(exc, socket.gaierror):
        return GeoposeDataError(url, "cannot resolve the host name (no network connection?)")
    if isinstance(exc, ConnectionRefusedError):
        return GeoposeDataError(url, "connection refused")
    reason = str(exc).replace("\n", " ").strip() or type(exc).__name__
    return GeoposeDataError(url, f"cannot connect ({reason})")


def _http_error(url: str, exc: urllib.error.HTTPError) -> GeoposeDataError:
    reason = str(exc.reason or "").replace("\n", " ").strip()
    hint = ""
    if exc.code in (401, 403):
        hint = " (the file may need a login: download it in a browser instead)"
    elif exc.code == 404:
        hint = " (the file is no longer at this address?)"
    return GeoposeDataError(url, f"HTTP {exc.code} {reason}{hint}".replace("  ", " "))


def read_url(url: str, *, timeout: float = 60, limit: int = 1 << 20) -> bytes:
    """GET a small resource (an API answer) into memory; errors as for :func:`download`."""
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as resp:
            data = resp.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise _http_error(url, exc) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _network_error(url, exc, timeout) from None
    if len(data) > limit:
        raise GeoposeDataError(url, f"answer larger than {limit} bytes")
    return data


def _finish(url: str, part: Path, dest: Path, sha256: str | None, record: bool) -> Path:
    """Check the complete part file's checksum, write its record (``record``) and rename it
    onto ``dest``."""
    got = sha256_file(part) if sha256 is not None or record else None
    if sha256 is not None and got != sha256.lower():
        _discard(dest)
        raise GeoposeDataError(
            url,
            f"checksum mismatch: expected sha256 {sha256.lower()}, got {got} "
            "(the downloaded data was deleted; run again to retry)",
        )
    if record:
        saved = _load_validators(dest) or {}
        write_record(
            dest,
            source=part,
            sha256=got,
            url=url,
            etag=saved.get("etag"),
            last_modified=saved.get("last_modified"),
            expected_sha256=sha256.lower() if sha256 else None,
        )
    os.replace(part, dest)
    validators_path(dest).unlink(missing_ok=True)
    return dest


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    on_progress: ProgressFn | None = None,
    stage: str | None = None,
    timeout: float = 60,
    accept_html: bool = True,
    record: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, atomic) and return ``dest``.

    Bytes go to ``dest.name + ".part"`` beside ``dest``; a part file left by an interrupted
    run is resumed with a ``Range`` request when the server's file is unchanged (``If-Range``,
    and the ETag, Last-Modified and total length saved in ``NAME.part.json`` when the part
    file was started), else restarted from byte 0. ``dest`` appears only when the whole
    resource is there: its length matches the server's ``Content-Length`` / ``Content-Range``
    total, and its SHA-256 matches ``sha256`` when given (a mismatch deletes the part file and
    raises). With ``record`` the file's SHA-256, size, URL and validators are written to
    ``NAME.record.json`` (:func:`write_record`) before ``dest`` appears.
    ``on_progress(stage, done, total)`` is called as bytes arrive (``stage``: ``dest``'s name
    unless given; ``total`` 0 when unknown).
    ``timeout`` (s) applies to connecting and to each read. With ``accept_html=False`` an HTML
    answer (a web page where a file was expected, e.g. a login or preview page) is refused.

    Raises :class:`GeoposeDataError` (naming the URL) for HTTP errors, no network, a
    connection cut short (the part file is kept for the next run) and a bad checksum.
    """
    dest = Path(dest)
    part = part_path(dest)
    ensure_output_dir(dest.parent)
    label = stage or dest.name

    def progress(done: int, total: int | None) -> None:
        if on_progress is not None:
            on_progress(label, done, total or 0)

    for _attempt in range(2):  # a second pass only after a part file had to be discarded
        start = part.stat().st_size if part.is_file() else 0
        saved = _load_validators(dest) if start > 0 else None
        if saved is None:  # no part file, or one of unknown origin: start from byte 0
            _discard(dest)
            start = 0
        try:
            req = _request(url, start, _if_range(saved) if saved is not None else None)
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and saved is not None:
                m = _CONTENT_RANGE_416.search(exc.headers.get("Content-Range", "") or "")
                now = _validators(exc.headers, int(m.group(1)) if m is not None else None)
                exc.close()
                same = now["total"] == start and not _changed(saved, now, partial=True)
                if m is not None and same:
                    progress(start, start)
                    return _finish(url, part, dest, sha256, record)
                _discard(dest)  # total unknown, other than our part file, or a changed file
                continue
            raise _http_error(url, exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _network_error(url, exc, timeout) from None

        with resp:
            ctype = (resp.headers.get("Content-Type") or "").lower()
            if not accept_html and ctype.startswith(("text/html", "application/xhtml")):
                raise GeoposeDataError(
                    url,
                    "the server sent a web page, not the file (the link may need a browser "
                    "or a login: download it by hand)",
                )
            if resp.status == 206:
                m = _CONTENT_RANGE.search(resp.headers.get("Content-Range", "") or "")
                total = None if m is None or m.group(3) == "*" else int(m.group(3))
                if (
                    saved is None
                    or m is None
                    or int(m.group(1)) != start
                    or _changed(saved, _validators(resp.headers, total))
                ):
                    _discard(dest)  # another range, or the file changed: start again
                    continue
                mode = "ab"
            else:  # 200: the whole resource (the server ignored the range, or it changed)
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                start = 0
                mode = "wb"
                sidecar = {"url": url, **_validators(resp.headers, total)}
                write_text_atomic(validators_path(dest), json.dumps(sidecar, indent=1) + "\n")

            done = start
            progress(done, total)
            try:
                with open(part, mode) as out:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        out.write(block)
                        done += len(block)
                        progress(done, total)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, (TimeoutError, socket.timeout)):
                    what = f"no data for {timeout:g} s"
                else:
                    what = "connection lost"
                size = f"{done} of {total}" if total is not None else f"{done}"
                raise GeoposeDataError(
                    url,
                    f"{what} after {size} bytes; run again to resume (partial file {part})",
                ) from None

        if total is not None and done < total:
            raise GeoposeDataError(
                url,
                f"download cut short at {done} of {total} bytes; run again to resume "
                f"(partial file {part})",
            )
        if total is not None and done > total:
            _discard(dest)
            raise GeoposeDataError(
                url, f"received {done} bytes, more than the {total} announced; data deleted"
            )
        return _finish(url, part, dest, sha256, record)

    raise GeoposeDataError(url, "the server's range answers do not match the partial file")


# --- zip members --------------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_member(zf: zipfile.ZipFile) -> str | None:
    """Why ``zf`` must not be extracted from, or None: the first member whose name is absolute,
    has a ``..`` component, a drive letter or a backslash, or that is a symbolic link."""
    for info in zf.infolist():
        name = info.filename
        if stat.S_ISLNK(info.external_attr >> 16):
            return f"member {name!r} is a symbolic link: refused"
        if name.startswith("/") or "\\" in name or _DRIVE.match(name) or ".." in name.split("/"):
            return f"member {name!r} would leave the folder it is extracted to: refused"
    return None


def check_zip(zf: zipfile.ZipFile, path: str | Path, inner: str | None = None) -> None:
    """Raise a one-line :class:`GeoposeDataError` naming ``path`` (and the nested archive
    ``inner``) when :func:`unsafe_member` finds a bad member in ``zf``."""
    problem = unsafe_member(zf)
    if problem is not None:
        raise GeoposeDataError(path, f"nested archive {inner!r}: {problem}" if inner else problem)


def _find_member(zf: zipfile.ZipFile, member: str) -> str | None:
    """The archive name of ``member``: exact, else the one entry ending in ``/member``."""
    names = [n for n in zf.namelist() if not n.endswith("/")]
    if member in names:
        return member
    tail = "/" + member.strip("/")
    hits = [n for n in names if n.endswith(tail)]
    if len(hits) > 1:
        raise GeoposeDataError(
            zf.filename, f"{member!r} is ambiguous in the archive: {', '.join(hits[:4])}"
        )
    return hits[0] if hits else None


def _copy_out(zf: zipfile.ZipFile, name: str, dest: Path) -> Path:
    with atomic_path(dest) as tmp, zf.open(name) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    return dest


def extract_member(zip_path: str | Path, member: str, dest: str | Path) -> Path:
    """Extract one file of a zip archive to ``dest`` atomically and return ``dest``.

    ``member`` is matched exactly, else as the tail of one archive path (``a/b.pt`` finds
    ``chkps_dist/a/b.pt``), else the same way inside a zip nested in the archive (an archive
    of a folder that holds the zip). The member's CRC is checked while it is copied; ``dest``
    appears only when the whole member was written. An archive (or a nested one) with an
    unsafe member (:func:`unsafe_member`) is refused before anything is written.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            check_zip(zf, zip_path)
            name = _find_member(zf, member)
            if name is not None:
                return _copy_out(zf, name, dest)
            for inner in (n for n in zf.namelist() if n.lower().endswith(".zip")):
                with zf.open(inner) as raw, zipfile.ZipFile(raw) as zf_inner:
                    check_zip(zf_inner, zip_path, inner)
                    name = _find_member(zf_inner, member)
                    if name is not None:
                        return _copy_out(zf_inner, name, dest)
            listing = [n for n in zf.namelist() if not n.endswith("/")]
    except FileNotFoundError:
        raise GeoposeDataError(zip_path, "no such file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise GeoposeDataError(
            zip_path, f"not a readable zip archive ({exc}); delete it and download it again"
        ) from None
    shown = ", ".join(listing[:5]) + (", ..." if len(listing) > 5 else "")
    raise GeoposeDataError(zip_path, f"no member {member!r} in the archive (it holds: {shown})")
