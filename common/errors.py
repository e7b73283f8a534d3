"""User-facing errors: one line, naming the file (or key) and the problem."""
from __future__ import annotations

from os import PathLike


class ProbeSuiteError(Exception):
    """Base of every error a CLI reports as one line and exits non-zero on."""


class ConfigError(ProbeSuiteError):
    """A config file or override is wrong (unknown key, wrong type)."""


class InputError(ProbeSuiteError):
    """A data file is missing, corrupt, truncated or inconsistent."""

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class CacheError(ProbeSuiteError):
    """A feature cache is corrupt or does not match what is asked of it."""


class CheckpointError(ProbeSuiteError):
    """A checkpoint cannot be found, read or loaded into the model."""
