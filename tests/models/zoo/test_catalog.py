"""The published-model catalog (geopose.models.zoo.catalog) and ``geopose models``: the
entries, fetching into the cache, the cache's integrity checks and ``--file``'s family checks,
against a local HTTP server on 127.0.0.1: nothing here touches the internet."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers.downloads import BASELINE_KEYS, FOURTH_KEYS, PAYLOAD, files_under, serving, tiny

from geopose.errors import GeoposeDataError
from geopose.inference.tta import TTA_VIEWS
from geopose.io.download import part_path, read_record, record_path
from geopose.models.zoo import cache as zoo_cache
from geopose.models.zoo import catalog


@pytest.fixture
def server():
    with serving() as srv:
        yield srv


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("GEOPOSE_CACHE", str(root))
    return root


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
    assert zoo_cache.cache_dir() == tmp_path / "xdg" / "geopose" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert zoo_cache.cache_dir() == Path.home() / ".cache" / "geopose" / "models"
    monkeypatch.setenv("GEOPOSE_CACHE", str(tmp_path / "elsewhere"))
    assert zoo_cache.cache_dir() == tmp_path / "elsewhere"
    assert zoo_cache.cached_path("first-v2l-fold5") is None


def test_fetch_downloads_into_the_moved_cache(server, cache, monkeypatch):
    entry = catalog.CATALOG["second-b7-unet-fold0-best"]
    local = replace(entry, urls=(server.base + "/model.pth",))
    monkeypatch.setitem(catalog.CATALOG, entry.name, local)
    seen = []
    path = zoo_cache.fetch(entry.name, on_progress=lambda *c: seen.append(c))
    assert path == cache / entry.name / entry.files[0]
    assert path.read_bytes() == PAYLOAD
    assert {stage for stage, _, _ in seen} == {entry.name}  # one stage: the model's name
    assert seen[-1] == (entry.name, len(PAYLOAD), len(PAYLOAD))
    assert zoo_cache.cached_path(entry.name) == path
    n = len(server.requests)
    assert zoo_cache.fetch(entry.name) == path and len(server.requests) == n  # cached: no request


def test_fetch_needs_browser(cache, tmp_path):
    with pytest.raises(GeoposeDataError) as err:
        zoo_cache.fetch("baseline")
    msg = str(err.value)
    assert "browser" in msg and "--file" in msg and catalog.DATAPORT_URL in msg
    assert "\n" not in msg
    mine = tmp_path / "downloads" / "model_best.pth"
    mine.parent.mkdir()
    mine.write_bytes(tiny(BASELINE_KEYS))
    path = zoo_cache.fetch("baseline", local_file=mine)
    assert path == cache / "baseline" / "model_best.pth"
    assert path.read_bytes() == mine.read_bytes()
    record = read_record(path)
    assert record["imported_from"] == str(mine) and record["size"] == mine.stat().st_size
    assert mine.is_file()  # copied, not moved
    assert zoo_cache.cached_path("baseline") == path
    with pytest.raises(GeoposeDataError, match="no such file"):
        zoo_cache.fetch("baseline", local_file=tmp_path / "nope.pth")


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
        path = zoo_cache.fetch(name)
        assert path.read_bytes() == contents[name]
        assert path.name == Path(catalog.CATALOG[name].member).name
        assert archive.exists() == (i < len(names) - 1)  # dropped once all are extracted
    api_calls = [p for p, _ in server.requests if p.startswith("/api/yandex")]
    assert len(api_calls) == 1 and "public_key=https%3A%2F%2Fdisk.yandex.com" in api_calls[0]


def test_fetch_fourth_from_local_archive(cache, tmp_path):
    zpath = tmp_path / "models.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("efficientnet-b7/2_aug_ft_unet/model_best_525.pt", tiny(FOURTH_KEYS))
    path = zoo_cache.fetch("fourth-effb7", local_file=zpath)
    assert path == cache / "fourth-effb7" / "model_best_525.pt"
    assert path.read_bytes() == tiny(FOURTH_KEYS)
    assert read_record(path)["member"] == "efficientnet-b7/2_aug_ft_unet/model_best_525.pt"
    assert zoo_cache.verified_path("fourth-effb7") == path


def test_unknown_names_and_dropbox_links():
    with pytest.raises(GeoposeDataError, match="unknown published model"):
        zoo_cache.fetch("nope")
    with pytest.raises(GeoposeDataError, match="is an ensemble"):
        catalog.get_entry("second")
    assert len(catalog.members_of("second-lite")) == 4
    url = catalog.CATALOG["first-v2l-fold5"].urls[0]
    assert url.endswith("?dl=0")
    assert zoo_cache.direct_url(url).endswith("?dl=1")
    assert zoo_cache.direct_url("https://github.com/a/b.pth") == "https://github.com/a/b.pth"


def test_listing_is_every_entry_and_ensemble_with_its_cached_file(cache, tmp_path):
    doc = zoo_cache.listing()
    assert doc["cache"] == str(cache)
    assert [m["name"] for m in doc["models"]] == list(catalog.CATALOG)
    assert [e["name"] for e in doc["ensembles"]] == list(catalog.ENSEMBLES)
    assert all(m["cached"] is None for m in doc["models"])
    first = doc["models"][0]
    assert {"urls", "files", "licence", "family"} <= set(first)
    mine = tmp_path / "model_best.pth"
    mine.write_bytes(tiny(BASELINE_KEYS))
    path = zoo_cache.fetch("baseline", local_file=mine)
    rows = {m["name"]: m for m in zoo_cache.listing()["models"]}
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
    zoo_cache.fetch("baseline", local_file=mine)
    assert zoo_cache.cached_bytes("baseline") == mine.stat().st_size
    recorded = (
        zoo_cache.cache_dir() / "first-v2l-fold5" / catalog.CATALOG["first-v2l-fold5"].files[0]
    )
    recorded.parent.mkdir(parents=True)
    write_record(recorded, source=mine)  # the record alone: not cached, its size known
    assert zoo_cache.cached_bytes("first-v2l-fold5") == mine.stat().st_size
    assert zoo_cache.cache_state("first-v2l-fold5") is None
    assert zoo_cache.cached_bytes("fourth-effb7") is None  # no author published a size
    assert zoo_cache.listing()["models"][0]["cached_bytes"] == mine.stat().st_size

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
    assert listing.output == json.dumps(zoo_cache.listing(), indent=1) + "\n"  # the library's
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
    path = zoo_cache.fetch(entry.name)
    record = read_record(path)
    assert record["sha256"] == hashlib.sha256(PAYLOAD).hexdigest()
    assert record["size"] == len(PAYLOAD) and record["url"] == server.base + "/model.pth"
    assert record["etag"] and record["expected_sha256"] is None  # none published
    assert zoo_cache.verified_path(entry.name) == path
    assert zoo_cache.verified_path("first-v2l-fold5") is None  # not cached: as cached_path
    assert zoo_cache.cache_state(entry.name) == "ok"


def test_cached_file_altered_after_download_is_refused(server, cache, monkeypatch):
    entry = _served_entry(server, monkeypatch)
    path = zoo_cache.fetch(entry.name)
    _flip_one_byte(path)  # same size, one byte changed
    now = hashlib.sha256(path.read_bytes()).hexdigest()
    for call in (zoo_cache.verified_path, zoo_cache.fetch):
        with pytest.raises(GeoposeDataError, match="changed since it was downloaded") as err:
            call(entry.name)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg
        assert f"sha256 {hashlib.sha256(PAYLOAD).hexdigest()} recorded, {now} now" in msg
        assert f"geopose models download {entry.name} --force" in msg
    assert zoo_cache.cache_state(entry.name) == "ok"  # the listing compares sizes only


def test_cached_file_without_record_is_refused(cache):
    path = cache / "first-v2l-fold5" / catalog.CATALOG["first-v2l-fold5"].files[0]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"copied in by hand")
    assert zoo_cache.cached_path("first-v2l-fold5") == path
    assert zoo_cache.cache_state("first-v2l-fold5") == "unrecorded"
    for call in (zoo_cache.verified_path, zoo_cache.fetch):
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
    path = zoo_cache.cached_path(entry.name)
    _flip_one_byte(path)
    n = len(server.requests)
    again = runner.invoke(app, ["models", "download", entry.name])
    assert isinstance(again.exception, GeoposeDataError) and "--force" in str(again.exception)
    assert len(server.requests) == n  # refused, not silently replaced
    forced = runner.invoke(app, ["models", "download", entry.name, "--force"])
    assert forced.exit_code == 0, forced.output
    assert server.requests[n:] == [("/model.pth", None)]  # a fresh download from byte 0
    assert path.read_bytes() == PAYLOAD and zoo_cache.verified_path(entry.name) == path


def test_force_removes_files_records_and_archive(cache):
    entry = catalog.CATALOG["fourth-effb7"]
    path = cache / entry.name / entry.files[0]
    archive = cache / catalog.ARCHIVE_DIR / "models.zip"
    made = [path, record_path(path), archive, record_path(archive), part_path(path)]
    for f in made:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert sorted(zoo_cache.remove_cached(entry.name)) == sorted(made)
    assert not any(f.exists() for f in made) and path.parent.is_dir()


def test_listing_does_not_hash(server, cache, monkeypatch):
    from typer.testing import CliRunner

    import geopose.io.download as dl
    from geopose.cli.main import app

    entry = _served_entry(server, monkeypatch)
    path = zoo_cache.fetch(entry.name)

    def no_hashing(_path):
        raise AssertionError("the listing hashed a file")

    monkeypatch.setattr(dl, "sha256_file", no_hashing)
    monkeypatch.setattr(zoo_cache, "sha256_file", no_hashing)
    runner = CliRunner()
    table = runner.invoke(app, ["models"], env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "yes" in next(ln for ln in table.output.splitlines() if entry.name in ln)
    with open(path, "ab") as f:
        f.write(b"!")  # another size than recorded
    assert zoo_cache.cache_state(entry.name) == "changed"
    assert (
        zoo_cache.listing()["models"][list(catalog.CATALOG).index(entry.name)]["cache_state"]
        == "changed"
    )
    table = runner.invoke(app, ["models"], env={"COLUMNS": "160"})
    assert "changed" in next(ln for ln in table.output.splitlines() if entry.name in ln)
    with pytest.raises(GeoposeDataError, match=r"\d+ bytes recorded, \d+ now"):
        zoo_cache.verified_path(entry.name)  # caught by size before any hashing


def test_altered_archive_is_refused_before_extraction(server, cache, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for e in catalog.list_entries():
            if e.family == "fourth":
                zf.writestr("chkps_dist/" + e.member, tiny(FOURTH_KEYS))
    server.files["/models.zip"] = (buf.getvalue(), "application/zip")
    server.yandex_href = server.base + "/models.zip"
    monkeypatch.setattr(catalog, "YANDEX_PUBLIC_API", server.base + "/api/yandex")
    zoo_cache.fetch("fourth-senet154")
    archive = cache / catalog.ARCHIVE_DIR / "models.zip"
    assert read_record(archive)["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
    _flip_one_byte(archive, at=10)
    with pytest.raises(GeoposeDataError, match="changed since it was downloaded") as err:
        zoo_cache.fetch("fourth-effb6")
    assert str(archive) in str(err.value) and "fourth-effb6 --force" in str(err.value)
    assert zoo_cache.cached_path("fourth-effb6") is None


# --- --file: the family is checked before anything is cached ---------------------------------


def test_file_of_no_known_family_is_refused(cache, tmp_path):
    mine = tmp_path / "model_best.pth"
    torch.save({"a": torch.zeros(1)}, mine)
    with pytest.raises(GeoposeDataError, match="not a baseline model") as err:
        zoo_cache.fetch("baseline", local_file=mine)
    msg = str(err.value)
    assert msg.startswith(f"{mine}: ") and "\n" not in msg
    assert "it holds a state dict of 1 tensors (a)" in msg
    assert files_under(cache) == [] and not (cache / "baseline").exists()


def test_file_of_another_family_is_refused(cache, tmp_path):
    mine = tmp_path / "model_best_525.pt"
    mine.write_bytes(tiny(BASELINE_KEYS))
    with pytest.raises(GeoposeDataError, match="not a fourth model for fourth-effb7") as err:
        zoo_cache.fetch("fourth-effb7", local_file=mine)
    assert "it holds a baseline model" in str(err.value)
    assert files_under(cache) == []


def test_archive_member_of_another_family_is_refused(cache, tmp_path):
    zpath = tmp_path / "models.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("efficientnet-b7/2_aug_ft_unet/model_best_525.pt", b"not a checkpoint")
    with pytest.raises(GeoposeDataError, match="member 'efficientnet-b7/") as err:
        zoo_cache.fetch("fourth-effb7", local_file=zpath)
    assert str(err.value).startswith(f"{zpath}: ") and "nothing was cached" in str(err.value)
    assert files_under(cache) == []
