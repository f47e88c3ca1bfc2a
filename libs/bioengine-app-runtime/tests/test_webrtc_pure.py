"""The proxy's WebRTC answerer over a real aiortc peer connection on loopback, without Hypha or
Ray: the offer is handed over directly, as the Hypha server would relay it, with the context
Hypha would stamp on it. Calls are checked as that identity, whatever the peer's messages say."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest
from hypha_rpc.webrtc_client import get_rtc_service

from bioengine_app_runtime import MethodSpec, ProxySpec
from bioengine_app_runtime import _proxy as _proxy_module
from bioengine_app_runtime._proxy import BioEngineProxy
from bioengine_app_runtime._rtc import (
    HYPHA_RPC_DEFAULT_ICE_SERVERS,
    PeerConnections,
    check_offer,
    ice_servers_for,
    rtc_service_name,
    trusted_context,
)

ALICE = {"id": "alice", "email": "alice@example.org"}


def test_ice_servers_given_default_and_loopback():
    given = [{"urls": "turn:turn.example.org", "username": "u", "credential": "c"}]
    assert ice_servers_for(given, "http://127.0.0.1:9527") == given
    assert ice_servers_for([], "https://hypha.example.org") == []  # explicitly none
    assert ice_servers_for(None, "https://hypha.example.org") == HYPHA_RPC_DEFAULT_ICE_SERVERS
    for loopback in ("http://127.0.0.1:9527", "ws://localhost:1/ws", "http://[::1]:80"):
        assert ice_servers_for(None, loopback) == []
    assert rtc_service_name("demo") == "demo-rtc"


def test_trusted_context_keeps_only_what_hypha_stamped():
    context = {"user": ALICE, "ws": "ws-1", "from": "ws-1/c", "to": "x", "extra": 1}
    assert trusted_context(context) == {
        "user": ALICE,
        "ws": "ws-1",
        "from": "ws-1/c",
        "connection_type": "webrtc",
    }
    assert trusted_context(None)["user"] == {}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("v=0", "must be a mapping"),
        ({"sdp": "v=0", "type": "answer"}, "type must be 'offer'"),
        ({"type": "offer"}, "sdp must be a non-empty string"),
    ],
)
def test_bad_offers_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        check_offer(params)


class _Method:
    """A DeploymentHandle method: ``.remote(...)`` gives an awaitable."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class _Entry:
    def __init__(self) -> None:
        self.release = asyncio.Event()

        async def ping() -> str:
            return "pong"

        async def secret() -> str:
            return "the secret"

        async def whoami(context: dict | None = None) -> str:
            return str(((context or {}).get("user") or {}).get("id"))

        async def slow() -> str:
            await self.release.wait()
            return "done"

        self.ping, self.secret, self.whoami, self.slow = map(_Method, (ping, secret, whoami, slow))


def _make_proxy(entry: _Entry) -> Any:
    proxy: Any = object.__new__(BioEngineProxy.func_or_class)
    proxy.entry = entry
    proxy.spec = ProxySpec(
        application_id="app-x",
        artifact_id="ws/app-x",
        server_url="http://127.0.0.1:1",
        workspace="ws",
        max_ongoing_requests=1,
        refuse_when_full=True,
        authorized_users={"*": ["*"], "secret": ["bob@example.org"]},
        methods=[
            MethodSpec(name="ping"),
            MethodSpec(name="secret"),
            MethodSpec(name="whoami", accepts_context=True),
            MethodSpec(name="slow"),
        ],
    )
    proxy.ongoing = 0
    proxy.semaphore = asyncio.Semaphore(1)
    proxy.rtc_service_id, proxy.rtc_error = "ws/app-x-r1:app-x-rtc", None

    async def no_ice_servers() -> list[dict[str, Any]]:
        return []

    proxy.peers = PeerConnections("ws", proxy.service_api, no_ice_servers)
    return proxy


