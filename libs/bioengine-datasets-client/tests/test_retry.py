"""Retries of HttpZarrStore against real aiohttp servers on loopback: what is retried (refused,
dropped connections, 5xx), for how long, and what never is (4xx). The restart of a real
datasets-svc process is in services/datasets-svc/tests/test_restart.py."""

import asyncio
import json
import logging
import socket

import pytest
from aiohttp import web
from zarr.core.buffer import default_buffer_prototype

from bioengine_datasets_client import RETRY_FOR, DatasetAccessError, DatasetUnavailableError, HttpZarrStore
from bioengine_datasets_client.batch import data_entry, frame_head, parse_batch_request

PROTOTYPE = default_buffer_prototype()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _start(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _counting(status: int, body: bytes = b"", *, drop_first: int = 0) -> tuple[web.Application, list[str]]:
    """An app answering every request with ``status``; the first ``drop_first`` requests get
    their connection closed without an answer (a server that died mid-request)."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        if len(seen) <= drop_first:
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never arrives
        if request.method == "POST":  # a batch: every key answered with the same status
            keys = parse_batch_request(await request.json())
            if status == 200:
                head = frame_head([data_entry(200, len(body)) for _ in keys])
                return web.Response(body=head + body * len(keys))
        return web.Response(status=status, body=body)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app, seen


async def _closed(store: HttpZarrStore) -> None:
    async with store:
        pass


def test_the_default_retry_window_is_a_few_seconds():
    assert 5 <= RETRY_FOR <= 30 and HttpZarrStore("http://h/x").retry_for == RETRY_FOR
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="retry_for"):
            HttpZarrStore("http://h/x", retry_for=bad)


@pytest.mark.parametrize("batch", [False, True])
def test_a_refused_connection_fails_after_the_window_naming_the_url(batch):
    url = f"http://127.0.0.1:{_free_port()}/data/x/a.zarr"  # nothing listens there

    async def main():
        store = HttpZarrStore(url, retry_for=0.6, batch=batch)
        try:
            # Two keys at once: with batch=True they leave as one batch POST (raw connection).
            return await asyncio.gather(
                *(store.get(key, PROTOTYPE) for key in ("c/0", "c/1")), return_exceptions=True
            )
        finally:
            await _closed(store)

    for error in asyncio.run(main()):
        assert isinstance(error, DatasetUnavailableError) and isinstance(error, ConnectionError)
        assert url in str(error) and "tried" in str(error) and "retry_for=0.6 s" in str(error)
        assert error.attempts > 2 and error.seconds >= 0.6 and error.status is None
        assert isinstance(error.__cause__, OSError)  # the refusal itself


def test_retry_for_zero_fails_at_the_first_refusal():
    store = HttpZarrStore(f"http://127.0.0.1:{_free_port()}/s", retry_for=0)

    async def main():
        try:
            await store.exists("zarr.json")
        finally:
            await _closed(store)

    with pytest.raises(DatasetUnavailableError, match="tried 1 time over") as info:
        asyncio.run(main())
    assert info.value.attempts == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 416, 429])
@pytest.mark.parametrize("batch", [False, True])
def test_an_answer_4xx_is_never_retried(status, batch):
    app, seen = _counting(status, json.dumps({"error": f"refused with {status}"}).encode())

    async def main():
        runner, base = await _start(app)
        store = HttpZarrStore(f"{base}/data/x", retry_for=60, batch=batch)
        try:
            results = await asyncio.gather(
                store.get("c/0", PROTOTYPE), store.get("c/1", PROTOTYPE), return_exceptions=True
            )
            head = await asyncio.gather(store.exists("zarr.json"), return_exceptions=True)
            return results + head
        finally:
            await _closed(store)
            await runner.cleanup()

    results = asyncio.run(main())
    if status == 404:
        assert results == [None, None, False]  # missing keys: the fill value
    elif status == 416:
        assert [r.to_bytes() for r in results[:2]] == [b"", b""]  # a range past the end: empty
        assert isinstance(results[2], DatasetAccessError)
    elif status == 405 and batch:
        pass  # a server without batches: the store asks key by key (checked below)
    else:
        assert all(isinstance(r, DatasetAccessError) and r.status == status for r in results)
    # One request per key and one for exists(): nothing asked twice. (With batch=True the two
    # keys may leave as one POST; a 405 to that sends them again as GETs, by design.)
    gets = seen.count("GET") + seen.count("POST")
    assert seen.count("HEAD") == 1
    if status == 405 and batch:
        assert seen.count("POST") <= 1 and seen.count("GET") == 2
    else:
        assert 1 <= gets <= 2 and seen.count("POST") <= 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_an_answer_5xx_is_retried_for_the_window_then_named(status):
    app, seen = _counting(status, json.dumps({"error": "busy"}).encode())

    async def main():
        runner, base = await _start(app)
        store = HttpZarrStore(f"{base}/data/x", retry_for=0.5, batch=False)
        try:
            await store.get("c/0", PROTOTYPE)
        finally:
            await _closed(store)
            await runner.cleanup()
        return base

    with pytest.raises(DatasetUnavailableError) as info:
        asyncio.run(main())
    error = info.value
    assert error.status == status and f"HTTP {status}: busy" in str(error) and "/data/x/c/0" in str(error)
    assert error.attempts == len(seen) > 2


@pytest.mark.parametrize("batch", [False, True])
def test_a_connection_dropped_before_the_answer_is_tried_again(batch):
    app, seen = _counting(200, b"chunk", drop_first=2)

    async def main():
        runner, base = await _start(app)
        store = HttpZarrStore(f"{base}/data/x", retry_for=30, batch=batch)
        try:
            values = await asyncio.gather(store.get("c/0", PROTOTYPE), store.get("c/1", PROTOTYPE))
            return [v.to_bytes() for v in values]
        finally:
            await _closed(store)
            await runner.cleanup()

    assert asyncio.run(main()) == [b"chunk", b"chunk"]
    assert len(seen) >= 3  # two dropped, then answered


def test_a_server_that_comes_back_on_its_port_is_read_again(caplog):
    """The restart case in one process: the store's first requests are refused, the server
    comes up on the same port a moment later, the same read returns the bytes."""
    caplog.set_level(logging.INFO, logger="bioengine_datasets_client")
    port = _free_port()
    app, seen = _counting(200, b"chunk")

    async def main():
        store = HttpZarrStore(f"http://127.0.0.1:{port}/data/x", retry_for=60, batch=False)
        runner = None
        try:
            read = asyncio.ensure_future(store.get("c/0", PROTOTYPE))
            while not any("retrying for up to 60 s" in r.getMessage() for r in caplog.records):
                assert not read.done()
                await asyncio.sleep(0.05)
            runner, _ = await _start(app, port)
            return (await read).to_bytes()
        finally:
            await _closed(store)
            if runner is not None:
                await runner.cleanup()

    assert asyncio.run(main()) == b"chunk" and seen == ["GET"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"127.0.0.1:{port}/data/x/c/0" in m and "answered after" in m for m in messages)


def test_a_connection_closed_before_the_request_is_sent_is_a_retried_connection_error():
    # A restarting server can accept and close a connection before the request goes out.
    from bioengine_datasets_client._store import _transient
    from bioengine_datasets_client._wire import BufferPool, WireConnection

    connection = WireConnection(BufferPool())
    connection.connection_lost(None)

    async def send():
        await connection.post(b"POST / HTTP/1.1\r\n\r\n")

    with pytest.raises(ConnectionResetError) as raised:
        asyncio.run(send())
    assert _transient(raised.value)
