"""Resumable downloads (geopose.io.download) and the published-model catalog, against a local
HTTP server on 127.0.0.1: nothing here touches the internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from geopose.errors import GeoposeDataError
from geopose.inference.tta import TTA_VIEWS
from geopose.io.download import (
    download,
    extract_member,
    part_path,
    read_record,
    record_path,
    validators_path,
)
from geopose.models.zoo import catalog

PAYLOAD = bytes(range(256)) * 4000  # 1 024 000 bytes, several network chunks

BASELINE_KEYS = ("xydir_head.3.weight", "height_head.0.weight", "mag_head.0.weight")
FOURTH_KEYS = ("scale_xydir_head.3.weight", "height_head.weight")


def tiny(keys: tuple[str, ...], fill: float = 0.0) -> bytes:
    """A torch.save'd state dict with a family's signature keys (what the --file check and the
    archive check read), a few hundred bytes."""
    buf = io.BytesIO()
    torch.save({k: torch.full((1,), fill) for k in keys}, buf)
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless ``server.ignore_range``; with
    ``server.cut_after = N`` it announces the full length, sends N bytes and drops the
    connection (once, then it resets to None). With ``server.validators`` it sends an ETag
    (from the content) and a Last-Modified, and honours ``If-Range`` (a validator that does not
    match gets the whole file, 200) unless ``server.ignore_if_range``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        srv.if_ranges.append(self.headers.get("If-Range"))
        if self.path.startswith("/api/yandex"):
            body = json.dumps({"href": srv.yandex_href}).encode()
            return self._send(200, body, {"Content-Type": "application/json"})
        entry = srv.files.get(self.path.split("?")[0])
        if entry is None:
            return self._send(404, b"not here", {"Content-Type": "text/plain"})
        data, ctype = entry
        start, status, headers = 0, 200, {"Content-Type": ctype}
        if srv.validators:
            headers["ETag"] = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
            headers["Last-Modified"] = srv.last_modified
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if (
            if_range is not None
            and srv.validators
            and not srv.ignore_if_range
            and if_range not in (headers["ETag"], headers["Last-Modified"])
        ):
            rng = None  # the file changed: the whole of it
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            n, srv.cut_after = srv.cut_after, None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        self.wfile.write(body)
        return None

    def _send(self, status, body, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = {"/model.pth": (PAYLOAD, "application/octet-stream")}
    srv.ignore_range = False
    srv.cut_after = None
    srv.validators = True
    srv.ignore_if_range = False
    srv.last_modified = "Wed, 21 Jul 2021 07:28:00 GMT"
    srv.requests = []
    srv.if_ranges = []
    srv.yandex_href = None
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("GEOPOSE_CACHE", str(root))
    return root


# --- download ----------------------------------------------------------------------------------


def test_complete_download_reports_progress(server, tmp_path):
    seen = []
    dest = download(
        server.base + "/model.pth",
        tmp_path / "sub" / "m.pth",
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        on_progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    assert dest == tmp_path / "sub" / "m.pth"
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert seen[0] == ("m.pth", 0, len(PAYLOAD))  # stage: the file's name unless given
    assert seen[-1] == ("m.pth", len(PAYLOAD), len(PAYLOAD))
    assert all(a[1] <= b[1] for a, b in zip(seen, seen[1:], strict=False))


def test_interrupted_download_resumes_byte_identical(server, tmp_path):
    dest = tmp_path / "m.pth"
    url = server.base + "/model.pth"
    server.cut_after = 300_000
    with pytest.raises(GeoposeDataError, match="run again to resume") as err:
        download(url, dest)
    assert url in str(err.value)
    assert not dest.exists()
    part = part_path(dest)
    assert part.is_file() and 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size

    seen = []
    download(url, dest, on_progress=lambda *c: seen.append(c), stage="mine")
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()
    assert server.requests[-1] == ("/model.pth", f"bytes={have}-")
    assert seen[0] == ("mine", have, len(PAYLOAD))  # starts where the part file ended


def _cut(server, url: str, dest: Path, after: int = 300_000) -> int:
    """Start a download that the server cuts after ``after`` bytes; the part file's size."""
    server.cut_after = after
    with pytest.raises(GeoposeDataError, match="run again to resume"):
        download(url, dest)
    assert validators_path(dest).is_file()  # the server's validators, beside the part file
    return part_path(dest).stat().st_size


