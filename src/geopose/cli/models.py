"""``geopose models`` (list the published challenge models) and ``geopose models download``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from geopose.cli.app import TRUST_FILE, app, console, fail, model_files, progress_bar

models_app = typer.Typer(
    help="The published Overhead Geopose Challenge models: list them, download them.",
    no_args_is_help=False,
)
app.add_typer(models_app, name="models")


def _size(entry, cached: Path | None) -> str:
    if cached is not None:
        return f"{cached.stat().st_size / 2**20:.0f} MB"
    return f"{entry.size_mb:.0f} MB" if entry.size_mb else "?"


_STATE = {
    None: "no",
    "ok": "[green]yes[/]",
    "changed": "[red]changed[/]",
    "unrecorded": "[yellow]no record[/]",
}
"""The cached column by :func:`geopose.models.zoo.catalog.cache_state` (sizes only)."""


def _host(entry) -> str:
    """Where an entry comes from, short: the URL's host (the full URLs: --json)."""
    from urllib.parse import urlsplit

    url = entry.browser_url if entry.needs_browser else (entry.urls[0] if entry.urls else "")
    host = (urlsplit(url).hostname or "").removeprefix("www.") if url else "-"
    return f"{host} (login)" if entry.needs_browser else host


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    as_json: bool = typer.Option(
        False, "--json", help="Print everything (URLs, files, notes) as JSON."
    ),
) -> None:
    """List the published models (name, family, score, size, source, licence, cached) and the
    authors' ensembles. Use a name with `predict --model`, `export --model` or
    `train --init-from` once downloaded. The cached column compares sizes with the download
    records only ("changed": re-download with `geopose models download NAME --force`); the
    files are hashed when they are used."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from geopose.models.zoo import catalog

    if as_json:
        import json

        print(json.dumps(catalog.listing(), indent=1))
        return
    entries = [(e, catalog.cached_path(e.name)) for e in catalog.list_entries()]
    table = Table(title="Published models", title_justify="left")
    for col in ("name", "family", "variant", "size", "source", "licence", "cached"):
        table.add_column(col, overflow="fold", no_wrap=col == "name")
    for e, cached in entries:
        table.add_row(
            e.name,
            e.family,
            escape(e.variant),
            _size(e, cached),
            escape(_host(e)),
            escape(e.licence.split(" ", 1)[0]),
            _STATE[catalog.cache_state(e.name)],
        )
    console.print(table)
    ens = Table(title="The authors' submissions (ensembles)", title_justify="left")
    for col in ("name", "members", "TTA", "private score", "cached"):
        ens.add_column(col, overflow="fold")
    for e in catalog.ENSEMBLES.values():
        n_cached = sum(catalog.cached_path(m) is not None for m, _ in e.members)
        score = f"{e.authors_score:.4f}" if e.authors_score is not None else "-"
        ens.add_row(e.name, str(len(e.members)), e.tta, score, f"{n_cached}/{len(e.members)}")
    console.print(ens)
    console.print(
        f"cache: {escape(str(catalog.cache_dir()))} (GEOPOSE_CACHE moves it); URLs, files and "
        "notes: geopose models --json",
        highlight=False,
        soft_wrap=True,
    )


@models_app.command("download")
def download(
    names: list[str] = typer.Argument(
        ..., help="Published model or ensemble names (see `geopose models`).", show_default=False
    ),
    file: Path | None = typer.Option(
        None,
        "--file",
        help="A file you downloaded by hand (the model file, the zip holding it, or a folder): "
        "copied into the cache. The only way for weights behind a login page (baseline).",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Delete the cached files (and their download records) first and download them "
        "again; with --file, replace them with the file.",
    ),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, help="Network timeout, seconds."),
    trust_file: bool = TRUST_FILE,
) -> None:
    """Download published models into the cache (resumable: re-run after an interruption;
    files appear only when complete). An ensemble name downloads all its members. Each file's
    SHA-256 is recorded, and checked each time the file is used."""
    from geopose.models.zoo import catalog

    entries = [m for name in names for m in catalog.members_of(name)]
    if file is not None and len(entries) != 1:
        fail(f"--file goes with one model name, got {len(entries)} ({', '.join(entries)})")
    if force and file is None:  # all first: members of one archive share its download
        for name in dict.fromkeys(entries):
            catalog.remove_cached(name)
    with model_files(trust_file), progress_bar(transfer=True) as on_progress:
        for name in dict.fromkeys(entries):
            path = catalog.fetch(name, on_progress=on_progress, local_file=file, timeout=timeout)
            console.print(f"{name}: {escape(str(path))}", highlight=False, soft_wrap=True)
