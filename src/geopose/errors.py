"""The exceptions geopose raises on purpose. The CLI prints them as one line and exits with the
error's ``exit_code`` (1; 2 for an output that cannot be written)."""

from __future__ import annotations

from pathlib import Path


class GeoposeError(Exception):
    """Base class of every error geopose raises deliberately."""

    exit_code: int = 1
    """The CLI's exit status for this error."""


class GeoposeDataError(GeoposeError):
    """Bad input data: the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

    def __reduce__(self):  # the same error when raised in a worker process
        return type(self), (self.path, self.problem)


class OutputExistsError(GeoposeError):
    """An output exists already and overwriting was not asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: exists already (pass --overwrite to replace it)")

    def __reduce__(self):
        return type(self), (self.path,)


class ConfigError(GeoposeError):
    """An unknown configuration key or a bad value."""


class OutputPathError(GeoposeError):
    """An output path that cannot be created or written (a file where a folder must be, no
    permission, a read-only disk): nothing was written. The CLI exits with code 2."""

    exit_code = 2

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)
