"""``AppDeployer``: a long-lived Ray actor that builds apps and hands them to Serve.

apps-svc never imports app code; this actor does, inside Ray. Being warm, it builds an app in
a fraction of a second, where Serve's declarative build task first has to start a worker and
import Serve (seconds on a small machine). It deploys without waiting: unschedulable replicas
never block it, and apps-svc follows the app's state through Serve's status.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ray

__all__ = ["DEPLOYER_NAME", "AppDeployer"]

DEPLOYER_NAME = "bioengine-app-deployer"


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1)  # type: ignore[call-overload]
class AppDeployer:
    def ping(self) -> int:
        return os.getpid()

    def deploy(self, spec: dict[str, Any], telemetry: dict[str, Any] | None = None) -> dict[str, Any]:
        """Build the app of ``spec`` and start deploying it; return what the build found.
        ``telemetry`` (a trace carrier): the build and submission are a span of that trace."""
        from ray import serve

        from bioengine_common.tracing import remote_span

        from ._builder import build

        with remote_span(
            "app_deployer.deploy",
            telemetry,
            "bioengine-app-deployer",
            application_id=spec.get("application_id"),
        ):
            started = time.perf_counter()
            app = build(spec)
            built = time.perf_counter()
            serve.run_many(
                [serve.RunTarget(app, name=spec["application_id"], route_prefix=None)],
                wait_for_ingress_deployment_creation=False,
                wait_for_applications_running=False,
            )
        return {"build_s": built - started, "submit_s": time.perf_counter() - built, "pid": os.getpid()}
