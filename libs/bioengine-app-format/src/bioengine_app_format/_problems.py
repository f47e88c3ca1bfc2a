"""A problem of an app, with the file and line it is about."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AppFormatError", "Problem"]


@dataclass(frozen=True)
class Problem:
    """``file`` is a path relative to the app folder; ``line`` is 1-based, None when unknown."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class AppFormatError(ValueError):
    """An app that breaks its format's rules; ``problems`` lists all of them."""

    def __init__(self, message: str, problems: Sequence[Problem]):
        super().__init__(message)
        self.problems = list(problems)