def test_server_ignoring_range_restarts(server, tmp_path):
    dest = tmp_path / "m.pth"
    url = server.base + "/model.pth"
    _cut(server, url, dest)
    server.ignore_range = True
    download(url, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1][1] is not None  # a range was asked for, and ignored
    assert not validators_path(dest).exists()


def test_complete_part_file_gets_416_and_is_finished(server, tmp_path):
    dest = tmp_path / "m.pth"
    url = server.base + "/model.pth"
    have = _cut(server, url, dest)
    with open(part_path(dest), "ab") as f:
        f.write(PAYLOAD[have:])
    n = len(server.requests)
    download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD and not part_path(dest).exists()
    assert server.requests[n:] == [("/model.pth", f"bytes={len(PAYLOAD)}-")]  # one 416
    assert not validators_path(dest).exists()


def test_resume_against_an_unchanged_server_sends_if_range_and_records(server, tmp_path):
    dest = tmp_path / "m.pth"
    url = server.base + "/model.pth"
    have = _cut(server, url, dest)
    saved = json.loads(validators_path(dest).read_text())
    assert saved["etag"] and saved["total"] == len(PAYLOAD)
    assert saved["last_modified"] == server.last_modified
    download(url, dest, record=True)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/model.pth", f"bytes={have}-")
    assert server.if_ranges[-1] == saved["etag"]  # the strong ETag
    assert not part_path(dest).exists() and not validators_path(dest).exists()
    record = read_record(dest)
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert record["size"] == len(PAYLOAD) and record["url"] == url
    assert record["etag"] == saved["etag"] and record["last_modified"] == server.last_modified
    assert record["time"].endswith("+00:00")  # UTC
    assert record_path(dest) == dest.with_name("m.pth.record.json")


NEW = bytes(reversed(range(256))) * 4000  # same length as PAYLOAD, other bytes


def test_resume_after_the_server_file_changed_starts_over(server, tmp_path):
    """If-Range names the old ETag: the server sends the whole new file, not the rest."""
    dest = tmp_path / "m.pth"
    url = server.base + "/model.pth"
    have = _cut(server, url, dest)
    server.files["/model.pth"] = (NEW, "application/octet-stream")
    seen = []
    download(url, dest, on_progress=lambda *c: seen.append(c))
    assert dest.read_bytes() == NEW  # not PAYLOAD[:have] + NEW[have:]
    assert server.requests[-1] == ("/model.pth", f"bytes={have}-")  # asked, answered 200
    assert seen[0][1] == 0 and not validators_path(dest).exists()


def test_resume_with_another_etag_on_the_206_starts_over(server, tmp_path):
    """A server that ignores If-Range yet sends the new ETag with its 206: restarted."""
    dest = tmp_path / "m.pth"
    url = server.base + "/model.pth"
    have = _cut(server, url, dest)
    server.files["/model.pth"] = (NEW, "application/octet-stream")
    server.ignore_if_range = True
    download(url, dest)
    assert dest.read_bytes() == NEW
    assert [r for _, r in server.requests[-2:]] == [f"bytes={have}-", None]  # 206, then all


def test_resume_with_another_total_starts_over(server, tmp_path):
    """No validators at all, If-Range ignored: the Content-Range total tells the change."""
    server.validators = False
    dest = tmp_path / "m.pth"
    url = server.base + "/model.pth"
    have = _cut(server, url, dest)
    assert server.if_ranges[-1] is None
    longer = NEW + b"more"
    server.files["/model.pth"] = (longer, "application/octet-stream")
    download(url, dest)
    assert dest.read_bytes() == longer
    assert [r for _, r in server.requests[-2:]] == [f"bytes={have}-", None]
    assert server.if_ranges[-2] is None  # nothing to send without validators


