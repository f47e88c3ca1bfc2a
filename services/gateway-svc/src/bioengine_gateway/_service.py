"""The public ``bioengine-worker`` service: one API composed from the internal services.

Status of the internal services is refreshed in the background and served from a cache, so a
``get_status`` call never fans out; a service that is down is reported with its error.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from pydantic import Field

from bioengine_common import (
    EXIT_WORKER_STOP,
    BioEngineService,
    ServiceSettings,
    ServiceUnavailable,
    check_permissions,
    error_summary,
    forwarded_caller,
    from_remote,
    is_authorized,
    plain,
    within,
)
from bioengine_common.contracts import SERVICE_IDS, WORKER, MethodContract, worker
from bioengine_dashboard import dashboard_service, dashboard_url

#: Internal services the gateway composes: short name -> Hypha service id.
BACKENDS = {name: service_id for name, service_id in SERVICE_IDS.items() if name != "gateway"}


def _is_stale_proxy(exc: BaseException) -> bool:
    """The service behind a cached proxy is gone (restarted under a new client id)."""
    text = str(exc)
    return isinstance(exc, ConnectionError) or any(
        marker in text for marker in ("not connected", "Service not found", "Client not found")
    )


def ray_cluster_for(ray_cluster: dict[str, Any] | None, admin: bool) -> dict[str, Any] | None:
    """The cluster's ``ray_cluster`` as a caller may see it: the SLURM job script (paths, the
    job's environment) for admins only."""
    if admin or not isinstance(ray_cluster, dict) or not isinstance(ray_cluster.get("slurm"), dict):
        return ray_cluster
    slurm = {k: v for k, v in ray_cluster["slurm"].items() if k not in ("job_script", "job_script_error")}
    return {**ray_cluster, "slurm": slurm}


def _without_ray_cluster(entry: dict[str, Any]) -> dict[str, Any]:
    """A service entry for get_status; the cluster's ray_cluster is shown once, at the top."""
    entry = dict(entry)
    if isinstance(entry.get("status"), dict):
        entry["status"] = {k: v for k, v in entry["status"].items() if k != "ray_cluster"}
    return entry


def _relay(callback: Any) -> Any:
    """A local function that calls the caller's callback.

    A callback proxy received from one client cannot be handed on as it is: Hypha only lets the
    peer it was sent to call it, so the internal service calls this relay instead.
    """
    if callback is None:
        return None

    async def relay(line: str) -> None:
        result = callback(line)
        if inspect.isawaitable(result):
            await result

    return relay


#: The field of ``get_status`` that says why the worker is not ready: one line per cause,
#: ``"<service>: <reason>"``; empty when ready.
NOT_READY_REASONS = "not_ready_reasons"

#: Seconds between refreshes of the services' status while the worker is not ready: readiness
#: is seen within this time, not one ``--status-interval`` later.
STARTING_STATUS_INTERVAL = 0.5


def _why_not_ready(name: str, status: dict[str, Any]) -> str:
    """What a registered service that says it is not ready gives as the cause."""
    if name == "cluster":
        ray_cluster = status.get("ray_cluster") or {}
        return str(ray_cluster.get("error") or "connected to the Ray head, no sample of the cluster yet")
    if name == "apps" and status.get("ray_error"):
        return str(status["ray_error"])
    return "registered but not ready yet"


def not_ready_reasons(registered: bool, services: dict[str, dict[str, Any]]) -> list[str]:
    """Why the worker is not ready: ``"<service>: <reason>"`` per service that is down or not
    ready (its log is ``logs/<service>.log``); empty when it is ready."""
    reasons = [] if registered else ["gateway: not registered yet"]
    for name, entry in services.items():
        if not entry.get("up"):
            error = entry.get("error") or "not checked yet"
            reasons.append(f"{name}: {entry.get('service_id', name)} is not reachable: {error}")
        elif not (entry.get("status") or {}).get("ready"):
            reasons.append(f"{name}: {_why_not_ready(name, entry.get('status') or {})}")
    return reasons


class GatewaySettings(ServiceSettings):
    status_interval: float = Field(
        2.0, gt=0, description="Seconds between background refreshes of the services' status."
    )
    call_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for an internal service before calling it down."
    )


