"""``geopose evaluate PRED_DIR TRUTH_DIR``: the competition score of a predictions folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geopose.cli.app import app, console, err_console, fail


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
    from geopose.errors import OutputExistsError
    from geopose.io.atomic import check_output_file, write_text_atomic
    from geopose.metrics.evaluate import missing_message, pair_folders, score_pairs

    if json_path is not None:
        check_output_file(json_path)
        if json_path.exists() and not overwrite:
            raise OutputExistsError(json_path)
    pairing = pair_folders(pred_dir, truth_dir)
    for stem, names in sorted(pairing.missing.items()):
        err_console.print(f"missing prediction: {stem} (no {' / '.join(names)})", highlight=False)
    for stem in pairing.extra:
        err_console.print(f"extra prediction ignored: {stem} (no truth)", highlight=False)
    if pairing.missing and not partial:
        fail(missing_message(pairing) + " (pass --partial to score the rest)")
    if not pairing.pairs:
        fail(f"{pred_dir}: no prediction matches a truth image")
    if err_console.is_terminal:
        from rich.progress import Progress

        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("scoring", total=len(pairing.pairs))
            result = score_pairs(pairing, workers, on_image=lambda _: progress.advance(task))
    else:
        result = score_pairs(pairing, workers)
    for m in result["size_mismatch"]:
        err_console.print(
            f"size mismatch: {m['stem']}: prediction {m['pred'][0]}×{m['pred'][1]}, "
            f"truth {m['truth'][0]}×{m['truth'][1]}",
            highlight=False,
        )
    if result["size_mismatch"] and not partial:
        fail(f"{len(result['size_mismatch'])} prediction(s) differ in size from the truth")
    result["partial"] = partial
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
        text = json.dumps(result, indent=2, allow_nan=False) + "\n"
        write_text_atomic(json_path, text, overwrite=overwrite)
        console.print(f"wrote {json_path}")
