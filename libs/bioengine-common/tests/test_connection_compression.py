"""Our connections to Hypha deflate nothing (small calls on a loopback or a LAN, where
compression costs more than it saves); large messages still go through. On a real server."""

import pytest

from bioengine_common import connect

pytestmark = pytest.mark.integration


async def test_our_connections_negotiate_no_compression_and_carry_large_messages(hypha_server):
    token = hypha_server.mint("compression-check", "read_write")
    server = await connect(hypha_server.url, workspace=hypha_server.workspace, token=token)
    try:
        websocket = server.rpc._connection._websocket
        assert websocket.protocol.extensions == []  # no permessage-deflate
        await server.register_service({"id": "echo", "echo": lambda value: value})
        echo = await server.get_service("echo")
        large = "0123456789" * 300_000  # 3 MB: sent in chunks
        assert await echo.echo(large) == large
    finally:
        await server.disconnect()
