"""``BioEngineProxy``: the ingress deployment that exposes an app as its own Hypha service.

Each replica connects to Hypha with the app's token (read from the KV store, so apps-svc can
renew it) and registers service ``<application_id>`` with one function per schema method of
the entry deployment. A call is checked against the per-method ``authorized_users`` rules,
bounded by ``max_ongoing_requests`` (a 0.6.0 app's proxy refuses a call over it at once, as the
public worker's does; the older format's waits for a free slot) and forwarded through a Serve ``DeploymentHandle``. It runs
inside Ray, so apps keep answering while apps-svc restarts. Rules, limit and methods are the
deployment's Serve ``user_config``: an update of them reaches the running replica through
``reconfigure`` (new methods are registered again on the same connection), so the app keeps
its replica and its Hypha service id.

Hypha outages: hypha-rpc reconnects and registers the service again by itself. A watch makes
sure of it: when hypha-rpc gives up (the server refused the reconnect), when the connection
stays down while the server answers its readiness check, or when the service is missing after
a reconnect, the replica drops the connection and connects and registers anew, with backoff
(1 s doubling to 30 s). The app keeps serving through Ray (handle calls) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from ray import serve

from bioengine_common import connect, continue_trace, is_authorized

from . import kv
from ._spec import PROXY_CONFIG_FIELDS, MethodSpec, ProxySpec

logger = logging.getLogger("ray.serve")

#: Seconds a replica may take to register before its health check fails.
REGISTER_GRACE_S = 120.0
#: Backoff between fresh connections: 1 s doubling to this.
RECONNECT_MAX_DELAY_S = 30.0
#: How often the watch looks at the connection.
WATCH_INTERVAL_S = 2.0
#: A connection down this long while the server is ready is replaced by a fresh one (hypha-rpc
#: alone waits up to 60 s between its tries).
STALE_AFTER_S = 10.0


def hypha_rpc_gave_up(server: Any) -> bool:
    """hypha-rpc stopped reconnecting (the server refused it); it keeps no public flag."""
    connection = getattr(getattr(server, "rpc", None), "_connection", None)
    return bool(getattr(connection, "_closed", False))


def socket_open(server: Any) -> bool:
    connection = getattr(getattr(server, "rpc", None), "_connection", None)
    websocket = getattr(connection, "_websocket", None)
    return websocket is not None and getattr(getattr(websocket, "state", None), "name", "") == "OPEN"


def watch_verdict(gave_up: bool, is_open: bool, down_for: float | None, server_ready: bool) -> str | None:
    """Why a connection must be replaced by a fresh one, or None to leave it to hypha-rpc."""
    if gave_up:
        return "hypha-rpc gave up reconnecting to the Hypha server"
    if not is_open and down_for is not None and down_for >= STALE_AFTER_S and server_ready:
        return f"the Hypha connection has been down for {down_for:.0f} s while the server is ready"
    return None


def method_rule(authorized_users: dict[str, list[str]], method: str) -> list[str]:
    """The users allowed to call ``method``: its own rule, else the ``*`` rule, else nobody."""
    if method in authorized_users:
        return list(authorized_users[method])
    return list(authorized_users.get("*", []))


@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=10, health_check_timeout_s=30)
class BioEngineProxy:
    async def __init__(self, entry: Any, spec: dict[str, Any]):  # type: ignore[misc]
        self.entry = entry
        self.spec = ProxySpec.model_validate(spec)
        self.ongoing = 0
        self.semaphore = asyncio.Semaphore(max(self.spec.max_ongoing_requests, 1))
        self.server: Any = None
        self.service_id: str | None = None
        self.error: str | None = None
        self.connected = False
        self.registrations = 0
        self.started = time.monotonic()
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.client_id = f"{self.spec.application_id}-{self.replica_id}"
        self._registering = asyncio.get_running_loop().create_task(self._register())

    # ---- Hypha -----------------------------------------------------------------------------------
    def _function(self, method: MethodSpec) -> Any:
        target = getattr(self.entry, method.name)  # one handle method per exposed method

        async def call(*args: Any, context: dict | None = None, **kwargs: Any) -> Any:
            user = (context or {}).get("user") or {}
            # The rule of the moment: reconfigure may have changed it since registration.
            if not is_authorized(user, method_rule(self.spec.authorized_users, method.name)):
                who = user.get("email") or user.get("id") or "anonymous"
                raise PermissionError(
                    f"User '{who}' may not call '{method.name}' of app '{self.spec.application_id}'"
                )
            if method.accepts_context:
                kwargs["context"] = context
            if self.spec.refuse_when_full and self.ongoing >= self.spec.max_ongoing_requests:
                raise RuntimeError(
                    f"App '{self.spec.application_id}' is busy: it is running its maximum of "
                    f"{self.spec.max_ongoing_requests} concurrent requests (max_ongoing_requests); "
                    "try again later"
                )
            async with self.semaphore:
                self.ongoing += 1
                try:
                    # A trace per app call (exported when Serve's tracing is on, see
                    # bioengine_common.tracing); Serve carries it into the replica.
                    with continue_trace(
                        f"app.{method.name}", None, **{"bioengine.app": self.spec.application_id}
                    ):
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
        """Connect and register, then watch the connection; start over (with backoff) whenever
        the connection is gone for good. Runs for the replica's life."""
        delay = 1.0
        while True:
            try:
                await self._connect_and_register()
                delay = 1.0
                reason = await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self.connected, self.error = False, reason
            logger.warning(
                "Hypha service of the app unavailable (%s); connecting anew in %.0f s", reason, delay
            )
            await self._drop_connection()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

    async def _connect_and_register(self) -> None:
        # The token is read each time: apps-svc renews it in the KV store.
        secrets = await asyncio.to_thread(kv.get_json, kv.secrets_key(self.spec.application_id))
        token = (secrets or {}).get("proxy_token")
        self.server = await connect(
            self.spec.server_url,
            workspace=self.spec.workspace,
            token=token,
            client_id=self.client_id,
            timeout=30,
        )
        info = await self.server.register_service(self.service_api(), {"overwrite": True})
        self.service_id, self.error, self.connected = str(info["id"]), None, True
        self.registrations += 1
        logger.info("Registered Hypha service %s", self.service_id)

    async def _drop_connection(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.disconnect(), 5)

    async def _server_ready(self) -> bool:
        import urllib.request

        base = self.spec.server_url.rstrip("/")
        base = "http" + base[2:] if base.startswith("ws") else base

        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/health/readiness", timeout=3) as response:
                    return bool(response.status == 200)
            except (OSError, ValueError):
                return False

        return await asyncio.to_thread(probe)

    async def _watch(self) -> str:
        """Return why the connection must be replaced; never while hypha-rpc copes by itself."""
        down_since: float | None = None
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            is_open = socket_open(self.server)
            if not is_open:
                down_since = down_since or time.monotonic()
                self.connected = False
                self.error = "Hypha connection lost; reconnecting"
            elif down_since is not None:
                # hypha-rpc reconnected and registered the service again: check that it did.
                down_since = None
                try:
                    await asyncio.wait_for(self.server.get_service_info(self.service_id), 10)
                except Exception as exc:
                    return f"the service is missing after a reconnect ({type(exc).__name__}: {exc})"
                self.connected, self.error = True, None
                logger.info("Hypha connection back; service %s registered", self.service_id)
            down_for = None if down_since is None else time.monotonic() - down_since
            stale = down_for is not None and down_for >= STALE_AFTER_S
            verdict = watch_verdict(
                hypha_rpc_gave_up(self.server), is_open, down_for, stale and await self._server_ready()
            )
            if verdict:
                return verdict

    # ---- Serve ---------------------------------------------------------------------------------
    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's user_config: take on new access rules, call limit and methods in place."""
        given = {k: v for k, v in config.items() if k in PROXY_CONFIG_FIELDS}
        new = ProxySpec.model_validate({**self.spec.model_dump(), **given})
        if new == self.spec:
            return
        methods_changed = new.methods != self.spec.methods
        if new.max_ongoing_requests != self.spec.max_ongoing_requests:
            # Calls in flight finish under the old limit; new calls take the new one.
            self.semaphore = asyncio.Semaphore(max(new.max_ongoing_requests, 1))
        self.spec = new
        logger.info("Proxy of app %s reconfigured in place", new.application_id)
        if methods_changed and self.connected and self.server is not None:
            try:
                await self.server.register_service(self.service_api(), {"overwrite": True})
            except Exception as exc:  # the watch connects anew if the connection is gone
                self.error = f"registering the new methods failed: {type(exc).__name__}: {exc}"
                logger.warning("%s", self.error)

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
            "connected": self.connected,
            "registrations": self.registrations,
            "ongoing": self.ongoing,
            "pid": os.getpid(),
        }

    async def __del__(self) -> None:
        self._registering.cancel()
        await self._drop_connection()
