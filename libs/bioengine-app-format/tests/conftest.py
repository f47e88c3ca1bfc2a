"""Fixtures of bioengine-app-format's tests (pure: files in, problems out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent


def read_folder(folder: Path) -> dict[str, bytes]:
    """An app folder's files as the services hold them: {relative POSIX name: bytes}."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture
def read_app() -> Any:
    """``read_app(name)``: the files of the repository's example app ``apps/<name>``."""
    return lambda name: read_folder(REPO / "apps" / name)


@pytest.fixture
def example_06() -> Any:
    """``example_06(name)``: the files of a 0.6.0 example app under ``tests/apps_06/<name>``."""
    return lambda name: read_folder(HERE / "apps_06" / name)
