"""The published models' download into a cache, verified at every use.

The cache is ``$GEOPOSE_CACHE`` when set, else ``$XDG_CACHE_HOME/geopose/models``, else
``~/.cache/geopose/models``; entry ``NAME`` (:mod:`geopose.models.zoo.catalog`) lives in
``<cache>/NAME/<file>``. Downloads resume after an interruption (:mod:`geopose.io.download`).

Every file that becomes complete in the cache (downloaded, extracted from an archive, imported
from a hand download) gets a record beside it, ``<file>.record.json``: its SHA-256, size,
source and UTC time. :func:`fetch` and :func:`verified_path` hash a cached file each time they
hand it out and refuse one that no longer matches its record (or the published SHA-256, when
there is one), or that has no record; ``geopose models download NAME --force`` fetches it
anew. :func:`listing` compares sizes only (no hashing).

Use::

    from geopose.models.zoo import cache
    path = cache.fetch("first-v2l-fold5", on_progress=lambda stage, done, total: ...)
    path = cache.fetch("baseline", local_file="~/Downloads/model_best.pth")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from geopose.errors import GeoposeDataError
from geopose.io.atomic import atomic_path, check_output_dir
from geopose.io.download import (
    check_zip,
    download,
    extract_member,
    part_path,
    read_record,
    read_url,
    record_path,
    sha256_file,
    validators_path,
    write_record,
)

if TYPE_CHECKING:
    from geopose.types import ProgressFn

from geopose.models.zoo import catalog
from geopose.models.zoo.catalog import ARCHIVE_DIR, PublishedEntry


def cache_dir() -> Path:
    """The model cache: ``$GEOPOSE_CACHE``, else ``$XDG_CACHE_HOME/geopose/models``, else
    ``~/.cache/geopose/models`` (not created here)."""
    env = os.environ.get("GEOPOSE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec ignores relative paths
        return Path(xdg) / "geopose" / "models"
    return Path.home() / ".cache" / "geopose" / "models"


def _entry_paths(entry: PublishedEntry) -> list[Path]:
    folder = cache_dir() / entry.name
    return [folder / f for f in entry.files]


def _archive_path(entry: PublishedEntry) -> Path:
    return cache_dir() / ARCHIVE_DIR / (entry.archive or f"{entry.name}.zip")


def _published_sha256(entry: PublishedEntry, index: int) -> str | None:
    return entry.sha256[index].lower() if entry.sha256 and entry.sha256[index] else None


def cached_path(name: str) -> Path | None:
    """Path of the cached model file of ``name`` (its first file), or None if not all there.

    Not verified: use :func:`verified_path` for a file that is about to be read."""
    paths = _entry_paths(catalog.get_entry(name))
    return paths[0] if paths and all(p.is_file() for p in paths) else None


def _redo_hint(entry: PublishedEntry) -> str:
    if entry.needs_browser:
        return f"import it again with `geopose models download {entry.name} --force --file PATH`"
    return f"re-download it with `geopose models download {entry.name} --force`"


def _verify(entry: PublishedEntry, path: Path, published: str | None = None) -> Path:
    """Hash the cached ``path`` and compare it with its record (size too) and with the
    ``published`` SHA-256 when known; a one-line :class:`GeoposeDataError` naming the file
    otherwise."""
    record = read_record(path)
    if record is None:
        raise GeoposeDataError(
            path, f"has no download record (its origin is unknown): {_redo_hint(entry)}"
        )
    size = path.stat().st_size
    if size != record["size"]:
        raise GeoposeDataError(
            path,
            f"changed since it was downloaded ({record['size']} bytes recorded, {size} now): "
            + _redo_hint(entry),
        )
    now = sha256_file(path)
    if now != record["sha256"].lower():
        raise GeoposeDataError(
            path,
            f"changed since it was downloaded (sha256 {record['sha256']} recorded, {now} now): "
            + _redo_hint(entry),
        )
    if published is not None and now != published:
        raise GeoposeDataError(
            path, f"sha256 {now}, not the published {published}: {_redo_hint(entry)}"
        )
    return path


def verified_path(name: str) -> Path | None:
    """:func:`cached_path`, each of the entry's files checked first: its SHA-256 and size must
    match its download record (and the published SHA-256, when there is one). None when not
    cached; a one-line :class:`GeoposeDataError` naming the file and ``--force`` when a file
    changed or has no record."""
    entry = catalog.get_entry(name)
    paths = _entry_paths(entry)
    if not paths or not all(p.is_file() for p in paths):
        return None
    for i, path in enumerate(paths):
        _verify(entry, path, _published_sha256(entry, i))
    return paths[0]


def cache_state(name: str) -> str | None:
    """How entry ``name`` is cached, cheaply (sizes only, no hashing): None (not cached),
    ``"ok"`` (sizes match the records), ``"changed"`` (a size differs from its record) or
    ``"unrecorded"`` (a file has no download record)."""
    paths = _entry_paths(catalog.get_entry(name))
    if not paths or not all(p.is_file() for p in paths):
        return None
    for path in paths:
        record = read_record(path)
        if record is None:
            return "unrecorded"
        if record["size"] != path.stat().st_size:
            return "changed"
    return "ok"


def cached_bytes(name: str) -> int | None:
    """Size of entry ``name``'s files, bytes: each file's size on disk, or, for a file not in
    the cache, the size its download record holds; None when a file has neither (the authors
    published no sizes). Nothing is hashed."""
    total = 0
    for path in _entry_paths(catalog.get_entry(name)):
        if path.is_file():
            total += path.stat().st_size
            continue
        record = read_record(path)
        if record is None:
            return None
        total += record["size"]
    return total


def remove_cached(name: str) -> list[Path]:
    """Delete entry ``name``'s cached files, their records and part files (and, for an entry
    extracted from an archive, the downloaded archive); returns the files deleted."""
    entry = catalog.get_entry(name)
    targets = _entry_paths(entry)
    if entry.member is not None:
        targets.append(_archive_path(entry))
    removed = []
    for target in targets:
        for f in (target, record_path(target), part_path(target), validators_path(target)):
            if f.is_file() or f.is_symlink():
                try:
                    f.unlink()
                except OSError as exc:
                    raise GeoposeDataError(f, f"cannot be deleted ({exc.strerror})") from None
                removed.append(f)
    return removed


def listing() -> dict:
    """The whole catalog as JSON-ready data (``geopose models --json`` prints it): ``cache``
    (:func:`cache_dir`), ``models`` (every entry's fields, plus ``cached``: its cached file or
    None, ``cache_state``: :func:`cache_state`, and ``cached_bytes``: :func:`cached_bytes`)
    and ``ensembles`` (every published ensemble's fields). Nothing is hashed."""

    def entry(e: PublishedEntry) -> dict:
        cached = cached_path(e.name)
        return {
            **asdict(e),
            "cached": str(cached) if cached is not None else None,
            "cache_state": cache_state(e.name),
            "cached_bytes": cached_bytes(e.name),
        }

    return {
        "cache": str(cache_dir()),
        "models": [entry(e) for e in catalog.list_entries()],
        "ensembles": [asdict(e) for e in catalog.ENSEMBLES.values()],
    }


# --- fetching ------------------------------------------------------------------------------------


def direct_url(url: str) -> str:
    """A shared-link URL that downloads the file itself: Dropbox ``dl=0`` -> ``dl=1``."""
    parts = urlsplit(url)
    if parts.hostname in ("www.dropbox.com", "dropbox.com"):
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dl"]
        return urlunsplit(parts._replace(query=urlencode([*query, ("dl", "1")])))
    return url


def _browser_hint(entry: PublishedEntry) -> str:
    what = entry.archive if entry.member else entry.files[0]
    page = entry.browser_url or entry.source
    return (
        f"download {what} from {page} in a browser, then run "
        f"`geopose models download {entry.name} --file PATH`"
    )


def _resolve(entry: PublishedEntry, url: str, timeout: float) -> str:
    """The direct download URL of ``url`` for this entry."""
    if entry.resolver is None:
        return direct_url(url)
    if entry.resolver == "yandex-public":
        api = f"{catalog.YANDEX_PUBLIC_API}?{urlencode({'public_key': url})}"
        try:
            answer = json.loads(read_url(api, timeout=timeout))
            href = answer["href"]
            if not isinstance(href, str) or not href.startswith(("http://", "https://")):
                raise ValueError(href)
        except GeoposeDataError as exc:
            raise GeoposeDataError(
                url, f"Yandex Disk gave no download link ({exc}); {_browser_hint(entry)}"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise GeoposeDataError(
                url, f"unexpected answer from the Yandex Disk API; {_browser_hint(entry)}"
            ) from None
        return href
    raise ValueError(f"unknown resolver {entry.resolver!r}")


@contextlib.contextmanager
def _undo_new_folders(folder: Path) -> Iterator[None]:
    """On failure, remove the (empty) folders up to ``folder`` that did not exist before."""
    new = []
    p = folder
    while not p.exists() and p.parent != p:
        new.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in new:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _check_family(entry: PublishedEntry, file: Path, source: Path, what: str = "") -> None:
    """Raise a one-line :class:`GeoposeDataError` naming ``source`` (``what``: e.g. the
    archive member) unless ``file`` holds a model of ``entry``'s family."""
    from geopose.models.zoo import family_of, read_container

    try:
        container = read_container(file)
    except GeoposeDataError as exc:
        raise GeoposeDataError(source, f"{what}{exc.problem}; nothing was cached") from None
    fam = family_of(container)
    if fam is not None and fam.name == entry.family:
        return
    held = f"a {fam.name} model, {container.describe()}" if fam else container.describe()
    raise GeoposeDataError(
        source,
        f"{what}not a {entry.family} model for {entry.name}: it holds {held}; nothing was cached",
    )


def _place(
    entry: PublishedEntry,
    index: int,
    source: Path,
    fill: Callable[[Path], object],
    what: str = "",
    **info: object,
) -> Path:
    """Write entry file ``index`` atomically: ``fill(tmp)`` writes a temporary file beside it,
    which must hold the entry's family (and match the published SHA-256 when known); then its
    record is written and it is renamed into place. Nothing is left in the cache on failure."""
    dst = _entry_paths(entry)[index]
    published = _published_sha256(entry, index)
    with _undo_new_folders(dst.parent), atomic_path(dst) as tmp:
        fill(tmp)
        _check_family(entry, tmp, source, what)
        digest = sha256_file(tmp)
        if published is not None and digest != published:
            raise GeoposeDataError(
                source, f"{what}sha256 {digest}, not the published {published}; nothing was cached"
            )
        write_record(dst, source=tmp, sha256=digest, expected_sha256=published, **info)
    return dst


def _import_local(entry: PublishedEntry, local_file: Path) -> Path:
    """Copy (or extract from a zip) a file the user downloaded by hand into the cache, once
    it is read and found to hold the entry's family."""
    local_file = Path(local_file).expanduser()
    paths = _entry_paths(entry)
    if local_file.is_dir():
        sources = [local_file / f for f in entry.files]
        missing = [s.name for s in sources if not s.is_file()]
        if missing:
            raise GeoposeDataError(local_file, f"folder lacks {', '.join(missing)}")
    elif not local_file.is_file():
        raise GeoposeDataError(local_file, "no such file")
    elif len(paths) > 1:
        raise GeoposeDataError(
            local_file, f"{entry.name} has {len(paths)} files: pass the folder that holds them"
        )
    else:
        sources = [local_file]
    for i, (src, dst) in enumerate(zip(sources, paths, strict=True)):
        member = entry.member or dst.name
        source = str(src.resolve())
        if zipfile.is_zipfile(src) and _zip_has(src, member):  # the archive (e.g. models.zip)
            _place(
                entry,
                i,
                src,
                lambda tmp, src=src, member=member: extract_member(src, member, tmp),
                f"member {member!r}: ",
                imported_from=source,
                member=member,
            )
        else:
            _place(
                entry,
                i,
                src,
                lambda tmp, src=src: shutil.copyfile(src, tmp),
                imported_from=source,
            )
    return paths[0]


def _zip_has(path: Path, member: str) -> bool:
    """True when the zip ``path`` holds ``member`` (by path tail), itself or in a nested zip;
    a one-line :class:`GeoposeDataError` when a member's name is unsafe
    (:func:`geopose.io.download.unsafe_member`).

    A PyTorch checkpoint is a zip too (``archive/data.pkl``), so it never matches a member name.
    """
    tail = "/" + member.strip("/")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            check_zip(zf, path)  # an archive with an unsafe member is refused
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n == member or n.endswith(tail) or n.lower().endswith(".zip") for n in names)


def _drop_spent_archive(entry: PublishedEntry, archive: Path) -> None:
    """Delete a downloaded archive once every entry extracted from it is cached."""
    sharing = [e for e in catalog.CATALOG.values() if e.member and e.urls == entry.urls]
    if all(cached_path(e.name) is not None for e in sharing):
        archive.unlink(missing_ok=True)
        record_path(archive).unlink(missing_ok=True)


def fetch(
    name: str,
    on_progress: ProgressFn | None = None,
    local_file: str | Path | None = None,
    *,
    timeout: float = 60,
) -> Path:
    """Make entry ``name`` available in the cache and return the path of its model file.

    A cached entry is returned once verified (:func:`verified_path`). Otherwise its files are
    downloaded (resumably, see :func:`geopose.io.download.download`; ``on_progress(name,
    done_bytes, total_bytes)`` per file, stage ``name``), or extracted from the entry's
    archive, which is downloaded once into ``<cache>/_archives`` and deleted when every entry
    it holds is cached; an extracted file must hold the entry's family. ``local_file`` (a file
    downloaded by hand: the model file, the archive holding it, or a folder of the entry's
    files) is read, checked to hold the entry's family and copied into the cache instead; it
    is the only way for ``needs_browser`` entries, whose error says where to get the file.
    Every file written gets a download record (SHA-256, size, source, time). Errors are
    one-line :class:`GeoposeDataError`; call :func:`remove_cached` first to fetch anew.
    """
    entry = catalog.get_entry(name)
    if local_file is not None:
        check_output_dir(cache_dir())
        return _import_local(entry, Path(local_file))
    found = verified_path(name)
    if found is not None:
        return found
    check_output_dir(cache_dir())  # a cache that cannot be written: one line, exit code 2
    if entry.needs_browser or not entry.urls:
        raise GeoposeDataError(
            None,
            f"{entry.name}: the weights are on a page that needs a browser and a login; "
            + _browser_hint(entry),
        )
    paths = _entry_paths(entry)
    if entry.member is not None:
        archive = _archive_path(entry)
        if archive.is_file():
            _verify(entry, archive)
        else:
            url = _resolve(entry, entry.urls[0], timeout)
            download(
                url,
                archive,
                on_progress=on_progress,
                stage=name,
                timeout=timeout,
                accept_html=False,
                record=True,
            )
        archive_record = read_record(archive) or {}
        try:
            _place(
                entry,
                0,
                archive,
                lambda tmp: extract_member(archive, entry.member, tmp),
                f"member {entry.member!r}: ",
                url=entry.urls[0],
                member=entry.member,
                archive_sha256=archive_record.get("sha256"),
            )
        except GeoposeDataError as exc:
            raise GeoposeDataError(
                None,
                f"{exc}; `geopose models download {name} --force` downloads it again, or "
                + _browser_hint(entry),
            ) from None
        _drop_spent_archive(entry, archive)
        return paths[0]
    for i, (url, path) in enumerate(zip(entry.urls, paths, strict=True)):
        if path.is_file():
            _verify(entry, path, _published_sha256(entry, i))
            continue
        download(
            _resolve(entry, url, timeout),
            path,
            sha256=_published_sha256(entry, i),
            on_progress=on_progress,
            stage=name,
            timeout=timeout,
            accept_html=False,
            record=True,
        )
    return paths[0]


__all__ = [
    "cache_dir",
    "cache_state",
    "cached_bytes",
    "cached_path",
    "direct_url",
    "fetch",
    "listing",
    "remove_cached",
    "verified_path",
]
