"""``geopose export MODEL OUT.onnx`` (or ``--model MODEL OUT.onnx``): any model geopose runs to
ONNX, checked under onnxruntime."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import TRUST_FILE, app, console, fail, model_files


@app.command()
def export(
    args: list[str] = typer.Argument(
        ...,
        help="MODEL OUT.onnx, or only OUT.onnx with --model. MODEL: a geopose checkpoint, a "
        "published challenge file, or a downloaded published model's name.",
        metavar="[MODEL] OUT",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="The model (NAME or FILE) when not given before OUT."
    ),
    size: int = typer.Option(256, "--size", help="Example input side (px, multiple of 32)."),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Compare with PyTorch under onnxruntime."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    trust_file: bool = TRUST_FILE,
) -> None:
    """Export a model to ONNX (dynamic batch and size; inputs image [0,1] B×3×H×W RGB, gsd B
    m/px, city B int64; outputs agl m, mag px, direction (sin, cos), scale px/m). A published
    model carries its own input contract (channel order, normalisation, resolution) inside."""
    from geopose.models.export import export_model

    if model is not None and len(args) == 1:
        spec, out = model, Path(args[0])
    elif model is None and len(args) == 2:
        spec, out = args[0], Path(args[1])
    else:
        fail("give MODEL OUT.onnx, or --model MODEL OUT.onnx")
    with model_files(trust_file), console.status(f"exporting {spec} to ONNX"):
        report = export_model(spec, out, size=size, check=check, overwrite=overwrite)
    console.print(f"wrote {out} ({report.size_bytes / 2**20:.1f} MiB)", highlight=False)
    if report.diffs is not None:
        console.print(
            "max |torch - onnxruntime|: "
            + ", ".join(f"{k} {v:.2e}" for k, v in report.diffs.items()),
            highlight=False,
        )
    report.raise_for_parity()
