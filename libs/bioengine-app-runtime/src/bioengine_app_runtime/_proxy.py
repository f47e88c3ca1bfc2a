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

WebRTC: next to it each replica registers ``<application_id>-rtc`` (:mod:`._rtc`), through
which a caller opens a peer connection and calls the same methods, checked the same way (as the
identity Hypha vouched for when the peer connection was offered) and within the same call
limit. Registering it may fail (aiortc missing, say): the replica then only warns, keeps its
websocket service and reports the reason (``webrtc_error``).

Hypha outages: hypha-rpc reconnects and registers the service again by itself. A watch makes
sure of it: when hypha-rpc gives up (the server refused the reconnect), when the connection
stays down while the server answers its readiness check, or when the service is missing after
a reconnect, the replica drops the connection and connects and registers anew, with backoff
(1 s doubling to 30 s). The app keeps serving through Ray (handle calls) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from typing import Any

from ray import serve

from bioengine_common import connect, continue_trace, is_authorized

from . import kv
from ._rtc import PeerConnections, ice_servers_for, rtc_service_name
from ._spec import PROXY_CONFIG_FIELDS, MethodSpec, ProxySpec

logger = logging.getLogger("ray.serve")


def import_in_thread(module: str) -> asyncio.Future[Any]:
    """Import ``module`` in a thread: awaiting the future gives it (or raises ImportError)."""
    return asyncio.ensure_future(asyncio.to_thread(importlib.import_module, module))


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
        self.peers = PeerConnections(self.spec.workspace, self.service_api, self._ice_servers)
        self.rtc_service_id: str | None = None
        self.rtc_error: str | None = None
        # aiortc's first import runs beside the Hypha connection (network waits), not after it.
        self._aiortc = import_in_thread("aiortc")
        self._registering = asyncio.get_running_loop().create_task(self._register())

    # ---- Hypha -----------------------------------------------------------------------------------
    def _function(self, method: MethodSpec, trusted: dict[str, Any] | None = None) -> Any:
        """The Hypha function of one method. ``trusted``: over WebRTC, the context every call is
        checked as (the caller of the peer connection's offer); over the websocket, None (the
        context Hypha gives each call)."""
        target = getattr(self.entry, method.name)  # one handle method per exposed method

        async def call(*args: Any, context: dict | None = None, **kwargs: Any) -> Any:
            if trusted is not None:
                context = trusted  # never what a peer's message says
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

    def service_api(self, trusted: dict[str, Any] | None = None) -> dict[str, Any]:
        """The app's service: over the websocket (``trusted`` None) or one WebRTC peer's."""
        api: dict[str, Any] = {
            "id": self.spec.application_id,
            "name": self.spec.application_id,
            "type": "bioengine-app",
            "description": f"BioEngine app '{self.spec.application_id}' ({self.spec.artifact_id})",
            "config": {"visibility": "public", "require_context": True},
        }
        for method in self.spec.methods:
            api[method.name] = self._function(method, trusted)

        def get_load(context: dict | None = None) -> float:
            """Share of max_ongoing_requests in use (0-1), for Hypha's load balancing."""
            return self.ongoing / max(self.spec.max_ongoing_requests, 1)

        def get_num_pcs(context: dict | None = None) -> int:
            """Number of open WebRTC peer connections of this replica."""
            return self.peers.count()

        def get_rtc_service_id(context: dict | None = None) -> str | None:
            """Id of this replica's WebRTC service (None when it is not registered)."""
            return self.rtc_service_id

        api["get_load"] = get_load
        api["get_num_pcs"] = get_num_pcs
        api["get_rtc_service_id"] = get_rtc_service_id
        return api

    async def _ice_servers(self) -> list[dict[str, Any]]:
        """deploy_app's ice_servers (kept with the app's secrets: TURN credentials), or the default."""
        secrets = await asyncio.to_thread(kv.get_json, kv.secrets_key(self.spec.application_id))
        return ice_servers_for((secrets or {}).get("ice_servers"), self.spec.server_url)

    async def _register_rtc(self) -> None:
        """Register ``<application_id>-rtc``; a failure only warns (the app stays reachable over
        the websocket) and is reported as ``webrtc_error``."""
        try:
            await self._aiortc  # imported in a thread meanwhile (about 0.35 s of CPU)

            info = await self.server.register_service(
                {
                    "id": rtc_service_name(self.spec.application_id),
                    "name": f"{self.spec.application_id} (WebRTC)",
                    "description": f"WebRTC peer connections to BioEngine app '{self.spec.application_id}'",
                    "config": {"visibility": "public", "require_context": True},
                    "offer": self.peers.offer,
                },
                {"overwrite": True},
            )
            self.rtc_service_id, self.rtc_error = str(info["id"]), None
            logger.info("Registered WebRTC service %s", self.rtc_service_id)
        except Exception as exc:
            self.rtc_service_id = None
            self.rtc_error = f"WebRTC service not registered: {type(exc).__name__}: {exc}"
            logger.warning("%s; the app stays reachable over the websocket", self.rtc_error)

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
        # Both services at once. The WebRTC one is registered (or its failure recorded) before
        # the websocket service id is published: apps-svc reports RUNNING on that id, and a
        # status must not show RUNNING with the WebRTC id still to come.
        rtc = asyncio.ensure_future(self._register_rtc())
        try:
            info = await self.server.register_service(self.service_api(), {"overwrite": True})
        except BaseException:
            rtc.cancel()  # not on a connection that is about to be dropped
            raise
        await rtc
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
        if methods_changed:
            self.peers.refresh()

    async def check_health(self) -> None:
        if self.service_id is None and time.monotonic() - self.started > REGISTER_GRACE_S:
            raise RuntimeError(f"not registered on Hypha after {REGISTER_GRACE_S:.0f} s: {self.error}")

    async def get_info(self) -> dict[str, Any]:
        """For apps-svc's status: the Hypha service id of this replica and its last error."""
        return {
            "replica_id": self.replica_id,
            "websocket_service_id": self.service_id,
            "webrtc_service_id": self.rtc_service_id,
            "webrtc_error": self.rtc_error,
            "webrtc_peers": self.peers.count(),
            "error": self.error,
            "connected": self.connected,
            "registrations": self.registrations,
            "ongoing": self.ongoing,
            "pid": os.getpid(),
        }

    async def __del__(self) -> None:
        self._registering.cancel()
        await self.peers.close_all()
        await self._drop_connection()
