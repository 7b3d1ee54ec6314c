"""What the CLI lets reach the terminal: geopose's own messages always; third-party warnings
and libraries' info lines (Lightning's "GPU available", tips, deprecations) only with
``geopose -v``.

Only the CLI calls :func:`configure`; library users keep Python's defaults. The choice travels
to child processes (DataLoader workers, DDP ranks) in the environment variable
:data:`ENV`, which :mod:`geopose.training` applies at import (:func:`apply_from_env`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

ENV = "GEOPOSE_VERBOSE"
"""``0``: quiet (the CLI without ``-v``); ``1``: everything; unset: Python's defaults."""

LIBRARY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torch")
"""Loggers kept to WARNING and above when quiet (Lightning sets its own to INFO at import)."""

OWN_MODULES = r"geopose(\.|$)"
"""The modules whose warnings are shown when quiet (``warnings`` filter ``module`` regex)."""

_saved_levels: dict[str, int] = {}  # logger -> level before quiet(), restored by cli_scope()


def quiet() -> None:
    """Show warnings from geopose's modules only, and library log lines of level WARNING and
    above. Call again after importing a library that sets its own filters or levels."""
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=OWN_MODULES)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level != logging.WARNING:
            _saved_levels[name] = logger.level
            logger.setLevel(logging.WARNING)


def configure(verbose: bool) -> None:
    """The CLI's choice: everything (``verbose``) or geopose's messages only; children inherit
    it through :data:`ENV`."""
    os.environ[ENV] = "1" if verbose else "0"
    if not verbose:
        quiet()


def apply_from_env() -> None:
    """Apply the CLI's choice in this process when :data:`ENV` asks for quiet (a DataLoader
    worker or DDP rank of a ``geopose`` command, or the command itself after an import)."""
    if os.environ.get(ENV) == "0":
        quiet()


@contextlib.contextmanager
def cli_scope() -> Iterator[None]:
    """Undo :func:`configure` when the command returns, for in-process callers (tests)."""
    env = os.environ.get(ENV)
    with warnings.catch_warnings():
        try:
            yield
        finally:
            if env is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = env
            for name, level in _saved_levels.items():
                logging.getLogger(name).setLevel(level)
            _saved_levels.clear()
