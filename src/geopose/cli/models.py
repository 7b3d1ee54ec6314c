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


UNKNOWN = "\N{EN DASH}"
"""What a cell shows where nothing is known (a size no one published, a missing score)."""


def _size(n_bytes: int | None) -> str:
    """A model's size (:func:`geopose.models.zoo.cache.cached_bytes`): kB below 1 MB, MB,
    GB from 1000 MB (binary units); :data:`UNKNOWN` when not known."""
    if n_bytes is None:
        return UNKNOWN
    mb = n_bytes / 2**20
    if mb < 1:
        return f"{n_bytes / 2**10:.0f} kB"
    return f"{mb / 1024:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


_STATE = {
    None: "no",
    "ok": "[green]yes[/]",
    "changed": "[red]changed[/]",
    "unrecorded": "[yellow]no record[/]",
}
"""The cached column by :func:`geopose.models.zoo.cache.cache_state` (sizes only)."""


def _host(entry) -> str:
    """Where an entry comes from, short: the URL's host (the full URLs: --json)."""
    from urllib.parse import urlsplit

    url = entry.browser_url if entry.needs_browser else (entry.urls[0] if entry.urls else "")
    host = (urlsplit(url).hostname or "").removeprefix("www.") if url else "-"
    return f"{host} (login)" if entry.needs_browser else host


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    wide: bool = typer.Option(
        False, "--wide", "-l", help="Also the variant, source and licence of each model."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print everything (URLs, files, notes) as JSON."
    ),
) -> None:
    """List the published models (name, family, size, cached; with --wide also the variant,
    source and licence) and the authors' ensembles. Use a name with `predict --model`,
    `export --model` or `train --init-from` once downloaded. Sizes are known once a model is
    downloaded (no author published them). The cached column compares sizes with the
    download records only ("changed": re-download with `geopose models download NAME
    --force`); the files are hashed when they are used."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from geopose.models.zoo import cache, catalog

    if as_json:
        import json

        print(json.dumps(cache.listing(), indent=1))
        return
    # --wide: the variant, source and licence under each name, so that it fits 80 columns too
    table = Table(title="Published models", title_justify="left", show_lines=wide)
    table.add_column("name, variant, source, licence" if wide else "name", no_wrap=not wide)
    table.add_column("family", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    for e in catalog.list_entries():
        name = e.name
        if wide:
            licence = e.licence.split(" ", 1)[0]
            name += f"\n[dim]{escape(e.variant)}\n{escape(_host(e))}, {escape(licence)}[/]"
        size = _size(cache.cached_bytes(e.name))
        table.add_row(name, e.family, size, _STATE[cache.cache_state(e.name)])
    console.print(table)
    ens = Table(title="The authors' submissions (ensembles)", title_justify="left")
    ens.add_column("name", no_wrap=True)
    for col in ("members", "TTA", "private score", "cached"):
        ens.add_column(col, justify="right" if col != "TTA" else "left", no_wrap=True)
    for e in catalog.ENSEMBLES.values():
        n_cached = sum(cache.cached_path(m) is not None for m, _ in e.members)
        score = f"{e.authors_score:.4f}" if e.authors_score is not None else UNKNOWN
        ens.add_row(e.name, str(len(e.members)), e.tta, score, f"{n_cached}/{len(e.members)}")
    console.print(ens)
    console.print(
        f"cache: {escape(str(cache.cache_dir()))} (GEOPOSE_CACHE moves it)", highlight=False
    )
    console.print(
        "download: geopose models download NAME (an ensemble's name: all its members)\n"
        f"more: geopose models {'--json (URLs, files, notes)' if wide else '--wide, --json'}",
        highlight=False,
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
    from geopose.models.zoo import cache, catalog

    entries = [m for name in names for m in catalog.members_of(name)]
    if file is not None and len(entries) != 1:
        fail(f"--file goes with one model name, got {len(entries)} ({', '.join(entries)})")
    if force and file is None:  # all first: members of one archive share its download
        for name in dict.fromkeys(entries):
            cache.remove_cached(name)
    with model_files(trust_file), progress_bar(transfer=True) as on_progress:
        for name in dict.fromkeys(entries):
            path = cache.fetch(name, on_progress=on_progress, local_file=file, timeout=timeout)
            console.print(f"{name}: {escape(str(path))}", highlight=False, soft_wrap=True)
