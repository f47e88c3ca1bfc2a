"""A minimal BioEngine app: one deployment with three schema methods."""

import os
import time
from datetime import UTC, datetime

from hypha_rpc.utils.schema import schema_method
from pydantic import Field
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class DemoApp:
    def __init__(self, greeting: str = "Hello from BioEngine"):
        self.greeting = greeting
        self.started = time.time()

    @schema_method
    async def ping(self) -> dict:
        """Check that the app answers: status, a message, the time and the uptime in seconds."""
        return {
            "status": "ok",
            "message": self.greeting,
            "timestamp": datetime.now(UTC).isoformat(),
            "uptime": time.time() - self.started,
        }

    @schema_method
    async def ascii_art(self) -> list:
        """A small picture, one string per line."""
        return [
            "  ____  _       _____             _            ",
            " | __ )(_) ___ | ____|_ __   __ _(_)_ __   ___ ",
            " |  _ \\| |/ _ \\|  _| | '_ \\ / _` | | '_ \\ / _ \\",
            " | |_) | | (_) | |___| | | | (_| | | | | |  __/",
            " |____/|_|\\___/|_____|_| |_|\\__, |_|_| |_|\\___|",
            "                            |___/              ",
        ]

    @schema_method
    async def read_env(self, name: str = Field(..., description="Environment variable name.")) -> dict:
        """The value of one environment variable of the replica, and its working directory."""
        return {"name": name, "value": os.environ.get(name), "cwd": os.getcwd()}
