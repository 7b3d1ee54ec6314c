"""``geopose synth OUT``: a synthetic oblique-city data set with exact truth."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import app, console, fail, progress_bar


def _cities(values: list[str] | None) -> list[str] | None:
    """``--cities ARG,ATL --cities OMA`` -> ["ARG", "ATL", "OMA"]."""
    if not values:
        return None
    out = [c.strip().upper() for v in values for c in v.split(",") if c.strip()]
    return out or None


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Output folder (must be empty unless --overwrite)."),
    train: int = typer.Option(100, "--train", min=0, help="Training images."),
    test: int = typer.Option(20, "--test", min=0, help="Test images (truth in test_truth/)."),
    size: int = typer.Option(512, "--size", min=16, help="Image side (px)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
    cities: list[str] | None = typer.Option(
        None, "--cities", help="Cities to cycle through (ARG, ATL, JAX, OMA; comma-separated)."
    ),
    workers: int = typer.Option(0, "--workers", "-w", help="Processes (0 = one per CPU)."),
    nadir: bool = typer.Option(
        False, "--nadir", help="Also write {stem}_NADIR_AGL.tif and {stem}_NADIR_RGB.png."
    ),
    uniform_angles: bool = typer.Option(
        False, "--uniform-angles", help="Angles uniform in [0, 2π) instead of per-city passes."
    ),
    missing: bool = typer.Option(
        True, "--missing/--no-missing", help="LiDAR-like voids (65535) in the AGL truth."
    ),
    speckle: float = typer.Option(
        0.0, "--speckle", min=0.0, max=1.0, help="Share of AGL pixels with spurious errors."
    ),
    hidden: float = typer.Option(
        0.0, "--hidden", min=0.0, max=1.0, help="Share of buildings in the AGL but not the RGB."
    ),
    j2k_psnr: float = typer.Option(40.0, "--j2k-psnr", min=0.0, help="JPEG 2000 quality (dB)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty OUT."),
) -> None:
    """Render synthetic oblique cities in the competition layout, with exact AGL and flow."""
    from geopose.errors import ConfigError
    from geopose.synth import TruthOptions, write_dataset
    from geopose.synth.dataset import mean_agl_by_city

    if train + test == 0:
        fail("nothing to write: --train and --test are both 0")
    truth = TruthOptions(missing=missing, speckle=speckle, hidden=hidden)
    try:
        with progress_bar() as on_progress:
            views = write_dataset(
                out,
                train,
                test,
                size,
                seed,
                cities=_cities(cities),
                workers=workers,
                nadir=nadir,
                uniform_angles=uniform_angles,
                overwrite=overwrite,
                truth=truth,
                j2k_psnr=j2k_psnr,
                on_progress=on_progress,
            )
    except ConfigError as exc:
        fail(str(exc))
    secs = views.attrs.get("seconds", float("nan"))
    means = ", ".join(f"{c} {m:.1f} m" for c, m in mean_agl_by_city(views).items())
    console.print(
        f"wrote {train} train + {test} test images of {size}² to {out} in {secs:.1f} s "
        f"({len(views) / max(secs, 1e-9):.1f} img/s); mean AGL {means}",
        highlight=False,
    )