class GatewayService(BioEngineService):
    name = "gateway"
    service_id = WORKER.service_id
    distribution = "gateway-svc"
    description = WORKER.description
    visibility = "public"
    settings_model = GatewaySettings
    settings: GatewaySettings

    def __init__(self, settings: GatewaySettings):
        super().__init__(settings)
        self._proxies: dict[str, Any] = {}
        self._services: dict[str, dict[str, Any]] = {
            name: {"service_id": sid, "up": False, "error": "not checked yet", "checked_at": None}
            for name, sid in BACKENDS.items()
        }
        #: Wall-clock time since when the worker is ready without a break; None when not ready.
        self.ready_since: float | None = None

    # ---- calling the internal services -------------------------------------------------------------
    async def _proxy(self, name: str) -> Any:
        if name not in self._proxies:
            self._proxies[name] = await self.get_internal_service(BACKENDS[name])
        return self._proxies[name]

    async def call(
        self, name: str, method: str, context: Any = None, *, call_timeout: float | None = None, **kwargs: Any
    ) -> Any:
        """Call ``method`` of internal service ``name``, forwarding the caller of ``context``.

        A cached proxy whose service restarted is dropped and the call is made once more with a
        fresh one (the call never reached the service, so this is safe for any method). A call
        that times out is not repeated: it may be running.
        """
        if context is not None:
            kwargs["caller"] = forwarded_caller(context)
        timeout = call_timeout or self.settings.call_timeout
        for attempt in (1, 2):
            try:
                proxy = await self._proxy(name)
            except Exception as exc:
                raise ServiceUnavailable(f"{BACKENDS[name]} is not available: {error_summary(exc)}") from exc
            try:
                # Plain: the answer goes on to the caller (or into get_status), and hypha-rpc
                # encodes its own result proxies far slower than dicts.
                return plain(await within(getattr(proxy, method)(**kwargs), timeout))
            except TimeoutError as exc:
                raise ServiceUnavailable(
                    f"{BACKENDS[name]}.{method} did not answer within {timeout:g} s"
                ) from exc
            except Exception as exc:
                if not _is_stale_proxy(exc):
                    # The service's own error (PermissionDenied, NotFound, ...) goes on as the same
                    # type with its one line, not as its traceback inside the gateway's.
                    known = from_remote(exc)
                    if known is not None:
                        raise known from None
                    raise
                self._proxies.pop(name, None)
                if attempt == 2:
                    raise ServiceUnavailable(
                        f"{BACKENDS[name]} is not available: {error_summary(exc)}"
                    ) from exc
        raise AssertionError("unreachable")

    async def _refresh(self, name: str) -> None:
        entry = self._services[name]
        try:
            status = await self.call(name, "get_status")
            entry.update(up=True, error=None, status=status)
        except Exception as exc:
            entry.update(up=False, error=error_summary(exc), status=None)
        entry["checked_at"] = time.time()

    async def monitor(self) -> None:
        while True:
            await asyncio.gather(*(self._refresh(name) for name in BACKENDS))
            ready = self.is_ready()
            await asyncio.sleep(
                self.settings.status_interval
                if ready
                else min(self.settings.status_interval, STARTING_STATUS_INTERVAL)
            )

    def readiness(self) -> list[str]:
        """Why the worker is not ready (empty when it is: registered, and every internal service
        up and ready). Also keeps ``ready_since`` (when it last became ready)."""
        reasons = not_ready_reasons(self.ready, self._services)
        if reasons:
            self.ready_since = None
        elif self.ready_since is None:
            self.ready_since = time.time()
        return reasons

    def is_ready(self) -> bool:
        return not self.readiness()

    # ---- the dashboard page ----------------------------------------------------------------------
    def dashboard_url(self) -> str:
        """Where Hypha serves this worker's dashboard page (the server's public URL)."""
        config = getattr(self.hypha.server, "config", None)
        public = config.get("public_base_url") if isinstance(config, dict) else None
        return dashboard_url(str(public or self.settings.server_url), self.settings.workspace)

    def dashboard_config(self) -> dict[str, Any]:
        """``config.json`` of the page: the full id of this gateway's service, so the page calls
        this worker and no look-alike registered under the same name."""
        return {
            "workspace": self.settings.workspace,
            "worker_service_id": f"{self.settings.workspace}/{self.hypha.client_id}:{self.service_id}",
        }

    async def start(self) -> None:
        await super().start()
        # Served by the Hypha server over HTTP (no port of ours); the page reads the public API
        # with the viewer's own token. A failure leaves the API itself up.
        try:
            await self.hypha.register(dashboard_service(self.dashboard_config))
        except Exception as exc:
            self.logger.error("The dashboard page could not be registered: %s", error_summary(exc))

    # ---- public API ------------------------------------------------------------------------------
    def _is_admin_context(self, context: Any) -> bool:
        user = (context or {}).get("user") or {}
        return bool(user) and is_authorized(user, self.admin_users)

    @worker.get_status.implementation
    async def get_status(self, context: dict | None = None) -> dict:
        now = time.time()
        cluster = self._services["cluster"].get("status") or {}
        reasons = self.readiness()
        status: dict[str, Any] = {
            "service_start_time": self.started_at,
            "service_uptime": now - self.started_at if self.started_at else 0.0,
            "bioengine_version": self.version,
            "worker_mode": cluster.get("mode"),
            "workspace": self.settings.workspace,
            "client_id": self.hypha.client_id,
            "hypha": self.hypha.status(),
            "ray_version": (cluster.get("ray_cluster") or {}).get("ray_version"),
            "ray_cluster": ray_cluster_for(cluster.get("ray_cluster"), self._is_admin_context(context)),
            "dashboard_url": self.dashboard_url(),
            "services": {name: _without_ray_cluster(entry) for name, entry in self._services.items()},
            "is_ready": not reasons,
            "ready_since": self.ready_since,
            NOT_READY_REASONS: reasons,
        }
        # Admin ids and emails are not for everyone's eyes (the public worker leaks them).
        if self._is_admin_context(context):
            status["admin_users"] = list(self.admin_users)
        return status

    @worker.check_access.implementation
    async def check_access(self, context: dict | None = None) -> bool:
        return self._is_admin_context(context)

    @worker.get_logs.implementation
    async def get_logs(self, tail: int, context: dict | None = None) -> dict:
        # Admin only: the contract's rule, applied by ``implementation``.
        logs: dict[str, Any] = {"gateway": await super().get_logs(tail=tail, context=context)}

        async def one(name: str) -> None:
            try:
                logs[name] = await self.call(name, "get_logs", context, tail=tail)
            except Exception as exc:
                logs[name] = [f"unavailable: {error_summary(exc)}"]

        await asyncio.gather(*(one(name) for name in BACKENDS))
        return logs

    @worker.stop_worker.implementation
    async def stop_worker(self, blocking: bool, context: dict | None = None) -> None:
        user = (context or {}).get("user") or {}  # an admin: the contract's rule was applied
        self.logger.info("stop_worker requested by %s", user.get("email") or user.get("id"))
        # Answer first, then stop: the reply must leave before the connection closes.
        asyncio.get_running_loop().call_later(0.2, self.request_stop, EXIT_WORKER_STOP)


def forwarder(contract: MethodContract) -> Callable[..., Any]:
    """The gateway's method for a contract an internal service implements: the admin rule, then
    the call with the original caller, the caller's callbacks relayed, the contract's timeout."""

    async def forward(self: GatewayService, *args: Any, **kwargs: Any) -> Any:
        arguments, context = contract.call_arguments((self, *args), kwargs)
        if contract.requires_admin(arguments):
            check_permissions(context, self.admin_users, f"'{contract.name}' (admin only)")
        for name in contract.callbacks:
            arguments[name] = _relay(arguments[name])
        return await self.call(
            contract.service,
            contract.name,
            context,
            call_timeout=contract.timeout.for_call(arguments),
            **contract.given(arguments),
        )

    return contract.as_method(forward, caller=False)


# Every method an internal service implements is forwarded as its contract says.
for _contract in WORKER:
    if _contract.forwarded:
        setattr(GatewayService, _contract.name, forwarder(_contract))