@contextlib.asynccontextmanager
async def _peer(proxy: Any, user: dict[str, Any]) -> AsyncIterator[Any]:
    """A hypha-rpc WebRTC peer of the proxy; the offer reaches it with ``user`` as Hypha's context."""

    async def offer(params: dict[str, Any]) -> dict[str, Any]:
        return dict(await proxy.peers.offer(params, context={"user": user, "ws": "ws", "from": "ws/caller"}))

    async def get_service(service_id: str) -> Any:
        return SimpleNamespace(offer=offer)

    server = SimpleNamespace(config={"workspace": "ws"}, get_service=get_service)
    pc = await asyncio.wait_for(get_rtc_service(server, "ws/app-x-r1:app-x-rtc"), 30)
    try:
        yield pc
    finally:
        await pc.disconnect()


def _forge_context(pc: Any, user: dict[str, Any]) -> None:
    """Make the peer put its own ``ctx`` (claiming ``user``) into every call it sends."""
    rpc = pc.rpc
    send = rpc._emit_message

    async def forged(data: bytes) -> Any:
        unpacker = msgpack.Unpacker(io.BytesIO(data))
        main = unpacker.unpack()
        rest = data[unpacker.tell() :]
        if main.get("type") == "method":
            main["ctx"] = {"user": user, "ws": "ws", "from": main.get("from"), "to": main.get("to")}
        return await send(msgpack.packb(main) + rest)

    rpc._emit_message = forged


async def test_calls_over_a_peer_connection_are_checked_as_the_offers_caller():
    entry = _Entry()
    proxy = _make_proxy(entry)
    async with _peer(proxy, ALICE) as pc:
        app = await pc.get_service("app-x")
        assert await app.ping() == "pong"
        assert await app.whoami() == "alice"  # a context=True method gets the trusted context
        assert await app.get_num_pcs() == 1
        assert await app.get_rtc_service_id() == "ws/app-x-r1:app-x-rtc"
        with pytest.raises(Exception, match=r"User 'alice@example\.org' may not call 'secret'"):
            await app.secret()
        # The peer claims to be bob, who may call it: ignored, the call is still alice's.
        _forge_context(pc, {"id": "bob", "email": "bob@example.org"})
        assert await app.whoami() == "alice"
        with pytest.raises(Exception, match="may not call 'secret'"):
            await app.secret()
    for _ in range(100):
        if proxy.peers.count() == 0:
            break
        await asyncio.sleep(0.05)
    assert proxy.peers.count() == 0  # closed by the peer: forgotten


async def test_the_call_limit_is_shared_with_the_websocket():
    entry = _Entry()
    proxy = _make_proxy(entry)
    async with _peer(proxy, ALICE) as pc:
        app = await pc.get_service("app-x")
        # A websocket call holds the app's only slot.
        websocket_call = asyncio.create_task(proxy.service_api()["slow"](context={"user": ALICE}))
        while proxy.ongoing == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(Exception, match="running its maximum of 1 concurrent requests"):
            await app.ping()
        entry.release.set()
        assert await websocket_call == "done"
        assert await app.ping() == "pong"


async def test_an_offer_beyond_the_peer_limit_is_refused(monkeypatch):
    from bioengine_app_runtime import _rtc

    proxy = _make_proxy(_Entry())
    monkeypatch.setattr(_rtc, "MAX_PEERS", 0)
    with pytest.raises(RuntimeError, match="already has 0 WebRTC peers"):
        await proxy.peers.offer({"sdp": "v=0", "type": "offer"}, context={"user": ALICE})


