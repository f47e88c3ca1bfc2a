"""WebRTC access to an app: the ``<application_id>-rtc`` service of each proxy replica.

A caller opens a peer connection with hypha-rpc's ``get_rtc_service(server, rtc_service_id)``
and then ``await peer.get_service(application_id)``: the same methods as the websocket service,
answered over the peer connection's data channel (the Hypha server only relays the offer).

Who the caller is. hypha-rpc's own answerer (``register_rtc_service``) hands the peer every
service of the websocket connection and gives each call the context that the peer's message
itself carries, which the peer can write as it likes (hypha-rpc keeps a ``ctx`` a message
brings). So the answerer here is our own, built from hypha-rpc's ``RPC`` over its
``WebRTCConnection``: the caller's identity is taken once, from the ``offer`` call, which
reaches the proxy through the Hypha server (its context is the one Hypha vouches for, as for
every websocket call), and every call over that peer connection is checked as that identity:
what the peer's messages say about the caller is ignored. The peer sees only the app's service.

ICE servers: the ``ice_servers`` given to ``deploy_app`` (apps-svc keeps them with the app's
secrets, since TURN credentials are secrets; read at each offer, so an update applies to the
next peer); with none, hypha-rpc's default STUN server, or none at all when the Hypha server is
on loopback (host candidates are all a peer on the same machine needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

logger = logging.getLogger("ray.serve")

__all__ = [
    "HYPHA_RPC_DEFAULT_ICE_SERVERS",
    "MAX_PEERS",
    "PeerConnections",
    "ice_servers_for",
    "rtc_service_name",
    "trusted_context",
]

#: What hypha-rpc's ``get_rtc_service`` uses when given no ICE servers (a public STUN server);
#: the proxy uses the same, so both ends of a default connection agree.
HYPHA_RPC_DEFAULT_ICE_SERVERS: list[dict[str, Any]] = [{"urls": ["stun:stun.l.google.com:19302"]}]
#: Open peer connections one proxy replica accepts; an offer beyond them is refused.
MAX_PEERS = 100
_LOOPBACK = {"localhost", "::1"}


def rtc_service_name(application_id: str) -> str:
    """The id the proxy registers the app's WebRTC service under."""
    return f"{application_id}-rtc"


def ice_servers_for(given: list[dict[str, Any]] | None, server_url: str) -> list[dict[str, Any]]:
    """The ICE servers of the proxy's side of a peer connection: those given to deploy_app, else
    none for a Hypha server on loopback, else hypha-rpc's default."""
    if given is not None:
        return [dict(server) for server in given]
    host = (urlparse(server_url).hostname or "").lower()
    if host in _LOOPBACK or host.startswith("127."):
        return []
    return [dict(server) for server in HYPHA_RPC_DEFAULT_ICE_SERVERS]


def trusted_context(context: dict[str, Any] | None) -> dict[str, Any]:
    """The context every call over a peer connection gets: who called ``offer``, as the Hypha
    server stamped it (never anything the peer sends later)."""
    context = context or {}
    return {
        "user": dict(context.get("user") or {}),
        "ws": context.get("ws"),
        "from": context.get("from"),
        "connection_type": "webrtc",
    }


def check_offer(params: Any) -> tuple[str, str]:
    """(sdp, type) of an offer; ValueError naming what is wrong."""
    if not isinstance(params, dict):
        raise ValueError("the offer must be a mapping {sdp, type}")
    sdp, kind = params.get("sdp"), params.get("type")
    if kind != "offer":
        raise ValueError(f"the offer's type must be 'offer', not {kind!r}")
    if not isinstance(sdp, str) or not sdp:
        raise ValueError("the offer's sdp must be a non-empty string")
    return sdp, kind


class PeerConnections:
    """The peer connections of one proxy replica, and the ``offer`` that opens them.

    ``make_api(context)`` gives the app's service with every call checked as ``context``;
    ``ice_servers()`` gives the ICE servers of the moment.
    """

    def __init__(
        self,
        workspace: str,
        make_api: Callable[[dict[str, Any]], dict[str, Any]],
        ice_servers: Callable[[], Awaitable[list[dict[str, Any]]]],
    ) -> None:
        self.workspace = workspace
        self._make_api = make_api
        self._ice_servers = ice_servers
        self._peers: dict[int, Any] = {}
        #: Per peer connection: an RPC per data channel, with the identity it checks calls as.
        self._rpcs: dict[int, list[tuple[Any, dict[str, Any]]]] = {}

    def count(self) -> int:
        return len(self._peers)

    async def offer(self, params: dict[str, Any], context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Answer a caller's WebRTC offer (hypha-rpc's ``get_rtc_service`` calls this)."""
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        sdp, kind = check_offer(params)
        if len(self._peers) >= MAX_PEERS:
            raise RuntimeError(f"this app replica already has {MAX_PEERS} WebRTC peers; try again later")
        trusted = trusted_context(context)
        servers = await self._ice_servers()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in servers]))
        key = id(pc)
        self._peers[key], self._rpcs[key] = pc, []

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self._rpcs[key].append((self._serve_channel(channel, trusted), trusted))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close(key)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self._close(key)
            raise
        who = trusted["user"].get("id") or "anonymous"
        logger.info("WebRTC peer of %s connecting (%d open)", who, len(self._peers))
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "workspace": self.workspace}

    def _serve_channel(self, channel: Any, trusted: dict[str, Any]) -> Any:
        """An RPC over one data channel offering only the app's service, checked as ``trusted``."""
        from hypha_rpc.rpc import RPC
        from hypha_rpc.webrtc_client import WebRTCConnection

        rpc = RPC(
            WebRTCConnection(channel),
            client_id=str(channel.label),
            default_context=trusted,
            workspace=self.workspace,
        )
        rpc.add_service(self._make_api(trusted), overwrite=True)
        return rpc

    async def _close(self, key: int) -> None:
        pc = self._peers.pop(key, None)
        for rpc, _ in self._rpcs.pop(key, []):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rpc.disconnect(), 5)
        if pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)

    def refresh(self) -> None:
        """Offer the open peers the app's service anew (its methods changed)."""
        for channels in self._rpcs.values():
            for rpc, trusted in channels:
                with contextlib.suppress(Exception):
                    rpc.add_service(self._make_api(trusted), overwrite=True)

    async def close_all(self) -> None:
        for key in list(self._peers):
            await self._close(key)
