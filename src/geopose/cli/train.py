"""``geopose train``: train a recipe on a data folder or a prepared cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from geopose.cli.app import TRUST_FILE, app, console, model_files


@app.command(context_settings={"allow_extra_args": False})
def train(
    overrides: list[str] = typer.Argument(
        None,
        help="Config overrides key=value (YAML values), e.g. train.lr=3e-4 data.crop=256 "
        "data.aug=light model.encoder=resnet34. Bare data/train keys work too (lr=3e-4).",
        show_default=False,
    ),
    config: str | None = typer.Option(
        None, "--config", "-c", help="Recipe name (cpu_small, bloodaxe_b7, ...) or YAML file."
    ),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Data folder (competition layout) or geopose prepare cache."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder to create."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue this run folder from its last checkpoint, exactly."
    ),
    init_from: str | None = typer.Option(
        None,
        "--init-from",
        help="Start from this model's weights (fresh optimizer): a geopose checkpoint, or a "
        "published challenge model (NAME or FILE), whose architecture then replaces the "
        "recipe's model section.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    trust_file: bool = TRUST_FILE,
) -> None:
    """Train a model on a data folder or a prepared cache.

    Random augmented crops; validation with the competition score every epoch; the best 3
    checkpoints by score plus the last; CSV and TensorBoard logs.

    Runs on CPU, one GPU (bf16-mixed) or many (DDP: train.devices=N, or under torchrun,
    multi-node with train.num_nodes). Stops with a clear message if the loss turns NaN.
    """
    from geopose.errors import ConfigError
    from geopose.training.run import plan_run

    if resume is not None and out is not None and Path(out).resolve() != Path(resume).resolve():
        raise ConfigError("--resume RUN continues RUN in place; drop --out or make it RUN")
    plan = plan_run(
        resume if resume is not None else out,
        config,
        overrides or [],
        data=data,
        resume=resume is not None,
        init_from=init_from,
        overwrite=overwrite,
    )
    name, root = plan.config.get("name", config), plan.config["data"]["root"]
    console.print(
        f"training [bold]{escape(str(name))}[/] on {escape(str(root))} -> {escape(str(plan.out))}",
        highlight=False,
    )
    with model_files(trust_file):  # --init-from's model is read when the training starts
        summary = plan.train()
    score = summary["best_score"]
    best = (
        f", best val score {score:.4f} ({escape(str(summary['best_checkpoint']))})" if score else ""
    )
    console.print(
        f"[bold green]done[/]: {summary['global_step']} steps in {summary['seconds']:.0f} s{best}; "
        f"last checkpoint {escape(summary['last_checkpoint'])}",
        highlight=False,
        soft_wrap=True,
    )