async def test_a_webrtc_registration_failure_only_warns_and_is_reported(monkeypatch):
    from bioengine_app_runtime import _proxy

    class Server:
        async def register_service(self, api: dict, config: dict) -> dict:
            if api["id"].endswith("-rtc"):
                raise RuntimeError("no room for it")
            return {"id": f"ws/app-x-r1:{api['id']}"}

    async def fake_connect(server_url: str, **kwargs: object) -> Server:
        return Server()

    monkeypatch.setattr(_proxy, "connect", fake_connect)
    monkeypatch.setattr(_proxy.kv, "get_json", lambda key: {"proxy_token": "t"})
    proxy = _proxy_with_state(_Entry())
    await proxy._connect_and_register()
    info = await proxy.get_info()
    assert info["websocket_service_id"] == "ws/app-x-r1:app-x" and info["connected"]
    assert info["webrtc_service_id"] is None
    assert info["webrtc_error"] == "WebRTC service not registered: RuntimeError: no room for it"
    assert info["webrtc_peers"] == 0


async def test_the_webrtc_service_is_registered_next_to_the_websocket_one(monkeypatch):
    from bioengine_app_runtime import _proxy

    registered: list[dict] = []

    class Server:
        async def register_service(self, api: dict, config: dict) -> dict:
            registered.append(api)
            return {"id": f"ws/app-x-r1:{api['id']}"}

    async def fake_connect(server_url: str, **kwargs: object) -> Server:
        return Server()

    monkeypatch.setattr(_proxy, "connect", fake_connect)
    monkeypatch.setattr(_proxy.kv, "get_json", lambda key: {"proxy_token": "t"})
    proxy = _proxy_with_state(_Entry())
    await proxy._connect_and_register()
    rtc = registered[1]
    assert rtc["id"] == "app-x-rtc" and rtc["config"] == {"visibility": "public", "require_context": True}
    assert rtc["offer"] == proxy.peers.offer
    info = await proxy.get_info()
    assert info["webrtc_service_id"] == "ws/app-x-r1:app-x-rtc" and info["webrtc_error"] is None
    assert proxy.service_api()["get_rtc_service_id"]() == "ws/app-x-r1:app-x-rtc"


def _proxy_with_state(entry: _Entry) -> Any:
    """A proxy as __init__ leaves it, before it connects."""
    proxy = _make_proxy(entry)
    proxy.server, proxy.service_id, proxy.error, proxy.connected = None, None, None, False
    proxy.registrations, proxy.client_id, proxy.replica_id = 0, "app-x-r1", "r1"
    proxy.rtc_service_id = None
    proxy._aiortc = _proxy_module.import_in_thread("aiortc")
    return proxy


async def test_the_peer_connection_uses_deploy_apps_ice_servers(monkeypatch):
    import aiortc

    from bioengine_app_runtime import _proxy

    turn = [{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "c"}]
    secrets: dict[str, Any] = {"proxy_token": "t", "ice_servers": turn}
    monkeypatch.setattr(_proxy.kv, "get_json", lambda key: secrets)
    proxy = _make_proxy(_Entry())
    proxy.peers = PeerConnections("ws", proxy.service_api, proxy._ice_servers)
    assert await proxy._ice_servers() == turn
    secrets["ice_servers"] = None  # none given: the proxy's server is on loopback
    assert await proxy._ice_servers() == []

    secrets["ice_servers"] = turn
    configurations: list[Any] = []
    plain = aiortc.RTCPeerConnection

    class Recorded(plain):  # type: ignore[misc,valid-type]
        def __init__(self, configuration: Any = None) -> None:
            configurations.append(configuration)
            super().__init__(configuration)

    monkeypatch.setattr(aiortc, "RTCPeerConnection", Recorded)
    caller = plain()  # the peer making the offer
    caller.createDataChannel("x")
    await caller.setLocalDescription(await caller.createOffer())
    offer = {"sdp": caller.localDescription.sdp, "type": "offer"}
    try:
        answer = await proxy.peers.offer(offer, context={"user": ALICE})
        assert answer["type"] == "answer" and answer["workspace"] == "ws"
        [server] = configurations[0].iceServers
        assert (server.urls, server.username, server.credential) == (turn[0]["urls"], "u", "c")
    finally:
        await caller.close()
        await proxy.peers.close_all()
    assert proxy.peers.count() == 0
