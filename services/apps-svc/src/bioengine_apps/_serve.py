"""apps-svc's edge to Ray: the app deployer actor, Serve's controller and replica logs.

Every function blocks; the service calls them in threads. No app code is imported here: the
``AppDeployer`` actor (``bioengine_app_runtime``) builds apps inside Ray.
"""

from __future__ import annotations

import re
from typing import Any

from bioengine_app_runtime import PROXY_DEPLOYMENT

from ._state import ObservedApp

__all__ = ["ServeAdapter"]

#: Longest a thread waits for Serve's view of the apps (its caller may give up sooner).
DETAILS_TIMEOUT_S = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_message(message: str | None) -> str:
    """A message of Serve's without its ANSI colour codes and surrounding whitespace."""
    return _ANSI.sub("", message or "").strip()


def enum_value(value: Any) -> str:
    """Serve's enums (ApplicationStatus.RUNNING) as their plain value ("RUNNING")."""
    return str(getattr(value, "value", value))


def _tail_replica_logs(worker_id: str, pid: int | None, lines: int) -> dict[str, Any]:
    """Runs as a Ray task on the replica's node: the tails of its worker's stdout and stderr."""
    import glob
    import os

    import ray

    node: Any = ray._private.worker.global_worker.node
    logs_dir = node.get_logs_dir_path()
    result: dict[str, Any] = {}
    for stream, suffix in (("stdout", "out"), ("stderr", "err")):
        pattern = os.path.join(logs_dir, f"worker-{worker_id}-*.{suffix}")
        paths = sorted(glob.glob(pattern))
        if not paths and pid:
            paths = sorted(glob.glob(os.path.join(logs_dir, f"worker-*-{pid}.{suffix}")))
        text: list[str] = []
        for path in paths:
            with open(path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 256 * 1024))
                text += handle.read().decode("utf-8", errors="replace").splitlines()
        # Ray's own markers (":job_id:", ":actor_name:", ":task_name:") are not the app's output.
        text = [line for line in text if not line.startswith(":") or " " in line]
        result[stream] = text if lines < 0 else text[-lines:] if lines else []
    return result


class ServeAdapter:
    """A connected Ray driver's view of Serve and the KV store."""

    def __init__(self, namespace: str = "bioengine") -> None:
        self._client: Any = None
        self._log_task: Any = None
        self._deployer: Any = None
        self.namespace = namespace

    def start(self) -> None:
        """Connect to Serve's controller, starting Serve (without HTTP proxies) if needed."""
        from ray.serve._private.api import serve_start

        from bioengine_common.tracing import serve_tracing_config

        # With OTLP export on, Serve's own tracing carries an app call's trace from its proxy
        # into the replica (it applies when this call starts Serve's controller).
        self._client = serve_start(proxy_location="Disabled", global_tracing_config=serve_tracing_config())

    def forget(self) -> None:
        self._client = None
        self._log_task = None
        self._deployer = None

    def deployer(self) -> Any:
        """The detached ``AppDeployer`` actor of this cluster, created on first use."""
        if self._deployer is None:
            from bioengine_app_runtime.deployer import DEPLOYER_NAME, AppDeployer

            self._deployer = AppDeployer.options(  # type: ignore[attr-defined]
                name=DEPLOYER_NAME, namespace=self.namespace, lifetime="detached", get_if_exists=True
            ).remote()
        return self._deployer

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("not connected to Serve")
        return self._client

    def deploy(
        self, spec: dict[str, Any], timeout: float = 120.0, telemetry: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Build and submit one app in the deployer actor; build errors are raised here.
        ``telemetry`` (a trace carrier) makes the build a span of the request's trace."""
        import ray

        extra = (telemetry,) if telemetry else ()
        try:
            return dict(ray.get(self.deployer().deploy.remote(spec, *extra), timeout=timeout))
        except ray.exceptions.RayActorError:
            self._deployer = None  # it died (e.g. the head restarted): make a new one next time
            raise

    def delete(self, application_id: str) -> None:
        """Remove an app from Serve; its replicas stop in the background."""
        self.client.delete_apps([application_id], blocking=False)

    def details(self, timeout: float = DETAILS_TIMEOUT_S) -> dict[str, Any]:
        """Serve's view of every app. Bounded here, in Ray, and not only by the caller's wait:
        the thread must end, since the driver is shut down only once no call is under way."""
        import ray

        return dict(ray.get(self.client._controller.get_serve_instance_details.remote(), timeout=timeout))

    @staticmethod
    def observed(details: dict[str, Any]) -> dict[str, ObservedApp]:
        return {
            name: ObservedApp(
                status=enum_value(app.get("status")), ours=PROXY_DEPLOYMENT in (app.get("deployments") or {})
            )
            for name, app in (details.get("applications") or {}).items()
        }

    def proxy_info(self, application_id: str, timeout: float = 2.0) -> dict[str, Any]:
        from ray import serve

        handle = serve.get_deployment_handle(PROXY_DEPLOYMENT, app_name=application_id)
        return dict(handle.get_info.remote().result(timeout_s=timeout))

    def replica_logs(self, replica: dict[str, Any], lines: int, timeout: float = 10.0) -> dict[str, Any]:
        import ray
        from ray import cloudpickle
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._log_task is None:
            import sys

            cloudpickle.register_pickle_by_value(sys.modules[__name__])
            self._log_task = ray.remote(num_cpus=0, max_retries=0)(_tail_replica_logs)
        task = self._log_task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(replica["node_id"], soft=False)
        )
        ref = task.remote(replica.get("worker_id") or "", replica.get("pid"), lines)
        return dict(ray.get(ref, timeout=timeout))
