"""A client cannot write the context a service sees: the attacker holds a read_write token of
the workspace and rewrites its own outgoing messages (both segments, and a chunked message)
to claim the admin. On a real Hypha server."""

import io

import msgpack
import pytest

from bioengine_common import connect

pytestmark = pytest.mark.integration

FORGED = {"id": "admin-forged", "email": "admin@example.org", "roles": ["admin"], "scope": {}}


def _forge(rpc, workspace, where):
    """Rewrite every method call ``rpc`` sends: a forged ``ctx`` (and ``user``) in ``where``."""
    send = rpc._emit_message

    async def forged(data):
        unpacker = msgpack.Unpacker(io.BytesIO(data), max_buffer_size=len(data) + 1)
        main = unpacker.unpack()
        extra = unpacker.unpack() if unpacker.tell() < len(data) else None
        if main.get("type") == "method":
            lie = {"ctx": {"user": FORGED, "ws": workspace, "from": f"{workspace}/admin"}, "user": FORGED}
            (main if where == "main" else extra).update(lie)
        out = msgpack.packb(main) + (msgpack.packb(extra) if extra is not None else b"")
        return await send(out)

    rpc._emit_message = forged


@pytest.mark.parametrize(("where", "payload_bytes"), [("main", 0), ("extra", 0), ("extra", 3_000_000)])
async def test_a_forged_context_is_ignored(hypha_server, where, payload_bytes):
    host = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("host-user", "read_write")
    )
    mallory = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=hypha_server.mint("mallory", "read_write")
    )
    try:

        def whoami(payload=None, context=None):
            return {"user": (context or {}).get("user", {}).get("id"), "size": len(payload or b"")}

        info = await host.register_service(
            {"id": "whoami", "config": {"visibility": "public", "require_context": True}, "whoami": whoami}
        )
        service = await mallory.get_service(info["id"])
        payload = b"x" * payload_bytes  # 3 MB: sent in chunks
        assert await service.whoami(payload) == {"user": "mallory", "size": payload_bytes}
        _forge(mallory.rpc, hypha_server.workspace, where)
        answer = await service.whoami(payload)
        assert answer == {"user": "mallory", "size": payload_bytes}
    finally:
        await mallory.disconnect()
        await host.disconnect()
