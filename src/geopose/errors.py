"""The exceptions geopose raises on purpose. The CLI prints them as one line and exits 1."""

from __future__ import annotations

from pathlib import Path


class GeoposeError(Exception):
    """Base class of every error geopose raises deliberately."""


class GeoposeDataError(GeoposeError):
    """Bad input data: the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class OutputExistsError(GeoposeError):
    """An output exists already and overwriting was not asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: exists already (pass --overwrite to replace it)")


class ConfigError(GeoposeError):
    """An unknown configuration key or a bad value."""
