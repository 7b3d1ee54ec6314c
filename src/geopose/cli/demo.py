"""``geopose demo``: synth -> train -> predict (D4 TTA) -> evaluate -> rectify -> report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from geopose.cli.app import app, console, progress_bar
from geopose.demo import TRAIN_IMAGES

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

    from geopose.training.progress import TrainingStatus

BAR_WIDTH = (10, 40)
"""Narrowest and widest training bar, columns: the terminal's width less 70 (the status text
takes up to about 60), kept still as the text grows."""


class RichTrainingView:
    """Draws the training's progress (:class:`geopose.training.progress.TrainingProgress`) as one
    rich line, e.g. ``train ━━━━━━━━╸━━━━━  03:12 / 06:40  1,234 steps  val score 0.710``:
    the time used of the training's budget (mm:ss), the optimizer steps, the loss and the
    latest validation score. Redrawn twice a second (the clock runs between steps, which take
    seconds on a CPU); the last state stays on screen."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: TrainingStatus | None = None
        self.live: Live | None = None

    def render(self) -> RenderableType:
        """The line for the latest status, its clock moved on to now."""
        import time

        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        if self.status is None:
            return Text("")
        status = self.status.later(time.monotonic())
        width = min(BAR_WIDTH[1], max(BAR_WIDTH[0], self.console.width - 70))
        grid = Table.grid(padding=(0, 2))
        grid.add_row(
            Text("train", style="bold"),
            ProgressBar(total=1.0, completed=status.fraction(), width=width),
            Text(status.text(), no_wrap=True, overflow="ellipsis"),
        )
        return grid

    def start(self) -> None:
        from rich.live import Live

        self.live = Live(
            console=self.console, get_renderable=self.render, refresh_per_second=2, transient=False
        )
        self.live.start()

    def update(self, status: TrainingStatus) -> None:
        self.status = status

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()  # draws the last status once more, and leaves it
            self.live = None


@app.command()
def demo(
    out: Path = typer.Argument(Path("geopose-demo"), help="Demo folder (reused when run again)."),
    minutes: float = typer.Option(10.0, "--minutes", "-m", help="Wall-clock budget, minutes."),
    train_images: int = typer.Option(
        TRAIN_IMAGES, "--train", min=4, help="Synthetic training images."
    ),
    test_images: int = typer.Option(24, "--test", min=1, help="Synthetic test images."),
    size: int = typer.Option(256, "--size", min=64, help="Image side, px."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and the training."),
    tta: str | None = typer.Option(
        None,
        "--tta",
        help="Test-time augmentation: none|flip|d2|d4 (default: what the recipe was trained "
        "for; cpu_small trains without D4 turns, so none; d4 with --uniform-angles).",
        show_default=False,
    ),
    uniform_angles: bool = typer.Option(
        False, "--uniform-angles", help="Flow angles uniform in [0, 2π) (harder)."
    ),
    overrides: list[str] = typer.Option(
        None, "--set", help="Training config override key=value (repeatable), e.g. train.lr=3e-4."
    ),
) -> None:
    """Run the whole pipeline on synthetic cities on CPU, offline, within a time budget.

    Renders a synthetic city set, trains the cpu_small recipe, predicts the held-out test
    images (without test-time augmentation: cpu_small is not trained on turned views),
    scores them with the competition score, rectifies a few to nadir views and writes an HTML
    report. Run again to reuse what is done.
    The budget covers it all: training stops in time for the rest, measured on this machine,
    and if prediction runs late anyway the last images get fewer TTA views.
    """
    import time

    from rich.table import Table

    from geopose.demo import DemoSettings, run_demo
    from geopose.inference.tta import check_tta

    check_tta(tta)
    settings = DemoSettings(
        out=out,
        minutes=minutes,
        n_train=train_images,
        n_test=test_images,
        size=size,
        seed=seed,
        tta=tta,
        uniform_angles=uniform_angles,
        overrides=list(overrides or []),
    )
    t0 = time.monotonic()

    def log(msg: str) -> None:
        console.print(f"[dim]{(time.monotonic() - t0) / 60:5.1f} min[/] {escape(msg)}")

    with progress_bar() as on_progress:
        scores = run_demo(settings, log, on_progress, RichTrainingView(console))
    table = Table(title="geopose demo: test scores (geopose evaluate)")
    for col in ("city", "score", "R² AGL", "R² VFLOW", "angle err °", "scale err px/m"):
        table.add_column(col, justify="right")
    for city, c in scores["cities"].items():
        table.add_row(
            city,
            *(
                "-" if c[k] is None else f"{c[k]:.3f}" if k != "angle_error_deg" else f"{c[k]:.1f}"
                for k in ("score", "r2_agl", "r2_vflow", "angle_error_deg", "scale_error")
            ),
        )
    console.print(table)
    console.print(
        f"final score [bold]{scores['final']:.4f}[/] in {scores['demo_minutes']:.1f} min; "
        f"report: {escape(str(settings.report.resolve()))}",
        highlight=False,
    )
    tta_run = scores.get("demo", {}).get("tta", {})
    tta_used = tta_run.get("used", {})
    if set(tta_used) - {tta_run.get("asked", tta)}:
        done = ", ".join(f"{mode} for {n}" for mode, n in tta_used.items())
        console.print(
            f"[yellow]prediction ran late[/]: TTA {done} image(s), to keep the "
            f"{minutes:g} min budget (scores.json: demo)",
            highlight=False,
        )
