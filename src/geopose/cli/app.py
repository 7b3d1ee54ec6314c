"""The ``geopose`` typer application; each command lives in its own module of this package.

Command modules import heavy libraries (torch, matplotlib) inside their functions so that
``geopose --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:  # geopose.types imports torch: not at --help time
    from rich.progress import TaskID

    from geopose.types import ProgressFn

app = typer.Typer(
    name="geopose",
    help="Geocentric pose of oblique satellite images: height above ground, flow angle and scale.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)


class _Bars:
    """A :data:`~geopose.types.ProgressFn` drawn as rich bars: one per stage, added at its first
    call, removed once done (``done >= total > 0``); the display runs only while a stage is
    under way, so that another live display (Lightning's training bar) may follow it."""

    def __init__(self, labels: Mapping[str, str], console: Console, disable: bool, transfer: bool):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        counts = (DownloadColumn(), TransferSpeedColumn()) if transfer else (MofNCompleteColumn(),)
        self.labels = labels
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            *counts,
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=disable,
        )
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        task = self.tasks.get(stage)
        if task is None:
            if not self.tasks:
                self.bar.start()
            task = self.tasks[stage] = self.bar.add_task(self.labels.get(stage, stage))
        self.bar.update(task, completed=done, total=total or None)
        if total and done >= total:
            self.bar.remove_task(self.tasks.pop(stage))
            if not self.tasks:
                self.bar.stop()

    def close(self) -> None:
        self.bar.stop()


@contextlib.contextmanager
def progress_bar(
    labels: Mapping[str, str] | None = None,
    console: Console = err_console,
    disable: bool = False,
    transfer: bool = False,
) -> Iterator[ProgressFn]:
    """The CLI's drawing of the library's progress callback: ``with progress_bar() as
    on_progress: library_call(..., on_progress=on_progress)``.

    Each stage is a bar (its label: ``labels[stage]``, else the stage) with the count done,
    and the time left, on stderr by default, cleared when done. ``transfer``: counts are bytes
    (size and speed shown); ``disable``: draw nothing (a rank other than 0).
    """
    bars = _Bars(labels or {}, console, disable, transfer)
    try:
        yield bars
    finally:
        bars.close()


def fail(message: str, code: int = 1) -> None:
    """Print one red ``error:`` line on stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# --- the option of the commands that load model files -----------------------------------------

TRUST_FILE = typer.Option(
    False,
    "--trust-file",
    help="Load model files with full unpickling: a file can then run code. Only for a file of "
    "your own that holds other Python objects; no published model or geopose checkpoint "
    "needs it.",
)


@contextlib.contextmanager
def model_files(trust: bool) -> Iterator[None]:
    """Model files loaded as data (``geopose.io.checkpoint``); with ``trust`` (``--trust-file``)
    fully unpickled, after a warning on stderr."""
    if not trust:
        yield
        return
    from geopose.io.checkpoint import trusted_files

    err_console.print(
        "[bold yellow]warning:[/] --trust-file: model files are fully unpickled and can run code",
        highlight=False,
    )
    with trusted_files():
        yield


# --- options shared by the commands that read satellite scenes ---------------------------------

_STRETCH_RE = r"^(auto|none|minmax|p\d+(\.\d*)?-\d+(\.\d*)?)$"
SCENE_BANDS = typer.Option(
    None,
    "--bands",
    help="Scene bands shown as R,G,B (1-based, e.g. 3,2,1; one band for grey); makes the "
    "image a scene.",
    show_default=False,
)
SCENE_STRETCH = typer.Option(
    None,
    "--stretch",
    help="Scene DN -> 8-bit: auto, none, pLOW-HIGH (p2-98), minmax; makes the image a scene.",
    show_default=False,
)
SCENE_NODATA = typer.Option(
    None,
    "--nodata",
    help="DN meaning no data in a scene (default: the file's nodata value / mask).",
    show_default=False,
)


def scene_options(
    bands: str | None, stretch: str | None
) -> tuple[tuple[int, ...] | None, str | None]:
    """Check ``--bands``/``--stretch`` (one error line and exit 1 when malformed)."""
    import re

    from geopose.errors import ConfigError
    from geopose.io.scene import parse_bands

    parsed = None
    if bands is not None:
        try:
            parsed = parse_bands(bands)
        except ConfigError as exc:
            fail(f"--bands: {exc}")
        if len(parsed) not in (1, 3):
            fail(f"--bands {bands!r}: give three bands (red, green, blue) or one (grey)")
    if stretch is not None:
        stretch = stretch.strip().lower()
        if not re.match(_STRETCH_RE, stretch):
            fail(f"--stretch {stretch!r}: use auto, none, minmax or pLOW-HIGH (e.g. p2-98)")
    return parsed, stretch
