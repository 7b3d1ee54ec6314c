"""``geopose evaluate PRED_DIR TRUTH_DIR``: the competition score of a predictions folder."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import app, console, err_console, progress_bar


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _table(result: dict):
    """Per-city rows and the final score, narrow enough for an 80-column terminal."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="Competition score per city",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    headers = ("City", "Images", "Score", "R²\nAGL", "R²\nVFLOW", "Angle\nerr °",
               "Scale err\npx/m", "AGL\nMAE m", "AGL\nRMSE m", "EPE\npx")  # fmt: skip
    for name in headers:
        table.add_column(name, justify="left" if name == "City" else "right")
    for city, m in result["cities"].items():
        table.add_row(
            city,
            str(m["images"]),
            _fmt(m["score"]),
            _fmt(m["r2_agl"]),
            _fmt(m["r2_vflow"]),
            _fmt(m["angle_error_deg"], 2),
            _fmt(m["scale_error"], 3),
            _fmt(m["agl_mae"], 2),
            _fmt(m["agl_rmse"], 2),
            _fmt(m["epe"], 2),
        )
    table.add_section()
    table.add_row("[bold]final[/]", str(result["images"]), f"[bold]{_fmt(result['final'])}[/]")
    return table


@app.command()
def evaluate(
    pred_dir: Path = typer.Argument(..., help="Predictions: {stem}_AGL.tif + {stem}_VFLOW.json."),
    truth_dir: Path = typer.Argument(..., help="Truth: {stem}_AGL.tif + {stem}_VFLOW.json."),
    json_path: Path | None = typer.Option(
        None, "--json", help="Write every number to this JSON file (atomically)."
    ),
    workers: int = typer.Option(
        0, "--workers", "-j", help="Decoding threads (0 = one per CPU, at most 8)."
    ),
    partial: bool = typer.Option(
        False, "--partial", help="Score the predictions present; skip missing or mis-sized ones."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
) -> None:
    """Score predictions against truth with the exact competition formula (per city + final)."""
    from geopose.metrics.evaluate import evaluate_folders

    def notice(line: str) -> None:
        err_console.print(line, highlight=False)

    with progress_bar({"score": "scoring"}) as on_progress:
        result = evaluate_folders(
            pred_dir,
            truth_dir,
            partial=partial,
            workers=workers,
            json_path=json_path,
            overwrite=overwrite,
            on_progress=on_progress,
            on_notice=notice,
        )
    console.print(_table(result))
    console.print(
        f"final score {_fmt(result['final'])} "
        f"(mean of {len(result['cities'])} cities, {result['images']} images)",
        highlight=False,
    )
    if result["skipped"]:
        console.print(
            f"scored {result['images']} of {result['images'] + result['skipped']} images "
            f"({result['skipped']} skipped)"
        )
    nan_pixels = sum(m["pred_nan_pixels"] for m in result["cities"].values())
    if nan_pixels:
        console.print(f"{nan_pixels} valid pixels had no predicted height (scored as 0 m)")
    if json_path is not None:
        console.print(f"wrote {json_path}")
