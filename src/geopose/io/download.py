"""Resumable, atomic HTTP(S) downloads with the standard library, and zip-member extraction.

:func:`download` streams a URL into ``dest.name + ".part"`` beside ``dest`` and renames it onto
``dest`` only once it is complete (the length the server announced, and the SHA-256 when one is
given). An interrupted download keeps its part file; running the same call again asks the
server for the rest (``Range: bytes=N-``) and appends it:

- ``206 Partial Content``: the rest is appended;
- ``200 OK``: the server ignores ranges, so the part file is restarted from byte 0;
- ``416 Range Not Satisfiable``: the part file already holds the whole resource.

Progress goes to an optional :data:`geopose.types.ProgressFn`, ``on_progress(stage, done_bytes,
total_bytes)`` (total 0 when the server does not say); this module draws nothing. Every failure
is a one-line :class:`geopose.errors.GeoposeDataError` naming the URL (or the file): HTTP
errors, no network, a connection cut short, a checksum mismatch.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from geopose import __version__
from geopose.errors import GeoposeDataError
from geopose.io.atomic import atomic_path, ensure_output_dir

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


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _request(url: str, start: int = 0) -> urllib.request.Request:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.Request(url, headers=headers)


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


def _finish(url: str, part: Path, dest: Path, sha256: str | None) -> Path:
    """Check the complete part file's checksum and rename it onto ``dest``."""
    if sha256 is not None:
        got = sha256_file(part)
        if got.lower() != sha256.lower():
            part.unlink(missing_ok=True)
            raise GeoposeDataError(
                url,
                f"checksum mismatch: expected sha256 {sha256.lower()}, got {got} "
                "(the downloaded data was deleted; run again to retry)",
            )
    os.replace(part, dest)
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
) -> Path:
    """Download ``url`` to ``dest`` (resumable, atomic) and return ``dest``.

    Bytes go to ``dest.name + ".part"`` beside ``dest``; a part file left by an interrupted
    run is resumed with a ``Range`` request. ``dest`` appears only when the whole resource is
    there: its length matches the server's ``Content-Length`` / ``Content-Range`` total, and
    its SHA-256 matches ``sha256`` when given (a mismatch deletes the part file and raises).
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
        try:
            resp = urllib.request.urlopen(_request(url, start), timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start > 0:
                m = _CONTENT_RANGE_416.search(exc.headers.get("Content-Range", "") or "")
                exc.close()
                if m is not None and int(m.group(1)) == start:
                    progress(start, start)
                    return _finish(url, part, dest, sha256)
                part.unlink()  # total unknown, or shorter than our part file: start again
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
                if m is None or int(m.group(1)) != start:
                    part.unlink(missing_ok=True)  # a range we did not ask for: start again
                    continue
                total = None if m.group(3) == "*" else int(m.group(3))
                mode = "ab"
            else:  # 200: the whole resource (the server ignored or was not sent a range)
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                start = 0
                mode = "wb"

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
            part.unlink(missing_ok=True)
            raise GeoposeDataError(
                url, f"received {done} bytes, more than the {total} announced; data deleted"
            )
        return _finish(url, part, dest, sha256)

    raise GeoposeDataError(url, "the server's range answers do not match the partial file")


# --- zip members --------------------------------------------------------------------------------


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
    appears only when the whole member was written.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            name = _find_member(zf, member)
            if name is not None:
                return _copy_out(zf, name, dest)
            for inner in (n for n in zf.namelist() if n.lower().endswith(".zip")):
                with zf.open(inner) as raw, zipfile.ZipFile(raw) as zf_inner:
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
