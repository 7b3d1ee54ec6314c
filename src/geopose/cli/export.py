"""``geopose export CHECKPOINT OUT.onnx``: a trained model to ONNX, checked under onnxruntime."""

from __future__ import annotations

from pathlib import Path

import typer

from geopose.cli.app import app, console


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Trained geopose checkpoint (.ckpt)."),
    out: Path = typer.Argument(..., help="ONNX file to write."),
    size: int = typer.Option(256, "--size", help="Example input side (px, multiple of 32)."),
    check: bool = typer.Option(
        True, "--check/--no-check", help="Compare with PyTorch under onnxruntime."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Export a checkpoint's model to ONNX (dynamic batch and size; inputs image [0,1] B×3×H×W,
    gsd B m/px, city B int64; outputs agl m, mag px, direction (sin, cos), scale px/m)."""
    from geopose.errors import GeoposeDataError, OutputExistsError
    from geopose.models import load_checkpoint
    from geopose.models.export import export_onnx, onnx_parity

    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    model, _ = load_checkpoint(checkpoint)
    with console.status(f"exporting {checkpoint} to ONNX"):
        export_onnx(model, out, size=size, overwrite=overwrite)
    console.print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", highlight=False)
    if check:
        diffs = onnx_parity(model, out, size=size)
        worst = max(diffs.values())
        console.print(
            "max |torch - onnxruntime|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()),
            highlight=False,
        )
        if worst > 1e-3:
            raise GeoposeDataError(out, f"ONNX outputs differ from PyTorch by {worst:.3g}")
