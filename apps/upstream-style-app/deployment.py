"""A demo deployment written for the public BioEngine SDK (``import bioengine``).

Nothing in this file knows about the platform it runs on: it is written the way an author of
the public SDK writes an app (the pip requirements are read from ``requirements-deployment.txt``
beside this module when it is imported, a module-level logger, the older ``num_gpus=0``), and
this project deploys it unchanged.
"""

import asyncio
import os
import time
from datetime import UTC, datetime

from pydantic import Field

import bioengine

logger = bioengine.logger

REQUIREMENTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements-deployment.txt")


def read_requirements(path: str = REQUIREMENTS_FILE) -> list:
    """The requirement lines of a requirements file, comments and blank lines left out."""
    with open(path, encoding="utf-8") as handle:
        lines = (line.split("#", 1)[0].strip() for line in handle)
        return [line for line in lines if line]


@bioengine.app(
    num_cpus=1,
    num_gpus=0,
    memory_mb=512,
    pip=read_requirements(),
    env_vars={"EXAMPLE_ENV_VAR": "example-value"},
)
class DemoDeployment:
    """Pings, draws ASCII tables, reverses text and lists the worker's datasets."""

    def __init__(self, test_param: str = "default") -> None:
        self.test_param = test_param
        self.start_time = time.time()
        self.initialized = False
        self.smoke_test_passed = False
        self.fail_health_check = False
        logger.info("DemoDeployment created with test_param=%r", test_param)

    # ---- lifecycle ---------------------------------------------------------------------------------
    @bioengine.async_init
    async def async_init(self) -> None:
        """Load what the deployment needs before it takes requests."""
        await asyncio.sleep(0.01)
        self.initialized = True
        logger.info("DemoDeployment initialised")

    @bioengine.smoke_test
    async def test_my_methods(self) -> None:
        """Check the deployment end to end once it has started."""
        import tabulate  # the deployment's own pip dependency, present in the replica

        assert tabulate.__version__, "tabulate is not installed"
        assert os.environ.get("EXAMPLE_ENV_VAR") == "example-value", "EXAMPLE_ENV_VAR is not set"
        pong = await self.ping()
        assert pong["status"] == "ok", pong
        assert await self.reverse_text("abc") == "cba"
        art = await self.ascii_art(rows=[["a", 1]])
        assert "a" in art, art
        self.smoke_test_passed = True
        logger.info("DemoDeployment smoke test passed")

    @bioengine.health_check
    def check_me(self) -> None:
        """Raise when the deployment is not well (Ray Serve then replaces the replica)."""
        if self.fail_health_check:
            raise RuntimeError("health check failing on request")

    # ---- methods -----------------------------------------------------------------------------------
    @bioengine.method
    async def ping(self) -> dict:
        """Say that the deployment is alive, with its settings."""
        return {
            "status": "ok",
            "message": f"Hello from DemoDeployment ({self.test_param})",
            "timestamp": datetime.now(UTC).isoformat(),
            "uptime": time.time() - self.start_time,
            "initialized": self.initialized,
            "smoke_test_passed": self.smoke_test_passed,
            "env_var": os.environ.get("EXAMPLE_ENV_VAR"),
        }

    @bioengine.method
    async def ascii_art(
        self,
        rows: list = Field(None, description="Rows of the table, each a list of cells (default: a sample)"),
        headers: list = Field(None, description="Column titles (default: name, symbol)"),
    ) -> str:
        """The rows drawn as an ASCII table (by ``tabulate``)."""
        from tabulate import tabulate

        if rows is None:
            rows = [["BioEngine", "🧬"], ["Ray", "☀"], ["Hypha", "🌐"]]
            headers = headers or ["name", "symbol"]
        return tabulate(rows, headers=headers or (), tablefmt="grid")

    @bioengine.method
    async def reverse_text(self, text: str = Field(..., description="The text to reverse")) -> str:
        """The text, backwards."""
        return text[::-1]

    @bioengine.method
    async def set_fail_health_check(self, fail: bool = True) -> bool:
        """Make the health check fail (or pass again)."""
        self.fail_health_check = fail
        return fail

    @bioengine.method
    async def list_datasets(self) -> dict:
        """The datasets the worker serves, or {} when it has no datasets server."""
        try:
            return await bioengine.datasets.list_datasets()
        except bioengine.MissingDataServerError:
            logger.info("No data server configured")
            return {}
