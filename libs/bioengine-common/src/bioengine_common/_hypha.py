"""One Hypha connection per process: connect, register services, notice when it is gone."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import urllib.request
from collections.abc import Collection, Mapping
from typing import Any

from hypha_rpc import connect_to_server

from . import _heartbeat, _trusted_context
from ._aio import within
from ._settings import ServiceSettings
from .errors import ConnectionLost, ServiceUnavailable, error_summary

__all__ = ["HyphaConnection", "connect", "plain", "trusted_service_id"]

#: Seconds between two tries of a Hypha server that is not listening yet.
SERVER_WAIT_POLL_S = 0.2


async def connect(
    server_url: str,
    *,
    workspace: str | None = None,
    token: str | None = None,
    client_id: str | None = None,
    method_timeout: float = 30.0,
    timeout: float = 20.0,
) -> Any:
    """Connect to a Hypha server; failures become :class:`ServiceUnavailable` with the reason.

    Every connection of the process takes the context of a call only from what the Hypha
    server stamps on it (see :mod:`bioengine_common._trusted_context`), and its methods send no
    heartbeat when they end within half the caller's timeout (:mod:`bioengine_common._heartbeat`).
    """
    _trusted_context.install()
    _heartbeat.install()
    config: dict[str, Any] = {"server_url": server_url, "method_timeout": method_timeout}
    if workspace:
        config["workspace"] = workspace
    if token:
        config["token"] = token
    if client_id:
        config["client_id"] = client_id
    try:
        server = await within(connect_to_server(config), timeout)
    except TimeoutError as exc:
        raise ServiceUnavailable(f"Hypha server {server_url} did not answer within {timeout:.0f} s") from exc
    except ConnectionAbortedError as exc:
        # The server refused us: bad or expired token, or no access to the workspace.
        raise ServiceUnavailable(f"Hypha server {server_url} refused the connection: {exc}") from exc
    except OSError as exc:
        raise ServiceUnavailable(f"Cannot reach the Hypha server at {server_url}: {exc}") from exc
    _retarget_on_every_reconnect(server)
    return server


def plain(value: Any) -> Any:
    """A remote call's result as plain dicts and lists. hypha-rpc hands results over as
    ``ObjectProxy`` (a ``dict`` subclass with attribute access on every lookup), which it then
    encodes about ten times slower than a plain dict when the result is passed on: the gateway
    spent half its time on that in each ``get_status``."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def _retarget_on_every_reconnect(server: Any) -> None:
    """Make the workspace-manager proxy follow the server across its first restart too.

    A restarted server has a new manager id. hypha-rpc (0.21.47) retargets the proxy returned
    by ``connect_to_server`` on each ``manager_refreshed`` event but skips the first one as "the
    initial connection"; that event fires before the proxy subscribes, so the skipped one is
    the first reconnect, after which every call (``echo``, ``get_service``, ``generate_token``)
    times out against the old manager. One event fired now uses up the skip; where the skip is
    already used up it retargets to the current manager, which changes nothing.
    """
    fire = getattr(getattr(server, "rpc", None), "_fire", None)
    if callable(fire):
        fire("manager_refreshed", {"manager": None})


def _registered_by(info: Mapping[str, Any]) -> str | None:
    return ((info.get("config") or {}).get("created_by") or {}).get("id")


async def trusted_service_id(
    server: Any, workspace: str, service_id: str, trusted_users: Collection[str]
) -> str:
    """The full id of one replica of ``service_id`` (``name`` or ``client:name``) in ``workspace``
    registered by a user in ``trusted_users``; :class:`ServiceUnavailable` naming the other
    registrants if none is."""
    client, _, name = service_id.rpartition(":")
    listed = await server.list_services({"workspace": workspace, "service_id": name})
    same_id = [info for info in listed if _matches(str(info.get("id", "")), client, name)]
    trusted = [i for i in same_id if _registered_by(i) in trusted_users]
    if trusted:
        return str(random.choice(trusted)["id"])
    if same_id:
        strangers = ", ".join(sorted({str(_registered_by(i)) for i in same_id}))
        raise ServiceUnavailable(
            f"{service_id} is registered in '{workspace}' only by users this worker does not "
            f"trust ({strangers}); not calling it"
        )
    raise ServiceUnavailable(f"{service_id} not found: no client of '{workspace}' registers it")


