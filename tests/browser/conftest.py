"""Fixtures of the browser tests: Debian's chromium and the folder the screenshots go to."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

#: Where the tests save screenshots (``$BIOENGINE_BROWSER_ARTIFACTS`` to put them elsewhere).
ARTIFACTS = Path(os.environ.get("BIOENGINE_BROWSER_ARTIFACTS") or Path(__file__).parent / "artifacts")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (Playwright cannot download a browser here): skip without one, or fail
    when ``BIOENGINE_REQUIRE_CHROMIUM=1`` (CI installs it)."""
    path = os.environ.get("BIOENGINE_CHROMIUM") or shutil.which("chromium")
    if path:
        return path
    message = "chromium is not installed (apt-get install -y chromium)"
    if os.environ.get("BIOENGINE_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"BIOENGINE_REQUIRE_CHROMIUM=1 but {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
