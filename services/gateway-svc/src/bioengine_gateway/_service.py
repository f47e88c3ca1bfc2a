"""The public ``bioengine-worker`` service: one API composed from the internal services.

Status of the internal services is refreshed in the background and served from a cache, so a
``get_status`` call never fans out; a service that is down is reported with its error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypha_rpc.utils.schema import schema_method
from pydantic import Field

from bioengine_common import (
    BioEngineService,
    ServiceSettings,
    ServiceUnavailable,
    check_permissions,
    error_summary,
    forwarded_caller,
    is_authorized,
)

#: Internal services the gateway composes: short name -> Hypha service id.
BACKENDS = {
    "cluster": "bioengine-cluster",
    "apps": "bioengine-apps",
    "datasets": "bioengine-datasets",
}


class GatewaySettings(ServiceSettings):
    status_interval: float = Field(
        2.0, gt=0, description="Seconds between background refreshes of the services' status."
    )
    call_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for an internal service before calling it down."
    )


class GatewayService(BioEngineService):
    name = "gateway"
    service_id = "bioengine-worker"
    distribution = "gateway-svc"
    description = "BioEngine worker: run bioimage AI apps, datasets and code on this worker's compute."
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

    # ---- calling the internal services -------------------------------------------------------------
    async def _proxy(self, name: str) -> Any:
        if name not in self._proxies:
            self._proxies[name] = await self.hypha.get_service(BACKENDS[name])
        return self._proxies[name]

    async def call(self, name: str, method: str, context: Any = None, **kwargs: Any) -> Any:
        """Call ``method`` of internal service ``name``, forwarding the caller of ``context``.

        A cached proxy that fails because its service restarted is dropped and the call is tried
        once more with a fresh one; a service that is down raises :class:`ServiceUnavailable`.
        """
        if context is not None:
            kwargs["caller"] = forwarded_caller(context)
        for attempt in (1, 2):
            try:
                proxy = await self._proxy(name)
            except Exception as exc:
                raise ServiceUnavailable(f"{BACKENDS[name]} is not available: {error_summary(exc)}") from exc
            try:
                return await asyncio.wait_for(
                    getattr(proxy, method)(**kwargs), timeout=self.settings.call_timeout
                )
            except (TimeoutError, ConnectionError, KeyError) as exc:
                self._proxies.pop(name, None)
                if attempt == 2:
                    raise ServiceUnavailable(
                        f"{BACKENDS[name]} did not answer: {error_summary(exc)}"
                    ) from exc
            except Exception as exc:
                if "not connected" in str(exc) or "Service not found" in str(exc):
                    self._proxies.pop(name, None)
                    if attempt == 1:
                        continue
                raise
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
            await asyncio.sleep(self.settings.status_interval)

    # ---- public API ------------------------------------------------------------------------------
    def _is_admin_context(self, context: Any) -> bool:
        user = (context or {}).get("user") or {}
        return bool(user) and is_authorized(user, self.admin_users)

    @schema_method
    async def get_status(self, context: dict | None = None) -> dict:
        """Status of the worker: versions, uptime, readiness and each internal service (up or down, with the error)."""
        now = time.time()
        cluster = self._services["cluster"].get("status") or {}
        status: dict[str, Any] = {
            "service_start_time": self.started_at,
            "service_uptime": now - self.started_at if self.started_at else 0.0,
            "bioengine_version": self.version,
            "worker_mode": cluster.get("mode"),
            "workspace": self.settings.workspace,
            "client_id": self.hypha.client_id,
            "services": {name: dict(entry) for name, entry in self._services.items()},
            "is_ready": self.ready and all(e["up"] for e in self._services.values()),
        }
        # Admin ids and emails are not for everyone's eyes (the public worker leaks them).
        if self._is_admin_context(context):
            status["admin_users"] = list(self.admin_users)
        return status

    @schema_method
    async def check_access(self, context: dict | None = None) -> bool:
        """Whether the caller is an admin of this worker. Never raises."""
        return self._is_admin_context(context)

    @schema_method
    async def get_logs(
        self,
        tail: int = Field(100, description="Number of lines from the end of each log.", ge=1, le=10000),
        context: dict | None = None,
    ) -> dict:
        """The last lines of each service's log, keyed by service (admin only)."""
        check_permissions(context, self.admin_users, "'get_logs' (admin only)")
        logs: dict[str, Any] = {"gateway": await super().get_logs(tail=tail, context=context)}

        async def one(name: str) -> None:
            try:
                logs[name] = await self.call(name, "get_logs", context, tail=tail)
            except Exception as exc:
                logs[name] = [f"unavailable: {error_summary(exc)}"]

        await asyncio.gather(*(one(name) for name in BACKENDS))
        return logs
