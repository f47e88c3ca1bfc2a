"""Fixtures shared by bioengine-cluster's tests."""

import logging

import pytest

from bioengine_common.local_stack import HeadOptions, LocalHead, short_temp_dir


@pytest.fixture
def workspace(tmp_path_factory):
    """A worker's workspace dir; a Ray head the test left running in it is stopped afterwards
    (whatever its sandbox and token: adopting with other settings stops it too)."""
    directory = tmp_path_factory.mktemp("worker")
    yield directory
    token_file = directory / "ray" / "auth_token"
    head = LocalHead(
        short_temp_dir(directory / "ray"),
        HeadOptions(),
        logging.getLogger("test"),
        token_file=token_file if token_file.exists() else None,
    )
    if head.adopt():
        head.stop()
