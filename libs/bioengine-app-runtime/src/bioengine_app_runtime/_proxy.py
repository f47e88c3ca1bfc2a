"""``BioEngineProxy``: the ingress deployment that exposes an app as its own Hypha service.

Each replica connects to Hypha with the app's token (read from the KV store, so apps-svc can
renew it) and registers service ``<application_id>`` with one function per schema method of
the entry deployment. A call is checked against the per-method ``authorized_users`` rules,
bounded by ``max_ongoing_requests`` and forwarded through a Serve ``DeploymentHandle``. It runs
inside Ray, so apps keep answering while apps-svc restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from ray import serve

from bioengine_common import is_authorized

from . import _kv
from ._spec import AppSpec, MethodSpec

logger = logging.getLogger("ray.serve")

#: Seconds a replica may take to register before its health check fails.
REGISTER_GRACE_S = 120.0


def method_rule(authorized_users: dict[str, list[str]], method: str) -> list[str]:
    """The users allowed to call ``method``: its own rule, else the ``*`` rule, else nobody."""
    if method in authorized_users:
        return list(authorized_users[method])
    return list(authorized_users.get("*", []))


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=10, health_check_timeout_s=30)
class BioEngineProxy:
    async def __init__(self, entry: Any, spec: dict[str, Any]):  # type: ignore[misc]
        self.entry = entry
        self.spec = AppSpec.model_validate(spec)
        self.ongoing = 0
        self.semaphore = asyncio.Semaphore(max(self.spec.max_ongoing_requests, 1))
        self.server: Any = None
        self.service_id: str | None = None
        self.error: str | None = None
        self.started = time.monotonic()
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.client_id = f"{self.spec.application_id}-{self.replica_id}"
        self._registering = asyncio.get_running_loop().create_task(self._register())

    # ---- Hypha -----------------------------------------------------------------------------------
    def _function(self, method: MethodSpec) -> Any:
        rule = method_rule(self.spec.authorized_users, method.name)
        target = getattr(self.entry, method.name)  # one handle method per exposed method

        async def call(*args: Any, context: dict | None = None, **kwargs: Any) -> Any:
            user = (context or {}).get("user") or {}
            if not is_authorized(user, rule):
                who = user.get("email") or user.get("id") or "anonymous"
                raise PermissionError(
                    f"User '{who}' may not call '{method.name}' of app '{self.spec.application_id}'"
                )
            if method.accepts_context:
                kwargs["context"] = context
            async with self.semaphore:
                self.ongoing += 1
                try:
                    return await target.remote(*args, **kwargs)
                finally:
                    self.ongoing -= 1

        call.__name__ = method.name
        if method.json_schema:
            call.__schema__ = method.json_schema  # type: ignore[attr-defined]
        return call

    def service_api(self) -> dict[str, Any]:
        api: dict[str, Any] = {
            "id": self.spec.application_id,
            "name": self.spec.application_id,
            "type": "bioengine-app",
            "description": f"BioEngine app '{self.spec.application_id}' ({self.spec.artifact_id})",
            "config": {"visibility": "public", "require_context": True},
        }
        for method in self.spec.methods:
            api[method.name] = self._function(method)

        def get_load(context: dict | None = None) -> float:
            """Share of max_ongoing_requests in use (0-1), for Hypha's load balancing."""
            return self.ongoing / max(self.spec.max_ongoing_requests, 1)

        api["get_load"] = get_load
        return api

    async def _register(self) -> None:
        from hypha_rpc import connect_to_server

        delay = 1.0
        while self.service_id is None:
            try:
                secrets = await asyncio.to_thread(_kv.get_json, _kv.secrets_key(self.spec.application_id))
                token = (secrets or {}).get("proxy_token")
                self.server = await asyncio.wait_for(
                    connect_to_server(
                        {
                            "server_url": self.spec.server_url,
                            "workspace": self.spec.workspace,
                            "token": token,
                            "client_id": self.client_id,
                        }
                    ),
                    30,
                )
                info = await self.server.register_service(self.service_api(), {"overwrite": True})
                self.service_id, self.error = str(info["id"]), None
                logger.info("Registered Hypha service %s", self.service_id)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "Registering the Hypha service failed (%s); retrying in %.0f s", self.error, delay
                )
                if self.server is not None:
                    with contextlib.suppress(Exception):
                        await self.server.disconnect()
                    self.server = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # ---- Serve ---------------------------------------------------------------------------------
    async def check_health(self) -> None:
        if self.service_id is None and time.monotonic() - self.started > REGISTER_GRACE_S:
            raise RuntimeError(f"not registered on Hypha after {REGISTER_GRACE_S:.0f} s: {self.error}")

    async def get_info(self) -> dict[str, Any]:
        """For apps-svc's status: the Hypha service id of this replica and its last error."""
        return {
            "replica_id": self.replica_id,
            "websocket_service_id": self.service_id,
            "webrtc_service_id": None,
            "error": self.error,
            "ongoing": self.ongoing,
            "pid": os.getpid(),
        }

    async def __del__(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.disconnect()
