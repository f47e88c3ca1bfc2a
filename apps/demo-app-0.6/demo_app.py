"""The demo app in manifest format 0.6.0: every decorator and hook of the ``bioengine`` SDK.

``humanize`` is this app's own ``pip`` dependency: Ray installs it into the replica's
environment, so it is imported inside the methods that use it, never at module level (the
platform imports this module with the SDK's dependencies only to read the decorators).
"""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import Field

import bioengine

bioengine.logger.debug("demo_app imported")


@bioengine.app(
    num_cpus=0.2,
    memory_mb=256,
    num_gpus=0,  # the older SDKs' GPU option: still accepted
    pip=["humanize==4.16.0"],
    env_vars={"DEMO_GREETING_STYLE": "friendly"},
    max_ongoing_requests=4,
    health_check_period_s=2,
    health_check_timeout_s=10,
)
class DemoApp:
    """Greets, formats numbers with ``humanize`` and shows its own lifecycle."""

    def __init__(self, greeting: str = "Hello", fail_smoke_test: bool = False):
        self.greeting = greeting
        self.fail_smoke_test = fail_smoke_test
        self.started = time.time()
        self.initialised_at: float | None = None
        self.smoke_test_passed = False
        self.fail_health_check = False

    @bioengine.async_init
    async def load(self) -> None:
        """Runs once per replica before it takes calls (e.g. load a model's weights)."""
        await asyncio.sleep(0)
        self.initialised_at = time.time()

    @bioengine.smoke_test
    async def try_myself(self) -> None:
        """Runs in the background after ``load``; if it raises, the replica is marked failed."""
        if self.fail_smoke_test:
            raise AssertionError("the demo was deployed with fail_smoke_test=True")
        assert await self.greet("smoke test") == f"{self.greeting}, smoke test!"
        assert (await self.natural_size(2048))["text"] == "2.0 kB"
        self.smoke_test_passed = True

    @bioengine.health_check
    def still_fine(self) -> None:
        """Runs on each of Ray Serve's health checks (here every 2 s); raising replaces the replica."""
        if self.fail_health_check:
            raise RuntimeError("asked to fail its health check")

    @bioengine.method
    async def ping(self) -> dict:
        """Liveness and lifecycle of this replica."""
        return {
            "status": "ok",
            "uptime": time.time() - self.started,
            "initialised": self.initialised_at is not None,
            "smoke_test_passed": self.smoke_test_passed,
            "pid": os.getpid(),
            "style": os.environ.get("DEMO_GREETING_STYLE"),
        }

    @bioengine.method
    async def greet(self, name: str = Field(..., description="Who to greet")) -> str:
        """A greeting made of the ``greeting`` init kwarg."""
        return f"{self.greeting}, {name}!"

    @bioengine.method
    async def natural_size(self, size: int = Field(..., description="A number of bytes")) -> dict:
        """``size`` for people, by the ``humanize`` package (this app's pip dependency)."""
        import humanize

        return {"text": humanize.naturalsize(size), "humanize_version": humanize.__version__}

    @bioengine.method(context=True)
    async def whoami(self, context: dict | None = None) -> dict:
        """The caller, as Hypha tells the app."""
        user = (context or {}).get("user") or {}
        return {"id": user.get("id"), "workspace": (context or {}).get("ws")}

    @bioengine.method
    async def wait(self, seconds: float = Field(1.0, ge=0, le=30, description="How long")) -> float:
        """Take ``seconds`` to answer (to see the app's call limit at work)."""
        await asyncio.sleep(seconds)
        return seconds

    @bioengine.method
    async def set_fail_health_check(self, fail: bool = True) -> bool:
        """Make this replica's health check fail (Serve then replaces the replica)."""
        self.fail_health_check = fail
        return fail

    @bioengine.method
    async def list_datasets(self) -> dict:
        """The worker's datasets this app may read ({} when the worker has no datasets server)."""
        try:
            return await bioengine.datasets.list_datasets()
        except bioengine.MissingDataServerError:
            return {}
