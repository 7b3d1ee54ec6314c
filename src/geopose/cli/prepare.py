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

    with progress_bar({"convert": "converting"}) as on_progress:
        cache = prepare_cache(
            data,
            out,
            downsample=downsample,
            split=split,
            workers=workers,
            overwrite=overwrite,
            on_progress=on_progress,
        )
    console.print(
        f"[bold green]done[/]: {len(cache.index)} image(s) -> {escape(str(out))} "
        f"({cache.size_bytes / 2**30:.2f} GiB, downsample {cache.downsample})",
        highlight=False,
        soft_wrap=True,
    )