def _matches(full_id: str, client: str, name: str) -> bool:
    """Whether ``workspace/client_id:name@app`` is service ``name`` (of ``client`` if given)."""
    full_client, _, full_name = full_id.split("/", 1)[-1].partition(":")
    return full_name.split("@", 1)[0] == name and (not client or full_client == client)


class HyphaConnection:
    """A service process's link to Hypha.

    hypha-rpc reconnects and re-registers every service by itself after a server outage, but
    its retry delays double up to 60 s, so a server back after a long outage could wait a
    minute for its clients. :meth:`watch` probes the connection, keeps :meth:`status` true to
    it, and once the server answers its readiness check again while hypha-rpc is only waiting
    for its next try, reconnects at once. Losing Hypha never stops the process by itself:
    only hypha-rpc giving up (the server refused the reconnect) or an outage longer than a
    positive ``reconnect_timeout`` end in :class:`ConnectionLost`.
    """

    #: How often a lost connection is reported again while it stays lost.
    REPORT_EVERY = 30.0

    def __init__(self, settings: ServiceSettings, service_name: str, logger: logging.Logger):
        self.settings = settings
        self.logger = logger
        self.client_id = settings.client_id or f"{service_name}-{secrets.token_hex(4)}"
        self.server: Any = None
        self.user: dict[str, Any] = {}
        self.connected = False
        #: When the current outage began (wall clock), or ``None`` while connected.
        self.down_since: float | None = None
        self.last_error: str | None = None
        #: Outages this process has come back from.
        self.reconnects = 0

    @property
    def workspace(self) -> str:
        return self.settings.workspace

    async def connect(self) -> Any:
        """Connect; a server that is not listening yet (starting beside this service) is tried
        again every :data:`SERVER_WAIT_POLL_S` for ``server_wait`` seconds."""
        deadline = time.monotonic() + self.settings.server_wait
        # hypha-rpc logs each failed try as an error of its own: a refused try is expected
        # here, and any other failure is raised below with its reason.
        rpc_logger = logging.getLogger("websocket-client")
        level, waiting = rpc_logger.level, False
        rpc_logger.setLevel(logging.CRITICAL)
        try:
            while True:
                try:
                    self.server = await connect(
                        self.settings.server_url,
                        workspace=self.settings.workspace,
                        token=self.settings.token_value(),
                        client_id=self.client_id,
                    )
                    break
                except ServiceUnavailable as exc:
                    # Refused at the TCP level: nothing listens on the port (yet).
                    if not isinstance(exc.__cause__, ConnectionRefusedError) or time.monotonic() >= deadline:
                        raise
                    if not waiting:
                        waiting = True
                        self.logger.info(
                            "Waiting up to %.0f s for the Hypha server at %s to listen",
                            self.settings.server_wait,
                            self.settings.server_url,
                        )
                    await asyncio.sleep(SERVER_WAIT_POLL_S)
        finally:
            rpc_logger.setLevel(level)
        self.connected, self.down_since, self.last_error = True, None, None
        user = self.server.config.get("user") or {}
        self.user = {k: user.get(k) for k in ("id", "email", "is_anonymous")}
        self.logger.info(
            "Connected to %s as user '%s' in workspace '%s' (client '%s')",
            self.settings.server_url,
            self.user.get("id"),
            self.workspace,
            self.client_id,
        )
        return self.server

    async def register(self, service: Mapping[str, Any]) -> str:
        info = await self.server.register_service(dict(service), {"overwrite": True})
        self.logger.info("Registered service %s", info["id"])
        return str(info["id"])

    async def get_service(self, service_id: str, trusted_users: Collection[str]) -> Any:
        """A proxy to another service of the workspace (any one replica if several run),
        registered by one of ``trusted_users``: the server stamps the registering user into
        ``config.created_by``, and any member with write access could register a service under
        the same id to intercept the calls meant for ours."""
        return await self.server.get_service(
            await trusted_service_id(self.server, self.workspace, service_id, trusted_users)
        )

    def status(self) -> dict[str, Any]:
        """The connection as :meth:`watch` last saw it, for ``get_status``."""
        return {
            "server_url": self.settings.server_url,
            "connected": self.connected,
            "down_since": self.down_since,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
        }

    # hypha-rpc keeps no public record of its connection state; these read its websocket
    # connection object (hypha-rpc is pinned, and tests restart a real server under it).
    def _connection(self) -> Any:
        return getattr(getattr(self.server, "rpc", None), "_connection", None)

    def _closed(self) -> bool:
        # Set when hypha-rpc stops reconnecting (the server refused it); there is no event.
        return bool(getattr(self._connection(), "_closed", False))

    def _socket_open(self) -> bool | None:
        """Whether the websocket is open; None when this hypha-rpc does not say."""
        connection = self._connection()
        if connection is None or not hasattr(connection, "_websocket"):
            return None
        websocket = connection._websocket
        return websocket is not None and getattr(getattr(websocket, "state", None), "name", "") == "OPEN"

    async def _server_ready(self) -> bool:
        base = self.settings.server_url.rstrip("/")
        base = "http" + base[2:] if base.startswith("ws") else base
        url = f"{base}/health/readiness"

        def probe() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except (OSError, ValueError):
                return False

        return await asyncio.to_thread(probe)

    async def _reconnect_now(self) -> bool:
        """Reconnect at once if hypha-rpc is only sleeping between tries; whether it did.

        hypha-rpc's own retry loop ends when its sleep is cancelled; from then on this watch
        is the retry loop (one try per probe while the server says it is ready). Opening the
        connection re-registers every service, as hypha-rpc's own reconnect does.
        """
        connection = self._connection()
        if connection is None or self._closed() or self._socket_open() is not False:
            return False
        tasks = [t for t in getattr(connection, "_reconnect_tasks", ()) if not t.done()]
        sleeping = [t for t in tasks if getattr(t.get_coro(), "__name__", "") == "sleep"]
        if tasks and not sleeping:
            return False  # hypha-rpc is trying right now
        if not await self._server_ready():
            return False
        for task in sleeping:
            task.cancel()
        await asyncio.sleep(0)
        if self._socket_open():
            return True
        await within(connection.open(), 30)
        return True

    async def watch(self, interval: float = 2.0, down_interval: float = 1.0) -> None:
        """Return never; keep :attr:`connected` true to the connection, hurry reconnects, and
        raise :class:`ConnectionLost` once the connection is gone for good."""
        last_ok = time.monotonic()
        last_report = 0.0
        while True:
            await asyncio.sleep(interval if self.connected else down_interval)
            if self._closed():
                self.connected = False
                raise ConnectionLost("hypha-rpc gave up reconnecting to the Hypha server")
            try:
                if not self.connected:
                    await self._reconnect_now()
                if self._socket_open() is False:  # no need to wait for a ping to time out
                    raise ConnectionError("the websocket to the Hypha server is closed")
                await within(self.server.echo("ping"), 5.0)
            except Exception as exc:  # any failure counts; only its duration matters
                now = time.monotonic()
                if self.connected:
                    self.connected, self.down_since = False, time.time()
                    self.logger.warning("Hypha connection lost: %s", error_summary(exc))
                    last_report = now
                elif now - last_report >= self.REPORT_EVERY:
                    self.logger.warning(
                        "Hypha unreachable for %.0f s, still trying: %s", now - last_ok, error_summary(exc)
                    )
                    last_report = now
                self.last_error = error_summary(exc)
                limit = self.settings.reconnect_timeout
                if limit and now - last_ok > limit:
                    raise ConnectionLost(
                        f"no working Hypha connection for {now - last_ok:.0f} s (limit {limit:.0f} s)"
                    ) from exc
                continue
            if not self.connected:
                self.reconnects += 1
                self.logger.info(
                    "Hypha connection back after %.0f s; services registered again",
                    time.monotonic() - last_ok,
                )
            self.connected, self.down_since, self.last_error = True, None, None
            last_ok = time.monotonic()

    async def disconnect(self) -> None:
        if self.server is not None:
            try:
                await within(self.server.disconnect(), 5)
            except Exception as exc:  # shutting down anyway
                self.logger.debug("Disconnect failed: %s", exc)
            self.server = None
