"""A quick method sends its caller no heartbeat; a method longer than the caller's timeout is
kept alive by heartbeats all the same. On a real Hypha server, with the heartbeats counted as
the callee sends them."""

import asyncio
import io

import msgpack
import pytest

from bioengine_common import connect
from bioengine_common._heartbeat import beat_of

pytestmark = pytest.mark.integration


def _count_beats(rpc) -> list[float]:
    """The times of the heartbeat messages ``rpc`` sends from now on."""
    beats: list[float] = []
    send = rpc._emit_message

    async def counted(data):
        main = msgpack.Unpacker(io.BytesIO(data), max_buffer_size=len(data) + 1).unpack()
        if main.get("type") == "method" and str(main.get("method", "")).endswith(".heartbeat"):
            beats.append(asyncio.get_running_loop().time())
        return await send(data)

    rpc._emit_message = counted
    return beats


async def test_quick_calls_send_no_heartbeat_and_long_ones_outlive_the_timeout(hypha_server):
    token = hypha_server.mint("heartbeat-user", "read_write")
    host = await connect(hypha_server.url, workspace=hypha_server.workspace, token=token)
    # The caller's timeout: 2 s, so its heartbeat interval is 1 s.
    caller = await connect(
        hypha_server.url, workspace=hypha_server.workspace, token=token, method_timeout=2.0
    )
    try:

        async def wait(seconds: float = 0.0) -> float:
            await asyncio.sleep(seconds)
            return seconds

        info = await host.register_service({"id": "waiter", "config": {"visibility": "public"}, "wait": wait})
        service = await caller.get_service(info["id"])
        beats = _count_beats(host.rpc)

        for _ in range(20):
            assert await service.wait() == 0.0
        await asyncio.sleep(0.2)  # a beat sent at the end of a call would be counted by now
        assert beats == [], "a quick call sent a heartbeat"

        started = asyncio.get_running_loop().time()
        assert await service.wait(4.5) == 4.5  # twice the caller's timeout: heartbeats keep it
        offsets = [round(t - started, 1) for t in beats]
        assert len(beats) >= 3, offsets  # at about 1, 2, 3 and 4 s
        assert 0.8 <= beats[0] - started <= 1.6, offsets  # the first after one interval, not at once
    finally:
        await caller.disconnect()
        await host.disconnect()


@pytest.mark.parametrize(
    ("message", "beat"),
    [
        ({"type": "method", "session": "s1", "promise": "*", "t": 15}, ("s1.heartbeat", 15.0)),
        (
            {"type": "method", "session": "s2", "promise": {"heartbeat": {}, "interval": 2.5}},
            ("s2.heartbeat", 2.5),
        ),
        ({"type": "method", "session": "s3", "promise": {"resolve": {}, "reject": {}}}, None),
        ({"type": "method", "session": "s4"}, None),
        ({"type": "method", "session": "s5", "promise": "*", "t": 0}, None),
        ({"type": "method", "promise": "*", "t": 5}, None),
        ({"type": "method", "session": "s6", "promise": "*", "t": float("nan")}, None),
        ({"type": "method", "session": "s7", "promise": "*", "t": float("inf")}, None),
        ({"type": "method", "session": "s8", "promise": "*", "t": True}, None),
    ],
)
def test_the_heartbeat_a_call_asks_for(message, beat):
    assert beat_of(message) == beat
