"""Resumable downloads and safe archive extraction (geopose.io.download), against a local HTTP
server on 127.0.0.1: nothing here touches the internet."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import stat
import zipfile
from pathlib import Path

import pytest
from helpers.downloads import FOURTH_KEYS, PAYLOAD, files_under, serving, tiny

from geopose.errors import GeoposeDataError
from geopose.io.download import (
    download,
    extract_member,
    part_path,
    read_record,
    record_path,
    validators_path,
)
from geopose.models.zoo import cache as zoo_cache


@pytest.fixture
def server():
    with serving() as srv:
        yield srv


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
    before = files_under(tmp_path)
    dest = tmp_path / "out" / "model.pt"
    with pytest.raises(GeoposeDataError, match=why) as err:
        extract_member(zpath, member, dest)
    assert str(err.value) == f"{zpath}: member {bad!r} {why}: refused"
    assert not dest.parent.exists()
    with pytest.raises(GeoposeDataError, match=why):  # through `--file` too
        zoo_cache.fetch("fourth-effb7", local_file=zpath)
    assert files_under(tmp_path) == before  # nothing written, inside the cache or out
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