def test_part_file_without_sidecar_starts_over(server, tmp_path):
    dest = tmp_path / "m.pth"
    part_path(dest).write_bytes(b"stale bytes of unknown origin")
    download(server.base + "/model.pth", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/model.pth", None)]  # no range asked for


def test_404_is_a_one_line_error_naming_the_url(server, tmp_path):
    url = server.base + "/missing.pth"
    with pytest.raises(GeoposeDataError, match="HTTP 404") as err:
        download(url, tmp_path / "x.pth")
    msg = str(err.value)
    assert url in msg and "\n" not in msg
    assert not (tmp_path / "x.pth").exists() and not part_path(tmp_path / "x.pth").exists()


def test_checksum_mismatch_deletes_everything(server, tmp_path):
    dest = tmp_path / "m.pth"
    with pytest.raises(GeoposeDataError, match="checksum mismatch"):
        download(server.base + "/model.pth", dest, sha256="0" * 64)
    assert not dest.exists() and not part_path(dest).exists()


def test_no_server_is_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model.pth"
    with pytest.raises(GeoposeDataError, match="connect|refused") as err:
        download(url, tmp_path / "m.pth", timeout=5)
    assert url in str(err.value) and "\n" not in str(err.value)


def test_html_page_refused_when_a_file_is_expected(server, tmp_path):
    server.files["/page"] = (b"<html>log in</html>", "text/html; charset=utf-8")
    with pytest.raises(GeoposeDataError, match="web page"):
        download(server.base + "/page", tmp_path / "m.pth", accept_html=False)
    assert not (tmp_path / "m.pth").exists()


def test_extract_member_by_path_tail_and_nested(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("senet154/2_city_finetune/model_best_957.pt", b"inner")
    outer = tmp_path / "folder.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("chkps_dist/efficientnet-b6/1_aug_ft_unet/model_best_483.pt", b"b6")
        zf.writestr("models/models.zip", inner.getvalue())
    got = extract_member(outer, "efficientnet-b6/1_aug_ft_unet/model_best_483.pt", tmp_path / "a")
    assert got.read_bytes() == b"b6"
    got = extract_member(outer, "senet154/2_city_finetune/model_best_957.pt", tmp_path / "b")
    assert got.read_bytes() == b"inner"
    with pytest.raises(GeoposeDataError, match="no member"):
        extract_member(outer, "nothing.pt", tmp_path / "c")
    assert not (tmp_path / "c").exists()
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(GeoposeDataError, match="not a readable zip"):
        extract_member(tmp_path / "bad.zip", "x", tmp_path / "d")


# --- catalog -----------------------------------------------------------------------------------


def test_catalog_sanity():
    names = [e.name for e in catalog.list_entries()]
    assert len(names) == len(set(names)) == len(catalog.CATALOG)
    assert not set(names) & set(catalog.ENSEMBLES)
    for name, e in catalog.CATALOG.items():
        assert e.name == name
        assert e.family in {"baseline", "first", "second", "fourth"}
        assert e.files and e.licence and e.source and e.input_contract
        if e.needs_browser:
            assert e.browser_url
        else:
            assert e.urls and all(u.startswith("https://") for u in e.urls)
            assert len(e.urls) == len(e.files) or e.member is not None
    for name, ens in catalog.ENSEMBLES.items():
        assert ens.name == name and ens.tta in TTA_VIEWS
        assert all(m in catalog.CATALOG for m, _ in ens.members)
        assert sum(w for _, w in ens.members) == pytest.approx(1.0)
    # the published line-up: 2 selim folds, 13 bloodaxe checkpoints, 3 kbrodt models
    fams = [e.family for e in catalog.list_entries()]
    assert (fams.count("first"), fams.count("second"), fams.count("fourth")) == (2, 13, 3)
    assert len(catalog.ENSEMBLES["second"].members) == 9
    assert catalog.ENSEMBLES["second"].tta == "d4"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("GEOPOSE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert catalog.cache_dir() == tmp_path / "xdg" / "geopose" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert catalog.cache_dir() == Path.home() / ".cache" / "geopose" / "models"
    monkeypatch.setenv("GEOPOSE_CACHE", str(tmp_path / "elsewhere"))
    assert catalog.cache_dir() == tmp_path / "elsewhere"
    assert catalog.cached_path("first-v2l-fold5") is None


def test_fetch_downloads_into_the_moved_cache(server, cache, monkeypatch):
    entry = catalog.CATALOG["second-b7-unet-fold0-best"]
    local = replace(entry, urls=(server.base + "/model.pth",))
    monkeypatch.setitem(catalog.CATALOG, entry.name, local)
    seen = []
    path = catalog.fetch(entry.name, on_progress=lambda *c: seen.append(c))
    assert path == cache / entry.name / entry.files[0]
    assert path.read_bytes() == PAYLOAD
    assert {stage for stage, _, _ in seen} == {entry.name}  # one stage: the model's name
    assert seen[-1] == (entry.name, len(PAYLOAD), len(PAYLOAD))
    assert catalog.cached_path(entry.name) == path
    n = len(server.requests)
    assert catalog.fetch(entry.name) == path and len(server.requests) == n  # cached: no request


def test_fetch_needs_browser(cache, tmp_path):
    with pytest.raises(GeoposeDataError) as err:
        catalog.fetch("baseline")
    msg = str(err.value)
    assert "browser" in msg and "--file" in msg and catalog.DATAPORT_URL in msg
    assert "\n" not in msg
    mine = tmp_path / "downloads" / "model_best.pth"
    mine.parent.mkdir()
    mine.write_bytes(tiny(BASELINE_KEYS))
    path = catalog.fetch("baseline", local_file=mine)
    assert path == cache / "baseline" / "model_best.pth"
    assert path.read_bytes() == mine.read_bytes()
    record = read_record(path)
    assert record["imported_from"] == str(mine) and record["size"] == mine.stat().st_size
    assert mine.is_file()  # copied, not moved
    assert catalog.cached_path("baseline") == path
    with pytest.raises(GeoposeDataError, match="no such file"):
        catalog.fetch("baseline", local_file=tmp_path / "nope.pth")


def test_fetch_fourth_from_yandex_archive(server, cache, monkeypatch):
    buf = io.BytesIO()
    contents = {}
    with zipfile.ZipFile(buf, "w") as zf:
        for e in catalog.list_entries():
            if e.family == "fourth":
                contents[e.name] = tiny(FOURTH_KEYS, fill=len(contents))
                zf.writestr("chkps_dist/" + e.member, contents[e.name])
    server.files["/models.zip"] = (buf.getvalue(), "application/zip")
    server.yandex_href = server.base + "/models.zip"
    monkeypatch.setattr(catalog, "YANDEX_PUBLIC_API", server.base + "/api/yandex")

    names = catalog.members_of("fourth")
    archive = cache / catalog.ARCHIVE_DIR / "models.zip"
    for i, name in enumerate(names):
        path = catalog.fetch(name)
        assert path.read_bytes() == contents[name]
        assert path.name == Path(catalog.CATALOG[name].member).name
        assert archive.exists() == (i < len(names) - 1)  # dropped once all are extracted
    api_calls = [p for p, _ in server.requests if p.startswith("/api/yandex")]
    assert len(api_calls) == 1 and "public_key=https%3A%2F%2Fdisk.yandex.com" in api_calls[0]


def test_fetch_fourth_from_local_archive(cache, tmp_path):
    zpath = tmp_path / "models.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("efficientnet-b7/2_aug_ft_unet/model_best_525.pt", tiny(FOURTH_KEYS))
    path = catalog.fetch("fourth-effb7", local_file=zpath)
    assert path == cache / "fourth-effb7" / "model_best_525.pt"
    assert path.read_bytes() == tiny(FOURTH_KEYS)
    assert read_record(path)["member"] == "efficientnet-b7/2_aug_ft_unet/model_best_525.pt"
    assert catalog.verified_path("fourth-effb7") == path


def test_unknown_names_and_dropbox_links():
    with pytest.raises(GeoposeDataError, match="unknown published model"):
        catalog.fetch("nope")
    with pytest.raises(GeoposeDataError, match="is an ensemble"):
        catalog.get_entry("second")
    assert len(catalog.members_of("second-lite")) == 4
    url = catalog.CATALOG["first-v2l-fold5"].urls[0]
    assert url.endswith("?dl=0")
    assert catalog.direct_url(url).endswith("?dl=1")
    assert catalog.direct_url("https://github.com/a/b.pth") == "https://github.com/a/b.pth"


def test_listing_is_every_entry_and_ensemble_with_its_cached_file(cache, tmp_path):
    doc = catalog.listing()
    assert doc["cache"] == str(cache)
    assert [m["name"] for m in doc["models"]] == list(catalog.CATALOG)
    assert [e["name"] for e in doc["ensembles"]] == list(catalog.ENSEMBLES)
    assert all(m["cached"] is None for m in doc["models"])
    first = doc["models"][0]
    assert {"urls", "files", "licence", "family"} <= set(first)
    mine = tmp_path / "model_best.pth"
    mine.write_bytes(tiny(BASELINE_KEYS))
    path = catalog.fetch("baseline", local_file=mine)
    rows = {m["name"]: m for m in catalog.listing()["models"]}
    assert rows["baseline"]["cached"] == str(path)
    assert rows["baseline"]["cache_state"] == "ok"
    json.dumps(doc)  # JSON-ready as it is


def test_models_listing_fits_80_columns_and_shows_known_sizes(cache, tmp_path, monkeypatch):
    """``geopose models`` (and ``--wide``) at 80 columns: no line longer, every model's name
    whole on one line; a size where one is known (the cached file, or the size its download
    record holds), an en dash elsewhere, never a "?"."""
    from rich.console import Console
    from typer.testing import CliRunner

    import geopose.cli.models as models_cli
    from geopose.cli.main import app
    from geopose.io.download import write_record

    mine = tmp_path / "model_best.pth"
    mine.write_bytes(tiny(BASELINE_KEYS))
    catalog.fetch("baseline", local_file=mine)
    assert catalog.cached_bytes("baseline") == mine.stat().st_size
    recorded = catalog.cache_dir() / "first-v2l-fold5" / catalog.CATALOG["first-v2l-fold5"].files[0]
    recorded.parent.mkdir(parents=True)
    write_record(recorded, source=mine)  # the record alone: not cached, its size known
    assert catalog.cached_bytes("first-v2l-fold5") == mine.stat().st_size
    assert catalog.cache_state("first-v2l-fold5") is None
    assert catalog.cached_bytes("fourth-effb7") is None  # no author published a size
    assert catalog.listing()["models"][0]["cached_bytes"] == mine.stat().st_size

    for wide in ([], ["--wide"]):
        screen = Console(width=80, file=io.StringIO(), color_system=None)
        monkeypatch.setattr(models_cli, "console", screen)
        result = CliRunner().invoke(app, ["models", *wide])
        assert result.exit_code == 0, result.output
        lines = screen.file.getvalue().splitlines()
        assert max(len(ln) for ln in lines) <= 80, wide
        for name in catalog.CATALOG:
            whole = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
            assert any(whole.search(ln) for ln in lines), (name, wide)
        rows = {name: next(ln for ln in lines if f"│ {name} " in ln) for name in catalog.CATALOG}
        size = models_cli._size(mine.stat().st_size)
        assert size in rows["baseline"] and "yes" in rows["baseline"]
        assert size in rows["first-v2l-fold5"] and "│ no " in rows["first-v2l-fold5"]
        assert "\N{EN DASH}" in rows["fourth-effb7"]
        assert "?" not in "".join(lines)
    assert any("ieee-dataport.org" in ln for ln in lines)  # --wide: the source too


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_download_resumes_after_a_cut_and_lists_cached(server, cache, monkeypatch):
    from typer.testing import CliRunner

    from geopose.cli.main import app

    runner = CliRunner()
    entry = catalog.CATALOG["second-b7-unet-fold0-best"]
    monkeypatch.setitem(
        catalog.CATALOG, entry.name, replace(entry, urls=(server.base + "/model.pth",))
    )
    server.cut_after = 300_000
    first = runner.invoke(app, ["models", "download", entry.name])
    dest = cache / entry.name / entry.files[0]
    assert first.exit_code != 0 and not dest.exists() and part_path(dest).is_file()
    second = runner.invoke(app, ["models", "download", entry.name])
    assert second.exit_code == 0, second.output
    assert dest.read_bytes() == PAYLOAD and not part_path(dest).exists()
    assert server.requests[-1][1] == "bytes=300000-"  # resumed where the cut left it
    listing = runner.invoke(app, ["models", "--json"])
    assert listing.output == json.dumps(catalog.listing(), indent=1) + "\n"  # the library's
    rows = {m["name"]: m for m in json.loads(listing.output)["models"]}
    assert rows[entry.name]["cached"] == str(dest)
    assert rows["first-v2l-fold5"]["cached"] is None
    table = runner.invoke(app, ["models"], env={"COLUMNS": "160"})
    line = next(ln for ln in table.output.splitlines() if entry.name in ln)
    assert "yes" in line and f"{len(PAYLOAD) / 2**10:.0f} kB" in line  # the file's size
    wide = runner.invoke(app, ["models", "--wide"], env={"COLUMNS": "80"}).output.splitlines()
    at = next(i for i, ln in enumerate(wide) if entry.name in ln)
    assert "yes" in wide[at] and "127.0.0.1" in wide[at + 2]  # the (patched) source host


def test_cli_download_needs_browser_says_where(cache):
    """A real process, as a user runs it: one error line naming the page and the way out."""
    env = {**os.environ, "GEOPOSE_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "geopose.cli.main", "models", "download", "baseline"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert "ieee-dataport.org" in proc.stderr and "--file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --- cache integrity -----------------------------------------------------------------------------


def _served_entry(server, monkeypatch, name: str = "second-b7-unet-fold0-best"):
    """Point catalog entry ``name`` at the local server's /model.pth."""
    entry = catalog.CATALOG[name]
    monkeypatch.setitem(catalog.CATALOG, name, replace(entry, urls=(server.base + "/model.pth",)))
    return catalog.CATALOG[name]


def _flip_one_byte(path: Path, at: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_fetch_records_the_download_and_verifies_it_on_use(server, cache, monkeypatch):
    entry = _served_entry(server, monkeypatch)
    path = catalog.fetch(entry.name)
    record = read_record(path)
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert record["size"] == len(PAYLOAD) and record["url"] == server.base + "/model.pth"
    assert record["etag"] and record["expected_sha256"] is None  # none published
    assert catalog.verified_path(entry.name) == path
    assert catalog.verified_path("first-v2l-fold5") is None  # not cached: as cached_path
    assert catalog.cache_state(entry.name) == "ok"


def test_cached_file_altered_after_download_is_refused(server, cache, monkeypatch):
    entry = _served_entry(server, monkeypatch)
    path = catalog.fetch(entry.name)
    _flip_one_byte(path)  # same size, one byte changed
    now = hashlib.sha256(path.read_bytes()).hexdigest()
    for call in (catalog.verified_path, catalog.fetch):
        with pytest.raises(GeoposeDataError, match="changed since it was downloaded") as err:
            call(entry.name)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg
        assert f"sha256 {hashlib.sha256(PAYLOAD).hexdigest()} recorded, {now} now" in msg
        assert f"geopose models download {entry.name} --force" in msg
    assert catalog.cache_state(entry.name) == "ok"  # the listing compares sizes only


def test_cached_file_without_record_is_refused(cache):
    path = cache / "first-v2l-fold5" / catalog.CATALOG["first-v2l-fold5"].files[0]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"copied in by hand")
    assert catalog.cached_path("first-v2l-fold5") == path
    assert catalog.cache_state("first-v2l-fold5") == "unrecorded"
    for call in (catalog.verified_path, catalog.fetch):
        with pytest.raises(GeoposeDataError, match="has no download record") as err:
            call("first-v2l-fold5")
        assert str(path) in str(err.value)
        assert "geopose models download first-v2l-fold5 --force" in str(err.value)


def test_cli_force_downloads_again(server, cache, monkeypatch):
    from typer.testing import CliRunner

    from geopose.cli.main import app

    runner = CliRunner()
    entry = _served_entry(server, monkeypatch)
    assert runner.invoke(app, ["models", "download", entry.name]).exit_code == 0
    path = catalog.cached_path(entry.name)
    _flip_one_byte(path)
    n = len(server.requests)
    again = runner.invoke(app, ["models", "download", entry.name])
    assert isinstance(again.exception, GeoposeDataError) and "--force" in str(again.exception)
    assert len(server.requests) == n  # refused, not silently replaced
    forced = runner.invoke(app, ["models", "download", entry.name, "--force"])
    assert forced.exit_code == 0, forced.output
    assert server.requests[n:] == [("/model.pth", None)]  # a fresh download from byte 0
    assert path.read_bytes() == PAYLOAD and catalog.verified_path(entry.name) == path


def test_force_removes_files_records_and_archive(cache):
    entry = catalog.CATALOG["fourth-effb7"]
    path = cache / entry.name / entry.files[0]
    archive = cache / catalog.ARCHIVE_DIR / "models.zip"
    made = [path, record_path(path), archive, record_path(archive), part_path(path)]
    for f in made:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert sorted(catalog.remove_cached(entry.name)) == sorted(made)
    assert not any(f.exists() for f in made) and path.parent.is_dir()


def test_listing_does_not_hash(server, cache, monkeypatch):
    from typer.testing import CliRunner

    import geopose.io.download as dl
    from geopose.cli.main import app

    entry = _served_entry(server, monkeypatch)
    path = catalog.fetch(entry.name)

    def no_hashing(_path):
        raise AssertionError("the listing hashed a file")

    monkeypatch.setattr(dl, "sha256_file", no_hashing)
    monkeypatch.setattr(catalog, "sha256_file", no_hashing)
    runner = CliRunner()
    table = runner.invoke(app, ["models"], env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "yes" in next(ln for ln in table.output.splitlines() if entry.name in ln)
    with open(path, "ab") as f:
        f.write(b"!")  # another size than recorded
    assert catalog.cache_state(entry.name) == "changed"
    assert (
        catalog.listing()["models"][list(catalog.CATALOG).index(entry.name)]["cache_state"]
        == "changed"
    )
    table = runner.invoke(app, ["models"], env={"COLUMNS": "160"})
    assert "changed" in next(ln for ln in table.output.splitlines() if entry.name in ln)
    with pytest.raises(GeoposeDataError, match=r"\d+ bytes recorded, \d+ now"):
        catalog.verified_path(entry.name)  # caught by size before any hashing


def test_altered_archive_is_refused_before_extraction(server, cache, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for e in catalog.list_entries():
            if e.family == "fourth":
                zf.writestr("chkps_dist/" + e.member, tiny(FOURTH_KEYS))
    server.files["/models.zip"] = (buf.getvalue(), "application/zip")
    server.yandex_href = server.base + "/models.zip"
    monkeypatch.setattr(catalog, "YANDEX_PUBLIC_API", server.base + "/api/yandex")
    catalog.fetch("fourth-senet154")
    archive = cache / catalog.ARCHIVE_DIR / "models.zip"
    assert read_record(archive)["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    _flip_one_byte(archive, at=10)
    with pytest.raises(GeoposeDataError, match="changed since it was downloaded") as err:
        catalog.fetch("fourth-effb6")
    assert str(archive) in str(err.value) and "fourth-effb6 --force" in str(err.value)
    assert catalog.cached_path("fourth-effb6") is None


# --- --file: the family is checked before anything is cached ---------------------------------


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_file_of_no_known_family_is_refused(cache, tmp_path):
    mine = tmp_path / "model_best.pth"
    torch.save({"a": torch.zeros(1)}, mine)
    with pytest.raises(GeoposeDataError, match="not a baseline model") as err:
        catalog.fetch("baseline", local_file=mine)
    msg = str(err.value)
    assert msg.startswith(f"{mine}: ") and "\n" not in msg
    assert "it holds a state dict of 1 tensors (a)" in msg
    assert _files_under(cache) == [] and not (cache / "baseline").exists()


def test_file_of_another_family_is_refused(cache, tmp_path):
    mine = tmp_path / "model_best_525.pt"
    mine.write_bytes(tiny(BASELINE_KEYS))
    with pytest.raises(GeoposeDataError, match="not a fourth model for fourth-effb7") as err:
        catalog.fetch("fourth-effb7", local_file=mine)
    assert "it holds a baseline model" in str(err.value)
    assert _files_under(cache) == []


def test_archive_member_of_another_family_is_refused(cache, tmp_path):
    zpath = tmp_path / "models.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("efficientnet-b7/2_aug_ft_unet/model_best_525.pt", b"not a checkpoint")
    with pytest.raises(GeoposeDataError, match="member 'efficientnet-b7/") as err:
        catalog.fetch("fourth-effb7", local_file=zpath)
    assert str(err.value).startswith(f"{zpath}: ") and "nothing was cached" in str(err.value)
    assert _files_under(cache) == []


# --- zip safety ----------------------------------------------------------------------------------


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("../evil", "would leave the folder it is extracted to"),
        ("chkps_dist/../../evil", "would leave the folder it is extracted to"),
        ("/tmp/evil", "would leave the folder it is extracted to"),
        ("C:/evil", "would leave the folder it is extracted to"),
        ("..\\evil", "would leave the folder it is extracted to"),
        ("link", "is a symbolic link"),
    ],
)
def test_unsafe_zip_member_is_refused(tmp_path, cache, bad, why):
    zpath = tmp_path / "in" / "models.zip"
    zpath.parent.mkdir()
    member = "efficientnet-b7/2_aug_ft_unet/model_best_525.pt"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(member, tiny(FOURTH_KEYS))
        zf.writestr(_symlink_info(bad) if bad == "link" else bad, b"evil")
    before = _files_under(tmp_path)
    dest = tmp_path / "out" / "model.pt"
    with pytest.raises(GeoposeDataError, match=why) as err:
        extract_member(zpath, member, dest)
    assert str(err.value) == f"{zpath}: member {bad!r} {why}: refused"
    assert not dest.parent.exists()
    with pytest.raises(GeoposeDataError, match=why):  # through `--file` too
        catalog.fetch("fourth-effb7", local_file=zpath)
    assert _files_under(tmp_path) == before  # nothing written, inside the cache or out
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_unsafe_member_of_a_nested_zip_is_refused(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("senet154/2_city_finetune/model_best_957.pt", b"inner")
        zf.writestr("../../evil", b"evil")
    outer = tmp_path / "folder.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("models/models.zip", inner.getvalue())
    with pytest.raises(GeoposeDataError) as err:
        extract_member(outer, "senet154/2_city_finetune/model_best_957.pt", tmp_path / "x")
    assert str(err.value) == (
        f"{outer}: nested archive 'models/models.zip': member '../../evil' would leave the "
        "folder it is extracted to: refused"
    )
    assert not (tmp_path / "x").exists()
