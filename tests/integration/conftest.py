"""Fixtures of the cross-service tests."""

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def uv() -> str:
    """The uv binary (``$UV``, else the one on PATH) for tests that sync or run members."""
    path = os.environ.get("UV") or shutil.which("uv")
    if not path:
        pytest.fail("uv must be on PATH (pip install uv), or named by $UV")
    return path
