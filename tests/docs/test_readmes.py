"""Every bash and python block of the READMEs, in order, against one worker (see conftest.py)."""

import pytest

# One worker for all documents (started on first use); the first run also installs the embedded
# server's environment.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_block(block, run_block):
    run_block(block)
