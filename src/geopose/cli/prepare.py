"""``geopose prepare DATA --out CACHE``: convert a data set once into a fast training cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from geopose.cli.app import app, console, progress_bar


@app.command()
def prepare(
    data: Path = typer.Argument(..., help="Data folder in the competition layout."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to create."),
    downsample: int = typer.Option(
        1, "--downsample", min=1, help="Shrink images by this integer factor (GSD × f, scale / f)."
    ),
    split: str = typer.Option("all", "--split", help="train, test or all."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Decoding processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache."),
) -> None:
    """Convert a data set once into a fast training cache.

    Decodes the JPEG 2000 / TIFF images into uncompressed .npy files, so training reads
    a random crop by memory-mapping instead of decoding a whole 2048² image. Train on it with
    ``geopose train --data CACHE``. An interrupted run resumes where it stopped.
    """

    from geopose.data.cache import prepare_cache
    from geopose.errors import ConfigError

    if split not in ("train", "test", "all"):
        raise ConfigError(f"--split must be train, test or all, got {split!r}")
    with progress_bar({"convert": "converting"}) as on_progress:
        index = prepare_cache(
            data,
            out,
            downsample=downsample,
            split=split,
            workers=workers,
            overwrite=overwrite,
            progress=lambda done, total: on_progress("convert", done, total),
        )
    size = sum(p.stat().st_size for p in Path(out).rglob("*.npy"))
    console.print(
        f"[bold green]done[/]: {len(index)} image(s) -> {escape(str(out))} "
        f"({size / 2**30:.2f} GiB, downsample {downsample})",
        highlight=False,
        soft_wrap=True,
    )
